//! The built-in synthetic data set: outdoor scenes composited from real CC0 textures
//! (scikit-image's grass, gravel and brick photos, tinted) under a procedural sky, with exact
//! masks. Every scene is a pure function of its seed, so splits are reproducible.
use std::sync::OnceLock;

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data::{DepthMap, Sample};

/// Class names (the labels the model is trained with) and the description added to each.
pub const CLASSES: [(&str, &str); 4] = [
    ("sky", "the open sky above the horizon"),
    ("grass", "a field of green grass"),
    ("gravel path", "a path covered with loose gravel"),
    ("brick wall", "a wall built of red bricks"),
];
const SKY: u8 = 0;
const GRASS: u8 = 1;
const GRAVEL: u8 = 2;
const BRICK: u8 = 3;

const TEXTURE_FILES: [&[u8]; 3] = [
    include_bytes!("../data/textures/grass.png"),
    include_bytes!("../data/textures/gravel.png"),
    include_bytes!("../data/textures/brick.png"),
];

/// Decoded once; the files are part of the binary, so failing to decode them is a build defect.
fn textures() -> &'static [image::GrayImage; 3] {
    static TEXTURES: OnceLock<[GrayImage; 3]> = OnceLock::new();
    TEXTURES.get_or_init(|| {
        TEXTURE_FILES.map(|bytes| {
            image::load_from_memory(bytes).map(|i| i.to_luma8()).unwrap_or_else(|e| panic!("built-in texture: {e}"))
        })
    })
}

/// A texture placed in the scene: scale (scene pixels per texture pixel), offset, colour.
struct Paint {
    texture: usize,
    scale: f32,
    offset: (f32, f32),
    tint: [f32; 3],
}

impl Paint {
    fn random(rng: &mut StdRng, texture: usize, tint: [f32; 3]) -> Self {
        let jitter = |rng: &mut StdRng, c: f32| (c * rng.random_range(0.85..1.15f32)).min(1.2);
        Paint {
            texture,
            scale: rng.random_range(0.6..1.6),
            offset: (rng.random_range(0.0..512.0), rng.random_range(0.0..512.0)),
            tint: [jitter(rng, tint[0]), jitter(rng, tint[1]), jitter(rng, tint[2])],
        }
    }

    /// Bilinear texture sample, wrapping around the tile.
    fn at(&self, x: f32, y: f32, zoom: f32) -> [u8; 3] {
        let t = &textures()[self.texture];
        let (w, h) = (t.width() as f32, t.height() as f32);
        let u = (x / (self.scale * zoom) + self.offset.0).rem_euclid(w);
        let v = (y / (self.scale * zoom) + self.offset.1).rem_euclid(h);
        let (x0, y0) = (u.floor() as u32, v.floor() as u32);
        let (x1, y1) = ((x0 + 1) % t.width(), (y0 + 1) % t.height());
        let (fx, fy) = (u - u.floor(), v - v.floor());
        let p = |x, y| t.get_pixel(x, y).0[0] as f32;
        let g = (p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx) * (1.0 - fy) + (p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx) * fy;
        self.tint.map(|c| (g * c).clamp(0.0, 255.0) as u8)
    }
}

/// The synthetic camera: its height over the ground (metres) and focal length (in image widths),
/// fixed like a robot's camera, and the farthest depth it reports (metres).
const CAMERA_HEIGHT: f32 = 1.5;
const FOCAL_WIDTHS: f32 = 0.9;
const MAX_RANGE: f32 = 80.0;

