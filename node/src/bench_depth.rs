//! `ovseg bench depth`: what the node's depth steps cost per 640x480 frame (registration of a
//! depth camera to the colour camera, ground fit + hole filling, label-aware conditioning)
//! against segmenting the same frame, interleaved in one run, medians and ratios as JSON.
use std::time::Instant;

use anyhow::{Context, Result};
use calibration::{Camera, DepthRegistration, Extrinsics, GroundPlane, PixelRays};
use clap::Args;
use serde_json::json;

use crate::bench::{LABELS_21, label_list, median, resized_sample};
use crate::{CommonArgs, model};

#[derive(Args, Debug)]
pub struct DepthBenchArgs {
    /// Timed frames (after 2 warm-up frames).
    #[arg(long, default_value_t = 15, value_parser = crate::bench::at_least_one())]
    pub frames: usize,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Replace --json FILE even if it is not an earlier report of this bench.
    #[arg(long)]
    pub force: bool,
}

const SIZE: (u32, u32) = (640, 480);

fn camera(d: &[f64]) -> Result<Camera> {
    let k = [525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0];
    Camera::from_camera_info("plumb_bob", d, &k, SIZE.0, SIZE.1).context("bench camera")
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub fn run(common: &CommonArgs, threads: usize, args: DepthBenchArgs) -> Result<()> {
    crate::render::check_json_out(&mut crate::render::Outputs::new(args.force), args.json.as_deref(), "bench depth")?;
    let (_, mut pipeline, mut bank) = model::load(common, threads)?;
    let labels = bank.build(&label_list(LABELS_21))?;
    let frame = resized_sample(SIZE.0, SIZE.1)?;
    let (w, h) = (SIZE.0 as usize, SIZE.1 as usize);

    // A depth camera 5 cm beside the colour camera, both with lens distortion, looking at flat
    // ground from 1.1 m; every 11th depth pixel is missing.
    let (depth_camera, color_camera) = (camera(&[-0.1, 0.02, 0.0, 0.0, 0.0])?, camera(&[0.05, -0.1, 1e-3, 0.0, 0.0])?);
    let extrinsics = Extrinsics::from_xyz_rpy([0.05, 0.0, 0.0], [0.0, 0.0, 0.01])?;
    let ground = GroundPlane::from_extrinsics(1.1, 0.45, 0.0)?;
    let depth_rays = PixelRays::centres(&depth_camera);
    let raw: Vec<f32> = (0..w * h)
        .map(|i| match depth_rays.at(i % w, i / w).and_then(|r| ground.ray_intersection(&r)) {
            Some(z) if i % 11 != 0 => z as f32,
            _ => f32::NAN,
        })
        .collect();

    let mut calibration_ms = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let _ = PixelRays::centres(&color_camera);
        let _ = DepthRegistration::new(&depth_camera, &color_camera, extrinsics);
        calibration_ms.push(ms_since(t));
    }
    let rays = PixelRays::centres(&color_camera);
    let registration = DepthRegistration::new(&depth_camera, &color_camera, extrinsics);
    let on_ground = vec![true; w * h];
    let no_depth = vec![false; labels.len()];
    let conditioning = engine::depth::DepthConditioning::default();

    let (mut segment, mut register, mut fit, mut condition) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut filled = 0;
    for i in 0..args.frames + 2 {
        let t = Instant::now();
        let seg = pipeline.process(&frame, &labels)?;
        let segment_ms = ms_since(t);
        let t = Instant::now();
        let mut metres = registration.register(&raw)?;
        let register_ms = ms_since(t);
        let t = Instant::now();
        let conditioned = engine::depth::condition(&metres, &seg.map.labels, w, &no_depth, &conditioning);
        let condition_ms = ms_since(t);
        let t = Instant::now();
        let plane = calibration::fit_ground_to_depth(&rays, &metres, &on_ground, 0.05)?;
        filled = calibration::fill_from_plane(&rays, &mut metres, &on_ground, &plane.plane);
        let fit_ms = ms_since(t);
        std::hint::black_box(conditioned);
        if i >= 2 {
            segment.push(segment_ms);
            register.push(register_ms);
            condition.push(condition_ms);
            fit.push(fit_ms);
        }
    }
    let (segment, register, fit, condition) = (median(&mut segment), median(&mut register), median(&mut fit), median(&mut condition));
    let mut report = json!({
        "frame": format!("{}x{}", SIZE.0, SIZE.1),
        "threads": threads,
        "frames": args.frames,
        "segment_ms_median": segment,
        "register_ms_median": register,
        "ground_fit_and_fill_ms_median": fit,
        "condition_ms_median": condition,
        "calibration_change_ms_median": median(&mut calibration_ms),
        "ground_pixels_filled": filled,
        "register_over_segment": register / segment,
        "ground_fit_over_segment": fit / segment,
        "condition_over_segment": condition / segment,
    });
    crate::render::stamp(&mut report, "bench depth");
    crate::render::emit_json(&report, args.json.as_deref())
}
