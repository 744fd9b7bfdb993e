//! Errors of the engine. Every variant names the file, field or value at fault.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file {path}: {reason}")]
    ModelFile { path: PathBuf, reason: String },

    #[error("model manifest {path}: field `{field}`: {reason}")]
    Manifest { path: PathBuf, field: String, reason: String },

    #[error("ONNX Runtime: {0}")]
    Runtime(String),

    #[error("frame: field `{field}` = {value}: {reason}")]
    Frame { field: &'static str, value: String, reason: String },

    #[error("labels: {0}")]
    Labels(String),

    /// The message carries the OS error, so it is not also chained as a source (which would
    /// print it twice under `{:#}`).
    #[error("{context}: {error}")]
    Io { context: String, error: std::io::Error },

    #[error("model fetch: {0}")]
    Fetch(String),

    /// A CUDA driver, NVRTC or kernel failure; the pipeline falls back to the CPU on it.
    #[error("CUDA: {0}")]
    Gpu(String),

    /// TensorRT missing, or an engine that cannot be built or loaded; the image encoder falls
    /// back to the next backend on it.
    #[error("TensorRT: {0}")]
    TensorRt(String),

    #[error(transparent)]
    Stereo(#[from] crate::stereo::StereoError),

    #[error("label set was built for embedding dim {labels}, model produces {model}")]
    DimMismatch { labels: usize, model: usize },
}

impl EngineError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io { context: context.into(), error: source }
    }
    pub fn frame(field: &'static str, value: impl ToString, reason: impl Into<String>) -> Self {
        EngineError::Frame { field, value: value.to_string(), reason: reason.into() }
    }
}

impl<R> From<ort::Error<R>> for EngineError {
    fn from(e: ort::Error<R>) -> Self {
        EngineError::Runtime(e.to_string())
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_is_told_once() {
        let e = EngineError::io("writing /x/y", std::io::Error::from(std::io::ErrorKind::NotFound));
        let text = e.to_string();
        assert!(text.starts_with("writing /x/y: ") && text.contains("not found"), "{text}");
        // Not chained as well: `{:#}` printers (anyhow) would repeat it.
        assert!(std::error::Error::source(&e).is_none());
    }
}