/// One scene `width x height`: sky above a wavy horizon, grass below it, a gravel path running
/// to the horizon and, in most scenes, a brick wall standing on the ground. Depth comes from a
/// level camera over flat ground whose horizon is the scene's: a ground pixel `r` rows under the
/// horizon is `f H / r` metres away, the wall stands at the depth of its foot, the sky and
/// anything beyond `MAX_RANGE` have none.
pub fn scene(seed: u64, width: u32, height: u32) -> Sample {
    let mut rng = StdRng::seed_from_u64(seed);
    let (w, h) = (width as f32, height as f32);
    let horizon = rng.random_range(0.25..0.5) * h;
    let (wave_amp, wave_freq, wave_phase) =
        (rng.random_range(0.0..0.04) * h, rng.random_range(1.0..4.0) * std::f32::consts::TAU / w, rng.random_range(0.0..6.3f32));
    let horizon_at = |x: f32| horizon + wave_amp * (x * wave_freq + wave_phase).sin();
    let (path_bottom, path_half_bottom) = (rng.random_range(0.2..0.8) * w, rng.random_range(0.12..0.3) * w);
    let (path_top, path_half_top) = (rng.random_range(0.35..0.65) * w, rng.random_range(0.01..0.05) * w);
    let wall = rng.random_bool(0.7).then(|| {
        let x0 = rng.random_range(-0.1..0.7) * w;
        let x1 = x0 + rng.random_range(0.2..0.5) * w;
        let bottom = horizon + rng.random_range(0.02..0.2) * h;
        let top = horizon - rng.random_range(0.08..0.3) * h;
        (x0, x1, top, bottom)
    });
    let grass = Paint::random(&mut rng, 0, [0.55, 0.85, 0.35]);
    let gravel = Paint::random(&mut rng, 1, [0.95, 0.9, 0.8]);
    let brick = Paint::random(&mut rng, 2, [0.95, 0.55, 0.42]);
    let sky_top = [rng.random_range(60.0..110.0f32), rng.random_range(110.0..160.0), rng.random_range(200.0..250.0)];
    let sky_low = [rng.random_range(170.0..215.0f32), rng.random_range(195.0..225.0), rng.random_range(225.0..250.0)];
    let (cloud_fx, cloud_fy, cloud_amount) = (rng.random_range(0.01..0.04f32), rng.random_range(0.02..0.08f32), rng.random_range(0.0..0.6f32));

    let mut image = RgbImage::new(width, height);
    let mut mask = GrayImage::new(width, height);
    let focal_height = FOCAL_WIDTHS * w * CAMERA_HEIGHT;
    let range = |rows_below_horizon: f32| Some(focal_height / rows_below_horizon).filter(|&z| rows_below_horizon > 0.0 && z <= MAX_RANGE);
    let mut depth = DepthMap::from_pixel(width, height, Luma([f32::NAN]));
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let ground_y = horizon_at(fx);
            let in_wall = wall.is_some_and(|(x0, x1, top, bottom)| fx >= x0 && fx < x1 && fy >= top && fy < bottom);
            let (class, rgb) = if in_wall {
                (BRICK, brick.at(fx, fy, 1.0))
            } else if fy < ground_y {
                let t = (fy / ground_y.max(1.0)).clamp(0.0, 1.0);
                let cloud = ((fx * cloud_fx).sin() * (fy * cloud_fy + fx * 0.01).cos()).max(0.0) * cloud_amount;
                let rgb: [f32; 3] = std::array::from_fn(|c| sky_top[c] * (1.0 - t) + sky_low[c] * t);
                (SKY, rgb.map(|v| (v * (1.0 - cloud) + 245.0 * cloud).clamp(0.0, 255.0) as u8))
            } else {
                // Depth cue: texture features shrink towards the horizon.
                let t = ((fy - ground_y) / (h - ground_y).max(1.0)).clamp(0.0, 1.0);
                let zoom = 0.35 + 0.65 * t;
                let centre = path_top + (path_bottom - path_top) * t;
                let half = path_half_top + (path_half_bottom - path_half_top) * t;
                if (fx - centre).abs() < half { (GRAVEL, gravel.at(fx, fy, zoom)) } else { (GRASS, grass.at(fx, fy, zoom)) }
            };
            image.put_pixel(x, y, Rgb(rgb));
            mask.put_pixel(x, y, Luma([class]));
            let metres = match class {
                SKY => None,
                BRICK => wall.and_then(|(_, _, _, bottom)| range(bottom - horizon)),
                _ => range(fy - ground_y),
            };
            depth.put_pixel(x, y, Luma([metres.unwrap_or(f32::NAN)]));
        }
    }
    Sample { image, mask, depth: Some(depth), annotation: crate::data::Annotation::Fine }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_reproducible_and_differ_by_seed() {
        let a = scene(7, 128, 96);
        assert_eq!(a.image, scene(7, 128, 96).image);
        assert_eq!(a.mask, scene(7, 128, 96).mask);
        assert_ne!(a.image, scene(8, 128, 96).image);
    }

    #[test]
    fn masks_hold_only_known_classes_and_sky_is_on_top() {
        let mut seen = [0usize; 4];
        for seed in 0..20 {
            let s = scene(seed, 128, 96);
            for p in s.mask.pixels() {
                seen[p.0[0] as usize] += 1;
            }
            // Top row: sky or wall; bottom row: ground.
            assert!(s.mask.get_pixel(64, 0).0[0] == SKY || s.mask.get_pixel(64, 0).0[0] == BRICK);
            assert!([GRASS, GRAVEL, BRICK].contains(&s.mask.get_pixel(64, 95).0[0]));
        }
        assert!(seen.iter().all(|&n| n > 1000), "every class appears: {seen:?}");
    }

    #[test]
    fn depth_follows_the_ground_plane_and_sky_has_none() {
        let s = scene(5, 128, 96);
        let depth = s.depth.unwrap();
        let focal_height = FOCAL_WIDTHS * 128.0 * CAMERA_HEIGHT;
        for x in [10u32, 64, 120] {
            let column: Vec<(u8, f32)> = (0..96).map(|y| (s.mask.get_pixel(x, y).0[0], depth.get_pixel(x, y).0[0])).collect();
            for (class, d) in &column {
                match *class {
                    SKY => assert!(d.is_nan()),
                    _ => assert!(d.is_nan() || (*d > 0.0 && *d <= MAX_RANGE), "{d}"),
                }
            }
            // Ground pixels get nearer towards the bottom, and the bottom row is f H / rows.
            let ground: Vec<f32> = column.iter().filter(|(c, d)| [GRASS, GRAVEL].contains(c) && d.is_finite()).map(|(_, d)| *d).collect();
            assert!(ground.windows(2).all(|p| p[1] < p[0]), "column {x}: {ground:?}");
            assert!(*ground.last().unwrap() < focal_height / 20.0, "the nearest ground is close: {ground:?}");
        }
    }
}
