//! The image encoder on TensorRT, through ONNX Runtime's TensorRT execution provider (feature
//! `tensorrt`): ONNX Runtime builds the engine from the model's ONNX, serializes it into our
//! cache entry for the key (see [`cache`]), and later starts deserialize it. Nodes TensorRT
//! cannot take run on CUDA or the CPU inside the same session.
//!
//! Nothing here needs the TensorRT SDK to build: ONNX Runtime, libnvinfer and the CUDA driver
//! are all opened at run time, and each missing piece is a clear error the caller falls back on.
pub mod cache;
pub mod calibrate;
pub mod library;

use std::path::{Path, PathBuf};

use ort::ep::ExecutionProvider;
use sha2::{Digest, Sha256};

use crate::backend::{ImageBackend, OrtBackend};
use crate::error::{EngineError, Result};
use crate::manifest::{ImageInputSpec, Layout};
use crate::pipeline::Model;
use crate::preprocess::{ContentRect, NetInput};
use crate::runtime;
use cache::{EngineCache, EngineKey, SlotState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Fp16,
    /// Needs a calibration table ([`TensorRtOptions::int8_calibration_table`]).
    Int8,
}

impl Precision {
    pub const NAMES: &[&str] = &["fp32", "fp16", "int8"];

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "int8" => Ok(Precision::Int8),
            other => Err(EngineError::TensorRt(format!("precision {other:?}: expected one of {}", Precision::NAMES.join(", ")))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorRtOptions {
    pub precision: Precision,
    /// Builder workspace limit.
    pub workspace_mb: u64,
    /// Jetson DLA core to run on (TensorRT puts layers the DLA cannot run on the GPU).
    pub dla_core: Option<u32>,
    /// INT8: a TensorRT calibration cache ([`calibrate::CalibrationTable`], or one written by
    /// trtexec or polygraphy).
    pub int8_calibration_table: Option<PathBuf>,
    /// Engine cache root.
    pub cache_dir: PathBuf,
    /// Rebuild even when an intact engine for the key is cached.
    pub force_rebuild: bool,
}

impl Default for TensorRtOptions {
    fn default() -> Self {
        TensorRtOptions {
            precision: Precision::Fp16,
            workspace_mb: 1024,
            dla_core: None,
            int8_calibration_table: None,
            cache_dir: crate::paths::cache_root().join("tensorrt"),
            force_rebuild: false,
        }
    }
}

/// Min / opt / max input shapes of the engine's optimisation profile: the manifest's fixed size,
/// or for dynamic models from one `size_multiple` square up to `max_side` square, tuned for a
/// 4:3 camera at `max_side`.
pub fn input_profile(spec: &ImageInputSpec) -> [(usize, usize); 3] {
    if let Some([w, h]) = spec.size {
        return [(w as usize, h as usize); 3];
    }
    let m = spec.size_multiple.max(1) as usize;
    let max = (spec.max_side as usize / m).max(1) * m;
    let opt_h = ((max * 3 / 4) / m).max(1) * m;
    [(m, m), (max, opt_h), (max, max)]
}

fn shape(spec: &ImageInputSpec, (w, h): (usize, usize)) -> String {
    match spec.layout {
        Layout::Nchw => format!("{}:1x3x{h}x{w}", spec.name),
        Layout::Nhwc => format!("{}:1x{h}x{w}x3", spec.name),
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(format!("reading {}", path.display()), e))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// The ONNX Runtime library this process loads, and whether it has the TensorRT and the CUDA
/// execution providers.
pub fn onnxruntime_providers() -> Result<(PathBuf, bool, bool)> {
    let path = runtime::init(None)?;
    Ok((path, ort::ep::TensorRT::is_available()?, ort::ep::CUDA::is_available()?))
}

/// The key of the engine `options` would build for `model` on this machine; errors say which
/// piece is missing (an ONNX Runtime without the TensorRT provider, libnvinfer, a GPU).
pub fn engine_key(model: &Model, options: &TensorRtOptions) -> Result<EngineKey> {
    let ort_path = runtime::init(None)?;
    if !ort::ep::TensorRT::is_available()? {
        return Err(EngineError::TensorRt(format!(
            "the ONNX Runtime library {} was built without the TensorRT execution provider (a TensorRT-enabled onnxruntime-gpu \
             build, such as JetPack's, has it; point ORT_DYLIB_PATH at it)",
            ort_path.display()
        )));
    }
    let version = library::version(&library::candidates())?;
    let (gpu, (major, minor)) = crate::cuda::device_identity().map_err(|e| EngineError::TensorRt(format!("no GPU for TensorRT: {e}")))?;
    let calibration_sha256 = match (options.precision, &options.int8_calibration_table) {
        (Precision::Int8, Some(table)) => Some(sha256_file(table)?),
        (Precision::Int8, None) => return Err(EngineError::TensorRt("precision int8 needs a calibration table".into())),
        _ => None,
    };
    let spec = &model.manifest.image_encoder.input;
    Ok(EngineKey {
        model_sha256: sha256_file(&model.dir.join(&model.manifest.image_encoder.file))?,
        tensorrt: version.to_string(),
        gpu,
        compute_capability: format!("{major}.{minor}"),
        precision: options.precision.name().into(),
        calibration_sha256,
        workspace_mb: options.workspace_mb,
        dla_core: options.dla_core,
        input_profile: input_profile(spec).map(|s| shape(spec, s)).join(" .. "),
    })
}

/// The image encoder on TensorRT, from the cached engine for its key or a fresh build (minutes on
/// a Jetson; run `ovseg engine build` ahead of time to keep that off the robot's start-up). A
/// cached engine that fails to load is moved aside and rebuilt once.
pub fn load(model: &Model, options: &TensorRtOptions, threads: usize) -> Result<OrtBackend> {
    let key = engine_key(model, options)?;
    let cache = EngineCache::new(&options.cache_dir);
    let slot = cache.slot(&key, options.force_rebuild)?;
    match open(model, options, threads, &slot) {
        Err(e) if slot.state == SlotState::Reuse => {
            let aside = slot.quarantine()?;
            tracing::warn!("cached TensorRT engine did not load ({e}); moved it to {} and rebuilding", aside.display());
            open(model, options, threads, &cache.slot(&key, false)?)
        }
        other => other,
    }
}

fn open(model: &Model, options: &TensorRtOptions, threads: usize, slot: &cache::Slot) -> Result<OrtBackend> {
    match &slot.state {
        SlotState::Build { reason } => tracing::warn!("building the TensorRT engine into {} ({reason}); this can take minutes", slot.dir.display()),
        SlotState::Reuse => tracing::info!("TensorRT engine from {}", slot.dir.display()),
    }
    let spec = &model.manifest.image_encoder.input;
    let [min, opt, max] = input_profile(spec);
    let dir = slot.dir.display().to_string();
    let mut ep = ort::ep::TensorRT::default()
        .with_device_id(0)
        .with_fp16(options.precision == Precision::Fp16)
        .with_int8(options.precision == Precision::Int8)
        .with_max_workspace_size(options.workspace_mb as usize * (1 << 20))
        .with_engine_cache(true)
        .with_engine_cache_path(&dir)
        .with_timing_cache(true)
        .with_timing_cache_path(&dir)
        .with_profile_min_shapes(shape(spec, min))
        .with_profile_opt_shapes(shape(spec, opt))
        .with_profile_max_shapes(shape(spec, max));
    if let Some(core) = options.dla_core {
        ep = ep.with_dla(true).with_dla_core(core);
    }
    if let (Precision::Int8, Some(table)) = (options.precision, &options.int8_calibration_table) {
        ep = ep.with_int8_calibration_table_name(table.display()).with_int8_use_native_calibration_table(true);
    }
    let path = model.dir.join(&model.manifest.image_encoder.file);
    let session = runtime::open_session_with_providers(&path, threads, &[ep.build().error_on_failure()])
        .map_err(|e| EngineError::TensorRt(format!("creating the session: {e}")))?;
    let mut backend = OrtBackend::from_session("tensorrt", session, path, &model.manifest)?;
    // One inference at the profile's opt shape builds (or deserializes) the engine now, not on
    // the first camera frame.
    let (w, h) = opt;
    let warm_up = NetInput { width: w, height: h, layout: spec.layout, data: vec![0.0; 3 * w * h], content: ContentRect { x: 0.0, y: 0.0, width: w as f32, height: h as f32 } };
    backend.encode(&warm_up).map_err(|e| EngineError::TensorRt(format!("first inference: {e}")))?;
    if matches!(slot.state, SlotState::Build { .. }) {
        slot.record_built()?;
    }
    bind_to_device(&mut backend);
    Ok(backend)
}

/// Lets the GPU providers keep the encoder's input and outputs in device memory, where the CUDA
/// scorer reads them; without that the backend works from host memory, and the log says why.
fn bind_to_device(backend: &mut OrtBackend) {
    if let Err(e) = crate::backend::cuda_memory().and_then(|memory| backend.bind_to(memory)) {
        tracing::warn!("image encoder on {}: input and outputs go through host memory ({e})", backend.name());
    }
}

/// The image encoder on ONNX Runtime's CUDA execution provider: the step between TensorRT and
/// the CPU in the fallback chain.
pub fn load_cuda(model: &Model, threads: usize) -> Result<OrtBackend> {
    let ort_path = runtime::init(None)?;
    if !ort::ep::CUDA::is_available()? {
        return Err(EngineError::Gpu(format!("the ONNX Runtime library {} has no CUDA execution provider", ort_path.display())));
    }
    let path = model.dir.join(&model.manifest.image_encoder.file);
    let session = runtime::open_session_with_providers(&path, threads, &[ort::ep::CUDA::default().build().error_on_failure()])
        .map_err(|e| EngineError::Gpu(format!("ONNX Runtime CUDA session: {e}")))?;
    let mut backend = OrtBackend::from_session("onnxruntime-cuda", session, path, &model.manifest)?;
    bind_to_device(&mut backend);
    Ok(backend)
}

/// TensorRT, else ONNX Runtime's CUDA provider, else the CPU, each failure logged and kept as
/// the reason; a failure while running moves on along the same chain.
pub fn fallback_chain(model: &Model, options: &TensorRtOptions, threads: usize) -> Result<Box<dyn ImageBackend>> {
    let (m1, m2, m3) = (model.clone(), model.clone(), model.clone());
    let options = options.clone();
    crate::fallback::FallbackBackend::start(vec![
        ("tensorrt", Box::new(move || load(&m1, &options, threads).map(|b| Box::new(b) as Box<dyn ImageBackend>))),
        ("onnxruntime-cuda", Box::new(move || load_cuda(&m2, threads).map(|b| Box::new(b) as Box<dyn ImageBackend>))),
        ("cpu", Box::new(move || OrtBackend::cpu(&m3.dir, &m3.manifest, threads).map(|b| Box::new(b) as Box<dyn ImageBackend>))),
    ])
    .map(|b| Box::new(b) as Box<dyn ImageBackend>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_follow_the_manifest() {
        let manifest = crate::zoo::build::default_manifest();
        let mut spec = manifest.image_encoder.input.clone();
        spec.size = None;
        spec.max_side = 512;
        spec.size_multiple = 32;
        assert_eq!(input_profile(&spec), [(32, 32), (512, 384), (512, 512)]);
        assert!(shape(&spec, (512, 384)).ends_with(":1x3x384x512"), "{}", shape(&spec, (512, 384)));
        spec.size = Some([320, 256]);
        assert_eq!(input_profile(&spec), [(320, 256); 3]);
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::Fp16);
        assert!("half".parse::<Precision>().unwrap_err().to_string().contains("fp32, fp16, int8"));
    }
}
