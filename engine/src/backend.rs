//! Image encoder backends. The CPU backend (ONNX Runtime) is the reference; CUDA and TensorRT
//! backends implement the same trait.
use std::path::{Path, PathBuf};

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{Tensor, TensorRef};

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

/// A tensor in GPU memory, in the process's primary CUDA context on device 0 (where ONNX
/// Runtime's CUDA and TensorRT providers and the CUDA scorer all work), f32, row-major `dims`.
/// Valid only for as long as the call that handed it out says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTensor {
    /// Device address of the first element.
    pub ptr: u64,
    pub dims: [usize; 4],
}

impl DeviceTensor {
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs the image encoder: network input -> L2-normalised pixel embeddings per level (and the
/// depth, where the model has a depth head).
pub trait ImageBackend: Send {
    /// Short name for logs, diagnostics and JSON reports ("cpu", "cuda", ...).
    fn name(&self) -> &'static str;
    fn encode(&mut self, input: &NetInput) -> Result<Encoded>;
    /// For backends that read their input from and leave their outputs in GPU memory: the
    /// network input buffer for a `width` x `height` input, which the caller fills (on the
    /// device) before [`Self::encode_device`]. `None` for backends that work from host memory.
    fn device_input(&mut self, width: usize, height: usize) -> Option<Result<DeviceTensor>> {
        let _ = (width, height);
        None
    }
    /// Encodes the input last written to [`Self::device_input`] and hands the level outputs
    /// (coarse to fine, raw NCHW, still in GPU memory) to `take`; they may be reused or freed as
    /// soon as it returns, so `take` must be done with them (its GPU work finished) by then. The
    /// depth output, where there is one, comes back to the host.
    fn encode_device(&mut self, take: &mut dyn FnMut(&[DeviceTensor]) -> Result<()>) -> Result<Option<EmbeddingMap>> {
        let _ = take;
        Err(EngineError::Runtime(format!("image encoder {} works from host memory", self.name())))
    }
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
    layout: Layout,
    levels: Vec<EmbeddingOutput>,
    depth: Option<EmbeddingOutput>,
    dim: usize,
    /// Input and outputs kept in device memory, where the session runs on a GPU provider.
    bound: Option<BoundIo>,
}

/// ONNX Runtime's I/O binding: the input in a tensor ONNX Runtime allocated on the device
/// (reallocated when the input size changes), the levels bound to device memory and the depth to
/// host memory.
struct BoundIo {
    /// Where the input and levels live.
    memory: MemoryInfo<'static>,
    allocator: Allocator,
    binding: IoBinding,
    input: Option<((usize, usize), Tensor<f32>)>,
}

/// Device memory of the CUDA and TensorRT providers on device 0.
pub fn cuda_memory() -> Result<MemoryInfo<'static>> {
    Ok(MemoryInfo::new(AllocationDevice::CUDA, 0, AllocatorType::Device, MemoryType::Default)?)
}

/// Host memory: the depth output's place under I/O binding, and where
/// [`OrtBackend::encode_through_binding`] checks the binding path on machines without a GPU.
pub fn host_memory() -> Result<MemoryInfo<'static>> {
    Ok(MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)?)
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
            layout: manifest.image_encoder.input.layout,
            levels: manifest.levels_coarse_to_fine(),
            depth: manifest.image_encoder.depth.clone(),
            dim: manifest.embedding_dim,
            bound: None,
        })
    }

    /// Keeps the input and the level outputs in `memory` ([`cuda_memory`] for the GPU
    /// providers) through I/O binding, so [`ImageBackend::device_input`] and
    /// [`ImageBackend::encode_device`] work without host copies.
    pub fn bind_to(&mut self, memory: MemoryInfo<'static>) -> Result<()> {
        let allocator = Allocator::new(&self.session, memory.clone())?;
        let binding = self.session.create_binding()?;
        self.bound = Some(BoundIo { memory, allocator, binding, input: None });
        Ok(())
    }

    /// [`Self::encode`] through the I/O binding path ([`ImageBackend::device_input`], then
    /// [`ImageBackend::encode_device`]) of a backend bound to [`host_memory`], where the host
    /// can write the input and read the outputs: checks that path on machines without a GPU.
    pub fn encode_through_binding(&mut self, input: &NetInput) -> Result<Encoded> {
        if !self.bound.as_ref().is_some_and(|b| b.memory.is_cpu_accessible()) {
            return Err(EngineError::Runtime("encode_through_binding needs a backend bound to host memory".into()));
        }
        let dst = self.device_input(input.width, input.height).ok_or_else(|| EngineError::Runtime("not bound".into()))??;
        if dst.len() != input.data.len() {
            return Err(EngineError::Runtime(format!("bound input {:?} does not fit {} floats", dst.dims, input.data.len())));
        }
        // SAFETY: host memory (checked above) that ONNX Runtime allocated for `dst.len()` floats
        // and keeps until the next size change; nothing else refers to it during this call.
        unsafe { std::slice::from_raw_parts_mut(dst.ptr as *mut f32, dst.len()) }.copy_from_slice(&input.data);
        let specs = self.levels.clone();
        let mut levels = Vec::new();
        let depth = self.encode_device(&mut |outputs| {
            for (output, spec) in outputs.iter().zip(&specs) {
                let [_, dim, height, width] = output.dims;
                // SAFETY: host memory holding `output.len()` floats, alive until this returns.
                let data = unsafe { std::slice::from_raw_parts(output.ptr as *const f32, output.len()) };
                levels.push(nchw_to_pixel_major(data, dim, height, width, spec));
            }
            Ok(())
        })?;
        Ok(Encoded { levels, depth })
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
        let shape = input_dims(input.layout, input.width, input.height).map(|d| d as i64);
        let tensor = TensorRef::from_array_view((shape, input.data.as_slice()))?;
        let outputs = self.session.run(ort::inputs![self.input_name.as_str() => tensor])?;
        let output = |spec: &EmbeddingOutput, channels: usize| -> Result<([usize; 4], &[f32])> {
            let value = outputs.get(spec.name.as_str()).ok_or_else(|| missing(&self.path, spec))?;
            let (shape, data) = value.try_extract_tensor::<f32>()?;
            let dims = checked_dims(&self.path, spec, shape, channels)?;
            Ok((dims, &data[..channels * dims[2] * dims[3]]))
        };
        let mut levels = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let ([_, _, height, width], data) = output(level, self.dim)?;
            levels.push(nchw_to_pixel_major(data, self.dim, height, width, level));
        }
        let depth = match &self.depth {
            Some(spec) => {
                let ([_, _, height, width], data) = output(spec, 1)?;
                Some(depth_map(spec, width, height, data))
            }
            None => None,
        };
        Ok(Encoded { levels, depth })
    }

    fn device_input(&mut self, width: usize, height: usize) -> Option<Result<DeviceTensor>> {
        let layout = self.layout;
        let input_name = self.input_name.as_str();
        let bound = self.bound.as_mut()?;
        let dims = input_dims(layout, width, height);
        let (levels, depth) = (&self.levels, &self.depth);
        // ONNX Runtime keeps the outputs it allocated for bound outputs and refuses them for
        // another input size, so a new size binds the outputs afresh too.
        let allocate = |bound: &mut BoundIo| -> Result<()> {
            bound.input = None;
            bound.binding.clear();
            let tensor = Tensor::<f32>::new(&bound.allocator, dims)?;
            bound.binding.bind_input(input_name, &tensor)?;
            for level in levels {
                bound.binding.bind_output_to_device(level.name.as_str(), &bound.memory)?;
            }
            if let Some(depth) = depth {
                bound.binding.bind_output_to_device(depth.name.as_str(), &host_memory()?)?;
            }
            bound.input = Some(((width, height), tensor));
            Ok(())
        };
        if bound.input.as_ref().is_none_or(|(size, _)| *size != (width, height))
            && let Err(e) = allocate(bound)
        {
            return Some(Err(e));
        }
        let (_, tensor) = bound.input.as_mut()?;
        Some(Ok(DeviceTensor { ptr: tensor.data_ptr_mut() as u64, dims }))
    }

    fn encode_device(&mut self, take: &mut dyn FnMut(&[DeviceTensor]) -> Result<()>) -> Result<Option<EmbeddingMap>> {
        let bound = self.bound.as_ref().ok_or_else(|| EngineError::Runtime(format!("image encoder {} works from host memory", self.name)))?;
        if bound.input.is_none() {
            return Err(EngineError::Runtime("encode_device before device_input: no input is bound".into()));
        }
        let mut outputs = self.session.run_binding(&bound.binding)?;
        // The values own the device memory: they stay alive until `take` is done with it.
        let mut values = Vec::with_capacity(self.levels.len());
        let mut tensors = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let value = outputs.remove(level.name.as_str()).ok_or_else(|| missing(&self.path, level))?.downcast::<ort::value::TensorValueType<f32>>()?;
            let dims = checked_dims(&self.path, level, value.shape(), self.dim)?;
            tensors.push(DeviceTensor { ptr: value.data_ptr() as u64, dims });
            values.push(value);
        }
        take(&tensors)?;
        drop(values);
        let Some(spec) = &self.depth else { return Ok(None) };
        let value = outputs.remove(spec.name.as_str()).ok_or_else(|| missing(&self.path, spec))?;
        let (shape, data) = value.try_extract_tensor::<f32>()?;
        let [_, _, height, width] = checked_dims(&self.path, spec, shape, 1)?;
        Ok(Some(depth_map(spec, width, height, &data[..height * width])))
    }
}

/// The encoder input's shape for a `width` x `height` network input.
fn input_dims(layout: Layout, width: usize, height: usize) -> [usize; 4] {
    match layout {
        Layout::Nchw => [1, 3, height, width],
        Layout::Nhwc => [1, height, width, 3],
    }
}

fn missing(path: &Path, spec: &EmbeddingOutput) -> EngineError {
    EngineError::ModelFile { path: path.to_path_buf(), reason: format!("run produced no output {:?}", spec.name) }
}

/// An output's shape, which must be `[1, channels, h, w]`.
fn checked_dims(path: &Path, spec: &EmbeddingOutput, shape: &[i64], channels: usize) -> Result<[usize; 4]> {
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    match dims[..] {
        [1, c, h, w] if c == channels => Ok([1, c, h, w]),
        _ => Err(EngineError::ModelFile {
            path: path.to_path_buf(),
            reason: format!("output {:?} came out {dims:?}, expected [1, {channels}, h, w]", spec.name),
        }),
    }
}

fn depth_map(spec: &EmbeddingOutput, width: usize, height: usize, metres: &[f32]) -> EmbeddingMap {
    EmbeddingMap { stride: spec.stride, offset: spec.center_offset(), width, height, dim: 1, data: metres.to_vec() }
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
