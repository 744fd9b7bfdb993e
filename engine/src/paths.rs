//! Where fetched and derived files live. `OVSEG_CACHE_DIR` overrides the user cache directory.
use std::path::PathBuf;

pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("OVSEG_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("ovseg")
}

/// Downloaded registry packages, verified by checksum.
pub fn packages_dir() -> PathBuf {
    cache_root().join("packages")
}

/// The unpacked ONNX Runtime library.
pub fn runtime_dir() -> PathBuf {
    cache_root().join("runtime")
}

/// The default model directory built by `ovseg models fetch`.
pub fn default_model_dir() -> PathBuf {
    cache_root().join("models").join(crate::zoo::DEFAULT_MODEL_NAME)
}

/// Label embeddings cached on disk, keyed by content hash.
pub fn label_cache_dir() -> PathBuf {
    cache_root().join("label-embeddings")
}
