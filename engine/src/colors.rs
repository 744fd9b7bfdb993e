//! Stable colours: a label's colour depends on its text only, so "weed" looks the same in every
//! run, image and label set.
use sha2::{Digest, Sha256};

/// Colour for pixels no label claims.
pub const UNKNOWN_COLOR: [u8; 3] = [0, 0, 0];

pub fn label_color(label: &str) -> [u8; 3] {
    let digest = Sha256::digest(label.trim().to_lowercase().as_bytes());
    let hue = u16::from_le_bytes([digest[0], digest[1]]) as f32 / 65536.0 * 360.0;
    // Saturation and value stay high so colours read well over photos and apart from black.
    let saturation = 0.55 + digest[2] as f32 / 255.0 * 0.45;
    let value = 0.70 + digest[3] as f32 / 255.0 * 0.30;
    hsv_to_rgb(hue, saturation, value)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [u8; 3] {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let to_u8 = |f: f32| ((f + m) * 255.0).round().clamp(0.0, 255.0) as u8;
    [to_u8(r), to_u8(g), to_u8(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_stable_and_distinct() {
        assert_eq!(label_color("weed"), label_color(" Weed"));
        assert_ne!(label_color("weed"), label_color("crop row"));
        // Pinned: a change here recolours every user's overlays.
        assert_eq!(label_color("person"), [87, 95, 219]);
        let c = label_color("gravel path");
        assert!(c.iter().any(|&x| x > 150), "{c:?} too dark");
    }

    #[test]
    fn hsv_primaries() {
        assert_eq!(hsv_to_rgb(0.0, 1.0, 1.0), [255, 0, 0]);
        assert_eq!(hsv_to_rgb(120.0, 1.0, 1.0), [0, 255, 0]);
        assert_eq!(hsv_to_rgb(240.0, 1.0, 1.0), [0, 0, 255]);
    }
}
