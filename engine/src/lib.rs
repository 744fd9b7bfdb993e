//! Open-vocabulary segmentation engine: free-text labels in, per-pixel labels out.
//! Knows nothing of ROS; the node and the CLI are thin shells around [`Pipeline`].
pub mod backend;
#[cfg(feature = "burn")]
pub mod burn;
pub mod colors;
pub mod costmap;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod depth;
pub mod error;
pub mod fallback;
pub mod frame;
mod isa;
pub mod handoff;
pub mod labels;
pub mod manifest;
pub mod metrics;
pub mod outputs;
pub mod paths;
pub mod pipeline;
pub mod post;
pub mod preprocess;
pub mod runtime;
pub mod scoring;
pub mod stereo;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;
pub mod text;
pub mod zoo;

pub use backend::{BackendKind, Encoded, ImageBackend};
pub use error::{EngineError, Result};
pub use frame::{Frame, PixelFormat};
pub use labels::{LabelBank, LabelSet, LabelSpec};
pub use manifest::Manifest;
pub use pipeline::{FrameDepth, Model, Pipeline, SegmentOptions, Segmentation, StageTimings};
pub use post::{LabelMap, MaskPixels, UNKNOWN};
