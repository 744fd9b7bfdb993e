//! `ovseg engine build`: builds (or checks) the TensorRT engine of a model ahead of time, so a
//! robot does not spend its first minutes on the build, and says where it is cached.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use engine::tensorrt::cache::EngineCache;
use engine::tensorrt::{self, Precision, TensorRtOptions};
use serde_json::json;

use crate::{CommonArgs, model};

#[derive(Args, Debug)]
pub struct EngineBuildArgs {
    /// fp32, fp16, or int8 (with --int8-calibration-table).
    #[arg(long, default_value = "fp16")]
    pub precision: String,
    /// A TensorRT calibration cache for int8 (as trtexec or polygraphy write it).
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
