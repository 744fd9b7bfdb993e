//! Writing masks and overlays: PNG encoding, legend drawing, atomic file writes.
use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result};
use engine::{Frame, LabelMap, LabelSet, MaskPixels};
use font8x8::UnicodeFonts;
use image::{ImageBuffer, ImageFormat, Luma, Rgb, RgbImage};

/// Writes the label-id mask: 8-bit with up to 255 labels, else 16-bit. Returns the bit depth.
pub fn write_mask(map: &LabelMap, num_labels: usize, path: &Path) -> Result<u8> {
    let (w, h) = (map.width, map.height);
    let mut png = Cursor::new(Vec::new());
    let bits = match map.mask_pixels(num_labels) {
        MaskPixels::Mono8(data) => {
            let img: ImageBuffer<Luma<u8>, _> = ImageBuffer::from_raw(w, h, data).context("mask buffer size")?;
            img.write_to(&mut png, ImageFormat::Png)?;
            8
        }
        MaskPixels::Mono16(data) => {
            let img: ImageBuffer<Luma<u16>, _> = ImageBuffer::from_raw(w, h, data).context("mask buffer size")?;
            img.write_to(&mut png, ImageFormat::Png)?;
            16
        }
    };
    write_file(path, png.get_ref())?;
    Ok(bits)
}

pub fn save_rgb(img: &RgbImage, path: &Path) -> Result<()> {
    let mut png = Cursor::new(Vec::new());
    img.write_to(&mut png, ImageFormat::Png)?;
    write_file(path, png.get_ref())
}

/// Prints a JSON report to stdout and, if asked, writes it to a file too.
pub fn emit_json(report: &serde_json::Value, also_to: Option<&Path>) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    println!("{text}");
    match also_to {
        Some(path) => write_file(path, text.as_bytes()),
        None => Ok(()),
    }
}

/// Temp file + rename: an interrupted run never leaves a half-written output behind.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    engine::labels::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

const GLYPH: u32 = 8;
const TEXT_SCALE: u32 = 2;
const ROW: u32 = GLYPH * TEXT_SCALE + 6;
const LEGEND_ROWS: usize = 12;
const MIN_LEGEND_WIDTH: u32 = 360;

/// The frame with label colours blended in, and a legend of the labels present (largest first)
/// below it.
pub fn overlay_with_legend(frame: &Frame, map: &LabelMap, labels: &LabelSet) -> RgbImage {
    let (w, h) = (frame.width, frame.height);
    let blended = map.overlay(&frame.to_rgb8(), &labels.colors, 0.5);
    let (shares, unknown) = map.shares(labels.len());
    let mut present: Vec<(Option<usize>, f64)> =
        shares.iter().copied().enumerate().filter(|(_, s)| *s > 0.0).map(|(k, s)| (Some(k), s)).collect();
    if unknown > 0.0 {
        present.push((None, unknown));
    }
    present.sort_by(|a, b| b.1.total_cmp(&a.1));
    let hidden = present.len().saturating_sub(LEGEND_ROWS);
    present.truncate(LEGEND_ROWS);

    let rows = present.len() as u32 + u32::from(hidden > 0);
    let legend_h = rows * ROW + 6;
    // Narrow frames get a wider canvas so legend text is not cut off.
    let mut img = RgbImage::from_pixel(w.max(MIN_LEGEND_WIDTH), h + legend_h, Rgb([24, 24, 24]));
    for (i, px) in blended.chunks_exact(3).enumerate() {
        img.put_pixel(i as u32 % w, i as u32 / w, Rgb([px[0], px[1], px[2]]));
    }
    for (row, (label, share)) in present.iter().enumerate() {
        let y = h + 4 + row as u32 * ROW;
        let (color, name) = match label {
            Some(k) => (labels.colors[*k], labels.names[*k].as_str()),
            None => (engine::colors::UNKNOWN_COLOR, "unknown"),
        };
        fill_rect(&mut img, 4, y, GLYPH * TEXT_SCALE, GLYPH * TEXT_SCALE, Rgb(color), Rgb([200, 200, 200]));
        draw_text(&mut img, 4 + GLYPH * TEXT_SCALE + 8, y, &format!("{name} {:.1}%", share * 100.0));
    }
    if hidden > 0 {
        draw_text(&mut img, 4, h + 4 + present.len() as u32 * ROW, &format!("+{hidden} more"));
    }
    img
}

