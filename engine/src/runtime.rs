//! ONNX Runtime, loaded at run time from a shared library (so the build needs none).
//!
//! Where the library comes from, first match wins: the path given by the caller,
//! `ORT_DYLIB_PATH`, the copy `ovseg models fetch` unpacks into the cache.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::ValueType;

use crate::error::{EngineError, Result};
use crate::paths;

static ENVIRONMENT: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The library file used when nothing else is configured.
pub fn default_dylib_path() -> PathBuf {
    paths::runtime_dir().join(crate::zoo::ORT_LIBRARY_FILE)
}

/// Where the library will be loaded from.
pub fn resolve_dylib_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_dylib_path(),
    }
}

/// Loads ONNX Runtime once per process; later calls return the path loaded first.
pub fn init(explicit: Option<&Path>) -> Result<PathBuf> {
    environment(explicit).map(|(path, _)| path.clone())
}

fn environment(explicit: Option<&Path>) -> Result<&'static (PathBuf, ort::environment::Environment)> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    // Only success is remembered, so a library fetched after a failed attempt still loads.
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = resolve_dylib_path(explicit);
    if !path.is_file() {
        return Err(EngineError::Runtime(format!(
            "library {} not found (run `ovseg models fetch`, or set ORT_DYLIB_PATH)",
            path.display()
        )));
    }
    let env = ort::init_from(&path)
        .map_err(|e| EngineError::Runtime(format!("loading {}: {e}", path.display())))?
        .with_name("ovseg")
        .build()
        .map_err(|e| EngineError::Runtime(format!("creating environment from {}: {e}", path.display())))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| (path, env)))
}

/// Logical cores this process may use (cgroup quotas included), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The most threads a `threads` setting may ask for (the node's parameter range too).
pub const MAX_THREADS: usize = 256;

/// A command line's thread count: 0 (every core) to [`MAX_THREADS`].
pub fn parse_threads(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n <= MAX_THREADS => Ok(n),
        _ => Err(format!("{text:?} is not a thread count: 0 (every core) to {MAX_THREADS}")),
    }
}

/// The thread count to use for `requested`: 0 means every core. More threads than cores only
/// contend (measured 20-1000x slower), so that is warned about, once per process.
pub fn resolve_threads(requested: usize) -> usize {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let cores = available_cores();
    if requested == 0 {
        return cores;
    }
    if requested > cores && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("{requested} threads asked for, but this machine gives the process {cores} cores; threads beyond the cores make inference and pixel loops much slower");
    }
    requested
}

/// Sizes the process-wide rayon pool that the pixel loops run on; only the first call counts
/// (later ones, or a pool already started by a parallel loop, are logged and ignored).
pub fn init_thread_pool(threads: usize) {
    if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global() {
        tracing::debug!("rayon pool already set: {e}");
    }
}

/// Opens an ONNX file on the CPU with `threads` intra-op threads (0 = every core).
pub fn open_session(path: &Path, threads: usize) -> Result<Session> {
    let mut builder = cpu_builder(path, threads)?;
    builder.commit_from_file(path).map_err(|e| EngineError::ModelFile { path: path.to_path_buf(), reason: e.to_string() })
}

/// Opens an ONNX file with execution providers tried in order before the CPU; a provider that
/// fails to register is an error (not a silent CPU run).
pub fn open_session_with_providers(path: &Path, threads: usize, providers: &[ort::ep::ExecutionProviderDispatch]) -> Result<Session> {
    let builder = cpu_builder(path, threads)?;
    let mut builder = builder.with_execution_providers(providers).map_err(|e| EngineError::Runtime(e.to_string()))?;
    builder.commit_from_file(path).map_err(|e| EngineError::ModelFile { path: path.to_path_buf(), reason: e.to_string() })
}

/// Opens an in-memory ONNX model (`name` stands for it in errors).
pub fn open_session_from_memory(name: &Path, bytes: &[u8], threads: usize) -> Result<Session> {
    let mut builder = cpu_builder(name, threads)?;
    builder.commit_from_memory(bytes).map_err(|e| EngineError::ModelFile { path: name.to_path_buf(), reason: e.to_string() })
}

fn cpu_builder(path: &Path, threads: usize) -> Result<ort::session::builder::SessionBuilder> {
    let (_, env) = environment(None)?;
    let model_error = |e: ort::Error<_>| EngineError::ModelFile { path: path.to_path_buf(), reason: e.to_string() };
    Session::builder(env)
        .map_err(|e| EngineError::Runtime(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(model_error)?
        .with_intra_threads(resolve_threads(threads))
        .map_err(model_error)?
        .with_inter_threads(1)
        .map_err(model_error)
}

/// Shape of a named tensor input or output (-1 for dynamic dims), or an error naming file and tensor.
pub fn tensor_shape(session: &Session, path: &Path, name: &str, is_input: bool) -> Result<Vec<i64>> {
    let outlets = if is_input { session.inputs() } else { session.outputs() };
    let kind = if is_input { "input" } else { "output" };
    let Some(outlet) = outlets.iter().find(|o| o.name() == name) else {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        return Err(EngineError::ModelFile {
            path: path.to_path_buf(),
            reason: format!("no {kind} named {name:?} (the graph has {names:?})"),
        });
    };
    match outlet.dtype() {
        ValueType::Tensor { shape, .. } => Ok(shape.iter().copied().collect()),
        other => Err(EngineError::ModelFile {
            path: path.to_path_buf(),
            reason: format!("{kind} {name:?} is {other:?}, expected a tensor"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_means_every_core() {
        assert_eq!(resolve_threads(0), available_cores());
        assert_eq!(resolve_threads(1), 1);
        assert_eq!(resolve_threads(available_cores() + 3), available_cores() + 3);
    }
}
