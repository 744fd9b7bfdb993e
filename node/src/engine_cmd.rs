//! `ovseg engine build`: builds (or checks) the TensorRT engine of a model ahead of time, so a
//! robot does not spend its first minutes on the build, and says where it is cached.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use engine::tensorrt::cache::EngineCache;
use engine::tensorrt::calibrate::CalibrationTable;
use engine::tensorrt::{self, Precision, TensorRtOptions};
use serde_json::json;

use crate::{CommonArgs, model};

#[derive(Args, Debug)]
pub struct EngineBuildArgs {
    /// fp32, fp16, or int8 (with --int8-calibration-table).
    #[arg(long, default_value = "fp16")]
    pub precision: String,
    /// A calibration cache for int8 (from `ovseg engine calibrate`, trtexec or polygraphy).
    #[arg(long)]
    pub int8_calibration_table: Option<PathBuf>,
    /// Builder workspace limit in MiB.
    #[arg(long, default_value_t = 1024)]
    pub workspace_mb: u64,
    /// Jetson DLA core (default: the GPU).
    #[arg(long)]
    pub dla_core: Option<u32>,
    /// Rebuild even when an intact engine for this key is cached.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct EngineCalibrateArgs {
    /// Folder of real frames (PNG/JPEG) from the camera the robot uses.
    pub frames: PathBuf,
    /// The calibration cache to write (an existing file is replaced only if it is one).
    #[arg(long)]
    pub out: PathBuf,
    /// Use at most this many frames (sorted by name).
    #[arg(long, default_value_t = 200)]
    pub max_frames: usize,
}

/// Measures every tensor's range over the frames on the CPU and writes the INT8 calibration
/// cache that `engine build --precision int8 --int8-calibration-table` and the node's
/// `tensorrt_int8_calibration_table` take. Needs no GPU.
pub fn calibrate(common: &CommonArgs, threads: usize, args: EngineCalibrateArgs) -> Result<()> {
    let model = model::open(common)?;
    let frames = tensorrt::calibrate::frames_from_dir(&args.frames, args.max_frames)?;
    let bar = indicatif::ProgressBar::new(frames.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} frames {per_sec} ETA {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let table = CalibrationTable::measure(&model, &frames, threads, &mut |done| bar.set_position(done as u64)).context("measuring ranges")?;
    bar.finish_and_clear();
    let version = tensorrt::library::version(&tensorrt::library::candidates()).ok().map(|v| v.encoded());
    table.save(&args.out, version).context("writing the calibration cache")?;
    let report = json!({
        "model": model.manifest.name,
        "frames": frames.len(),
        "tensors": table.ranges.len(),
        "out": args.out,
        "seconds": started.elapsed().as_secs_f64(),
    });
    crate::render::emit_json(&report, None)
}

pub fn build(common: &CommonArgs, threads: usize, args: EngineBuildArgs) -> Result<()> {
    let model = model::open(common)?;
    let precision: Precision = args.precision.parse().context("--precision")?;
    let options = TensorRtOptions {
        precision,
        workspace_mb: args.workspace_mb,
        dla_core: args.dla_core,
        int8_calibration_table: args.int8_calibration_table,
        force_rebuild: args.force,
        ..TensorRtOptions::default()
    };
    let key = tensorrt::engine_key(&model, &options).context("TensorRT is needed to build an engine")?;
    let was_cached = !args.force && EngineCache::new(&options.cache_dir).is_cached(&key);
    let started = Instant::now();
    tensorrt::load(&model, &options, threads).context("building the engine")?;
    let report = json!({
        "model": model.manifest.name,
        "key": key,
        "cache_dir": options.cache_dir.join(key.id()),
        "reused": was_cached,
        "seconds": started.elapsed().as_secs_f64(),
    });
    crate::render::emit_json(&report, None)
}
