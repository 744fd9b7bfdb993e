//! Image encoder backends. The CPU backend (ONNX Runtime) is the reference; CUDA and TensorRT
//! backends implement the same trait.
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use crate::costmap::{EmbeddingMap, l2_normalize};
use crate::error::{EngineError, Result};
use crate::manifest::{EmbeddingOutput, Layout, Manifest};
use crate::preprocess::NetInput;
use crate::runtime;

/// What the image encoder gives for one input.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// L2-normalised pixel embeddings, one map per manifest output, coarse to fine.
    pub levels: Vec<EmbeddingMap>,
    /// The depth output (`dim` 1, metres), for models whose manifest declares one.
    pub depth: Option<EmbeddingMap>,
}

/// Runs the image encoder: network input -> L2-normalised pixel embeddings per level (and the
/// depth, where the model has a depth head).
pub trait ImageBackend: Send {
    /// Short name for logs, diagnostics and JSON reports ("cpu", "cuda", ...).
    fn name(&self) -> &'static str;
    fn encode(&mut self, input: &NetInput) -> Result<Encoded>;
    /// Why the backend asked for is not the one running, if so (see [`crate::fallback`]).
    fn fallback_reason(&self) -> Option<&str> {
        None
    }
}

/// Which backend the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Auto,
    Cpu,
    /// Cost map, fusion and post-processing on a CUDA device (feature `cuda`).
    #[cfg(feature = "cuda")]
    Cuda,
    /// The image encoder on TensorRT, then ONNX Runtime's CUDA provider, then the CPU; scoring
    /// as `Auto` (feature `tensorrt`).
    #[cfg(feature = "tensorrt")]
    TensorRt,
    /// The image encoder on burn: a CUDA device with feature `burn-cuda` where a driver
    /// answers, else burn's CPU backend, then ONNX Runtime on the CPU; scoring as `Auto`
    /// (feature `burn`).
    #[cfg(feature = "burn")]
    Burn,
}

impl BackendKind {
    /// Names this build accepts.
    pub const AVAILABLE: &[&str] = &[
        "auto",
        "cpu",
        #[cfg(feature = "cuda")]
        "cuda",
        #[cfg(feature = "tensorrt")]
        "tensorrt",
        #[cfg(feature = "burn")]
        "burn",
    ];
}

impl std::str::FromStr for BackendKind {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendKind::Auto),
            "cpu" => Ok(BackendKind::Cpu),
            #[cfg(feature = "cuda")]
            "cuda" => Ok(BackendKind::Cuda),
            #[cfg(not(feature = "cuda"))]
            "cuda" => Err(EngineError::Runtime("backend \"cuda\" is not available in this build (feature `cuda`)".into())),
            #[cfg(feature = "tensorrt")]
            "tensorrt" => Ok(BackendKind::TensorRt),
            #[cfg(feature = "burn")]
            "burn" => Ok(BackendKind::Burn),
            #[cfg(not(feature = "burn"))]
            "burn" => Err(EngineError::Runtime(format!(
                "backend {s:?} is not available in this build (feature `burn`; available: {})",
                BackendKind::AVAILABLE.join(", ")
            ))),
            #[cfg(not(feature = "tensorrt"))]
            "tensorrt" => Err(EngineError::Runtime(format!(
                "backend {s:?} is not available in this build (available: {})",
                BackendKind::AVAILABLE.join(", ")
            ))),
            other => Err(EngineError::Runtime(format!(
                "unknown backend {other:?} (expected one of: {})",
                BackendKind::AVAILABLE.join(", ")
            ))),
        }
    }
}

/// The image encoder on an ONNX Runtime session: on the CPU, or on whatever execution provider
/// the session was built with (TensorRT, CUDA).
pub struct OrtBackend {
    name: &'static str,
    session: Session,
    path: PathBuf,
    input_name: String,
    levels: Vec<EmbeddingOutput>,
    depth: Option<EmbeddingOutput>,
    dim: usize,
}

impl OrtBackend {
    /// ONNX Runtime on the CPU (the reference backend).
    pub fn cpu(dir: &Path, manifest: &Manifest, threads: usize) -> Result<Self> {
        let path = dir.join(&manifest.image_encoder.file);
        let session = runtime::open_session(&path, threads)?;
        Self::from_session("cpu", session, path, manifest)
    }

    /// Wraps a session opened on `path` after checking its inputs and outputs.
    pub fn from_session(name: &'static str, session: Session, path: PathBuf, manifest: &Manifest) -> Result<Self> {
        check_image_io(&session, &path, manifest)?;
        Ok(OrtBackend {
            name,
            session,
            path,
            input_name: manifest.image_encoder.input.name.clone(),
            levels: manifest.levels_coarse_to_fine(),
            depth: manifest.image_encoder.depth.clone(),
            dim: manifest.embedding_dim,
        })
    }
}

