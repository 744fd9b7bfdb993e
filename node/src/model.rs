//! Finding, fetching and opening the model for a command.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use engine::{BackendKind, LabelBank, Model, Pipeline};
use indicatif::{ProgressBar, ProgressStyle};

use crate::CommonArgs;

/// Builds the default model with a progress bar (steps of the build, spinner while pip runs).
pub fn fetch(force: bool) -> Result<PathBuf> {
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let progress = |step: usize, total: usize, message: &str| {
        bar.set_length(total as u64);
        bar.set_position(step as u64);
        bar.set_message(message.to_string());
    };
    let result = engine::zoo::build::ensure_default_model(force, &progress);
    bar.finish_and_clear();
    let dir = result.context("building the default model")?;
    eprintln!("model ready: {}", dir.display());
    Ok(dir)
}

/// The model directory for this run: `--model-dir` as given, else the default (fetched if missing).
pub fn resolve(model_dir: Option<&Path>) -> Result<PathBuf> {
    match model_dir {
        Some(dir) => Ok(dir.to_path_buf()),
        None if engine::zoo::build::default_model_ready() => Ok(engine::paths::default_model_dir()),
        None => {
            eprintln!("no model found; building the default model (one time, a few minutes)");
            fetch(false)
        }
    }
}

/// Opens the model, making sure ONNX Runtime is there (it is fetched with the default model).
pub fn open(common: &CommonArgs) -> Result<Model> {
    open_dir(common.model_dir.as_deref())
}

/// Opens the model in `model_dir` (None: the default model, built on first use).
pub fn open_dir(model_dir: Option<&Path>) -> Result<Model> {
    let dir = resolve(model_dir)?;
    let uses_our_copy = engine::runtime::resolve_dylib_path(None) == engine::runtime::default_dylib_path();
    if engine::runtime::init(None).is_err() && uses_our_copy {
        eprintln!("ONNX Runtime library not found; fetching it");
        engine::zoo::build::ensure_runtime().context("fetching ONNX Runtime")?;
    }
    engine::runtime::init(None).context("loading ONNX Runtime")?;
    Model::open(&dir).with_context(|| format!("opening model {}", dir.display()))
}

pub fn backend_kind(common: &CommonArgs) -> Result<BackendKind> {
    // The engine files a bad name under its ONNX Runtime errors; here it is a flag's value.
    common.backend.parse::<BackendKind>().map_err(|e| match e {
        engine::EngineError::Runtime(message) => anyhow::anyhow!("--backend {}: {message}", common.backend),
        other => anyhow::Error::new(other).context("--backend"),
    })
}

/// Pipeline and label bank for a command.
pub fn load(common: &CommonArgs, threads: usize) -> Result<(Model, Pipeline, LabelBank)> {
    // A misspelt backend is refused before the model is opened (or fetched).
    let kind = backend_kind(common)?;
    let model = open(common)?;
    let pipeline = model.pipeline(kind, threads)?;
    let bank = model.label_bank(threads, Some(engine::paths::label_cache_dir()))?;
    Ok((model, pipeline, bank))
}

pub fn print_path(common: &CommonArgs, threads: usize) -> Result<()> {
    let (model, pipeline, _) = load(common, threads)?;
    println!("{}", model.dir.display());
    eprintln!("model {:?} loads; image encoder {}, scoring {}", model.manifest.name, pipeline.backend_name(), pipeline.scorer_name());
    Ok(())
}