fn fill_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, fill: Rgb<u8>, border: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            let edge = yy == y || xx == x || yy + 1 == y + h || xx + 1 == x + w;
            img.put_pixel(xx, yy, if edge { border } else { fill });
        }
    }
}

/// 8x8 bitmap glyphs scaled up; characters the font lacks are drawn as '?'.
fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str) {
    let fonts = [font8x8::BASIC_FONTS.iter().collect::<Vec<_>>(), font8x8::LATIN_FONTS.iter().collect::<Vec<_>>()];
    let mut cx = x;
    for ch in text.chars() {
        let glyph = fonts
            .iter()
            .find_map(|f| f.iter().find(|g| g.char() == ch).map(|g| g.byte_array()))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (gy, bits) in glyph.iter().enumerate() {
            for gx in 0..GLYPH {
                if bits & (1 << gx) == 0 {
                    continue;
                }
                for sy in 0..TEXT_SCALE {
                    for sx in 0..TEXT_SCALE {
                        let (px, py) = (cx + gx * TEXT_SCALE + sx, y + gy as u32 * TEXT_SCALE + sy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb([240, 240, 240]));
                        }
                    }
                }
            }
        }
        cx += GLYPH * TEXT_SCALE;
        if cx >= img.width() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::UNKNOWN;

    fn map(labels: Vec<u16>) -> LabelMap {
        let n = labels.len();
        LabelMap { width: n as u32, height: 1, labels, confidence: vec![1.0; n] }
    }

    #[test]
    fn mask_depth_switches_at_256_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        assert_eq!(write_mask(&map(vec![0, 254, UNKNOWN]), 255, &p).unwrap(), 8);
        let img = image::open(&p).unwrap().to_luma8();
        assert_eq!(img.as_raw(), &vec![0, 254, 255]);
        assert_eq!(write_mask(&map(vec![0, 255, UNKNOWN]), 256, &p).unwrap(), 16);
        let img = image::open(&p).unwrap().to_luma16();
        assert_eq!(img.as_raw(), &vec![0, 255, 65535]);
    }

    #[test]
    fn legend_lists_present_labels_under_the_image() {
        let frame = Frame::packed(64, 2, engine::PixelFormat::Mono8, vec![100; 128]).unwrap();
        let labels = LabelSet {
            names: vec!["weed".into(), "soil".into(), "sky".into()],
            embeddings: vec![0.0; 3],
            dim: 1,
            colors: vec![[255, 0, 0], [0, 255, 0], [0, 0, 255]],
            gain: vec![1.0; 3],
            bias: vec![0.0; 3],
        };
        let mut ids = vec![0u16; 128];
        ids[..10].iter_mut().for_each(|l| *l = 1);
        let m = LabelMap { width: 64, height: 2, labels: ids, confidence: vec![1.0; 128] };
        let img = overlay_with_legend(&frame, &m, &labels);
        assert_eq!(img.width(), MIN_LEGEND_WIDTH);
        assert_eq!(img.height(), 2 + 2 * ROW + 6); // two labels present, "sky" absent
        // blended weed pixel: (100 + 255) / 2
        assert_eq!(img.get_pixel(63, 0), &Rgb([178, 50, 50]));
        // first legend swatch is the larger label (weed)
        assert_eq!(img.get_pixel(8, 2 + 4 + 8), &Rgb([255, 0, 0]));
    }
}
