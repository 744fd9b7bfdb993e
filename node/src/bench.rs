//! `ovseg bench`: per-stage timings on real sample frames, printed as JSON.
//!
//! Everything compared is measured in the same run, interleaved, and reported as medians and
//! ratios, because shared machines are noisy.
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use engine::labels::LabelSpec;
use engine::{Frame, LabelSet, Pipeline, SegmentOptions, StageTimings};
use serde_json::{Value, json};

use crate::{CommonArgs, model, samples, segment};

pub const LABELS_21: &str = include_str!("../data/labels-21.txt");
pub const LABELS_150: &str = include_str!("../data/labels-150.txt");

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: Option<BenchTarget>,
    /// Timed frames per configuration (after 2 warm-up frames).
    #[arg(long, default_value_t = 15, value_parser = at_least_one())]
    pub frames: usize,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Replace --json FILE even if it is not an earlier report of this bench.
    #[arg(long)]
    pub force: bool,
}

/// Counts that must be at least 1 (frames, runs): 0 would time nothing and report NaN.
pub fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

#[derive(clap::Subcommand, Debug)]
pub enum BenchTarget {
    /// Publish -> receive latency of `ovseg node` over DDS on loopback vs an rclpy pass-through
    /// node, same peer, same run.
    Ros(crate::bench_ros::RosBenchArgs),
    /// Cost map + fusion + argmax at 160x120 cells on real-image embeddings: every label at
    /// every level against category early rejection, CPU and (where a device answers) CUDA.
    Costmap(crate::bench_costmap::CostmapBenchArgs),
    /// Depth registration, ground fit and conditioning at 640x480 against segmenting the frame.
    Depth(crate::bench_depth::DepthBenchArgs),
    /// The image encoder alone on several backends (cpu, tensorrt, burn, burn-cpu), interleaved:
    /// medians and ratios; needs only the image encoder file and the manifest.
    Encoder(crate::bench_encoder::EncoderBenchArgs),
}

pub fn label_list(text: &str) -> Vec<LabelSpec> {
    segment::content_lines(text).into_iter().map(LabelSpec::new).collect()
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn p90(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[((v.len() as f64 * 0.9) as usize).min(v.len() - 1)] }
}

pub(crate) fn resized_sample(width: u32, height: u32) -> Result<Frame> {
    let (_, bytes) = samples::SAMPLES.first().context("no sample frames built in")?;
    let frame = segment::decode(bytes)?;
    let img = image::RgbImage::from_raw(frame.width, frame.height, frame.to_rgb8()).context("sample buffer")?;
    let resized = image::imageops::resize(&img, width, height, image::imageops::FilterType::Triangle);
    Ok(Frame::from_rgb_image(&resized))
}

/// Runs `frames` timed frames with options `a` and `b` alternately; per-stage medians of each.
fn timed_pair(
    pipeline: &mut Pipeline,
    frame: &Frame,
    labels: &LabelSet,
    a: &SegmentOptions,
    b: &SegmentOptions,
    frames: usize,
) -> Result<(Value, Value, f64)> {
    let mut runs: [Vec<StageTimings>; 2] = [Vec::new(), Vec::new()];
    for i in 0..frames + 2 {
        for (j, opts) in [a, b].into_iter().enumerate() {
            pipeline.set_options(opts.clone())?;
            let seg = pipeline.process(frame, labels)?;
            if i >= 2 {
                runs[j].push(seg.timings);
            }
        }
    }
    let summary = |r: &[StageTimings]| {
        let col = |f: fn(&StageTimings) -> f64| r.iter().map(f).collect::<Vec<f64>>();
        let mut total = col(StageTimings::total_ms);
        let med_total = median(&mut total);
        json!({
            "preprocess_ms": median(&mut col(|t| t.preprocess_ms)),
            "image_encoder_ms": median(&mut col(|t| t.image_encoder_ms)),
            "cost_map_ms": median(&mut col(|t| t.cost_map_ms)),
            "post_ms": median(&mut col(|t| t.post_ms)),
            "total_ms_median": med_total,
            "total_ms_p90": p90(&mut total),
            "fps_median": 1000.0 / med_total,
        })
    };
    let cost = |r: &[StageTimings]| median(&mut r.iter().map(|t| t.cost_map_ms + t.post_ms).collect::<Vec<_>>());
    let ratio = cost(&runs[1]) / cost(&runs[0]);
    Ok((summary(&runs[0]), summary(&runs[1]), ratio))
}

pub fn run(common: &CommonArgs, threads: usize, args: BenchArgs) -> Result<()> {
    crate::render::check_json_out(&mut crate::render::Outputs::new(args.force), args.json.as_deref(), "bench")?;
    let (model, mut pipeline, mut bank) = model::load(common, threads)?;
    let sets = [("21", label_list(LABELS_21)), ("150", label_list(LABELS_150))];

    // Label encoding: cold (fresh memory, no disk cache) vs cached (memory hit), same run.
    let mut cold = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..3 {
        let mut fresh = model.label_bank(threads, None)?;
        let t = Instant::now();
        fresh.build(&sets[1].1)?;
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        fresh.build(&sets[1].1)?;
        cached.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (cold_ms, cached_ms) = (median(&mut cold), median(&mut cached));

    let defaults = pipeline.options().clone();
    let no_rejection = SegmentOptions { early_rejection_top_k: 0, ..defaults.clone() };
    let mut configs = Vec::new();
    for (w, h) in [(320u32, 240u32), (640, 480)] {
        let frame = resized_sample(w, h)?;
        for (name, specs) in &sets {
            let labels = bank.build(specs)?;
            let (with_rejection, without, ratio) = timed_pair(&mut pipeline, &frame, &labels, &defaults, &no_rejection, args.frames)?;
            configs.push(json!({
                "frame": format!("{w}x{h}"),
                "labels": name.parse::<usize>().unwrap_or(0),
                "early_rejection_top_k": defaults.early_rejection_top_k,
                "stages": with_rejection,
                "without_early_rejection": without,
                "cost_and_post_ratio_without_over_with_rejection": ratio,
            }));
            eprintln!("{w}x{h}, {name} labels: {:.1} ms median", configs.last().and_then(|c| c["stages"]["total_ms_median"].as_f64()).unwrap_or(f64::NAN));
        }
    }
    pipeline.set_options(defaults)?;
    let mut report = json!({
        "model": model.manifest.name,
        "backend": pipeline.backend_name(),
        "scorer": pipeline.scorer_name(),
        "frame_memory": pipeline.frame_memory(),
        "device_path_fallback": pipeline.device_path_fallback(),
        "threads": threads,
        "frames_per_config": args.frames,
        "label_encoding_150": {
            "cold_ms_median": cold_ms,
            "cached_ms_median": cached_ms,
            "cold_over_cached": cold_ms / cached_ms.max(1e-9),
        },
        "configs": configs,
    });
    crate::render::stamp(&mut report, "bench");
    crate::render::emit_json(&report, args.json.as_deref())
}