/// The encoder's input must be 4-D with 3 channels where the layout says, and each output
/// 4-D NCHW with `embedding_dim` channels.
fn check_image_io(session: &Session, path: &Path, manifest: &Manifest) -> Result<()> {
    let input = &manifest.image_encoder.input;
    let shape = runtime::tensor_shape(session, path, &input.name, true)?;
    let channel_axis = match input.layout {
        Layout::Nchw => 1,
        Layout::Nhwc => 3,
    };
    if shape.len() != 4 || shape[channel_axis] != 3 {
        return Err(EngineError::ModelFile {
            path: path.to_path_buf(),
            reason: format!(
                "input {:?} has shape {shape:?}; manifest layout {:?} needs 3 channels on axis {channel_axis} of 4",
                input.name, input.layout
            ),
        });
    }
    if let Some([w, h]) = input.size {
        let (hw, ww) = match input.layout {
            Layout::Nchw => (shape[2], shape[3]),
            Layout::Nhwc => (shape[1], shape[2]),
        };
        if (hw >= 0 && hw != h as i64) || (ww >= 0 && ww != w as i64) {
            return Err(EngineError::ModelFile {
                path: path.to_path_buf(),
                reason: format!("input {:?} is {ww}x{hw}, manifest size is {w}x{h}", input.name),
            });
        }
    }
    for out in &manifest.image_encoder.outputs {
        let shape = runtime::tensor_shape(session, path, &out.name, false)?;
        if shape.len() != 4 || (shape[1] >= 0 && shape[1] as usize != manifest.embedding_dim) {
            return Err(EngineError::ModelFile {
                path: path.to_path_buf(),
                reason: format!(
                    "output {:?} has shape {shape:?}; expected NCHW with {} channels (manifest embedding_dim)",
                    out.name, manifest.embedding_dim
                ),
            });
        }
    }
    if let Some(depth) = &manifest.image_encoder.depth {
        let shape = runtime::tensor_shape(session, path, &depth.name, false)?;
        if shape.len() != 4 || (shape[1] >= 0 && shape[1] != 1) {
            return Err(EngineError::ModelFile {
                path: path.to_path_buf(),
                reason: format!("depth output {:?} has shape {shape:?}; expected NCHW with 1 channel (image_encoder.depth)", depth.name),
            });
        }
    }
    Ok(())
}

impl ImageBackend for OrtBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn encode(&mut self, input: &NetInput) -> Result<Encoded> {
        let shape = match input.layout {
            Layout::Nchw => [1i64, 3, input.height as i64, input.width as i64],
            Layout::Nhwc => [1i64, input.height as i64, input.width as i64, 3],
        };
        let tensor = TensorRef::from_array_view((shape, input.data.as_slice()))?;
        let outputs = self.session.run(ort::inputs![self.input_name.as_str() => tensor])?;
        let output = |level: &EmbeddingOutput, channels: usize| -> Result<(usize, usize, &[f32])> {
            let value = outputs.get(level.name.as_str()).ok_or_else(|| EngineError::ModelFile {
                path: self.path.clone(),
                reason: format!("run produced no output {:?}", level.name),
            })?;
            let (shape, data) = value.try_extract_tensor::<f32>()?;
            let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            if dims.len() != 4 || dims[0] != 1 || dims[1] != channels {
                return Err(EngineError::ModelFile {
                    path: self.path.clone(),
                    reason: format!("output {:?} came out {dims:?}, expected [1, {channels}, h, w]", level.name),
                });
            }
            Ok((dims[3], dims[2], &data[..channels * dims[2] * dims[3]]))
        };
        let mut levels = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let (width, height, data) = output(level, self.dim)?;
            levels.push(nchw_to_pixel_major(data, self.dim, height, width, level));
        }
        let depth = match &self.depth {
            Some(spec) => {
                let (width, height, data) = output(spec, 1)?;
                Some(EmbeddingMap { stride: spec.stride, offset: spec.center_offset(), width, height, dim: 1, data: data.to_vec() })
            }
            None => None,
        };
        Ok(Encoded { levels, depth })
    }
}

/// Row-major `rows x cols` -> `cols x rows` (channel-major network outputs to pixel-major).
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

/// Transposes `D x H x W` to pixel-major and L2-normalises each pixel (cosine cost map).
pub fn nchw_to_pixel_major(data: &[f32], dim: usize, height: usize, width: usize, level: &EmbeddingOutput) -> EmbeddingMap {
    let mut out = transpose(&data[..dim * height * width], dim, height * width);
    for v in out.chunks_mut(dim) {
        l2_normalize(v);
    }
    EmbeddingMap { stride: level.stride, offset: level.center_offset(), width, height, dim, data: out }
}
