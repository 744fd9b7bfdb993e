//! The image encoder of an ovseg EfficientNet-Lite0 model (the default one or one exported by
//! the trainer) run by burn: the weights are the ONNX file's own initializers, read by name, and
//! the maths is [`Blocks`] + [`DataFree`] + the residual head, the trainer's definition.
//! On burn's CPU backend it stands in for what runs on a GPU with `burn-cuda`, where neither
//! TensorRT nor a GPU build of ONNX Runtime exists.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::Backend;
use burn::tensor::{Tensor, TensorData};

use super::{Blocks, BurnError, DataFree, depth_log, residual_embedding, tensor2, values};
use crate::backend::{Encoded, ImageBackend, OrtBackend, transpose};
use crate::fallback::{FallbackBackend, Opener};
use crate::pipeline::Model;
use crate::costmap::{EmbeddingMap, l2_normalize};
use crate::error::{EngineError, Result};
use crate::manifest::{EmbeddingOutput, Layout, Manifest};
use crate::preprocess::NetInput;
use crate::zoo::effnet::{self, FoldedConv};
use crate::zoo::head;

/// A two-layer head's weights: the residual head's, laid out for `residual_embedding`, or the
/// depth head's, for `depth_log`.
struct HeadTensors<B: Backend> {
    weights: [Tensor<B, 2>; 2],
    biases: [Tensor<B, 1>; 2],
}

pub struct BurnBackend<B: Backend> {
    name: &'static str,
    path: PathBuf,
    device: B::Device,
    blocks: Blocks<B>,
    data_free: DataFree<B>,
    residual: Option<HeadTensors<B>>,
    /// The depth head, where the manifest declares a depth output.
    depth: Option<(HeadTensors<B>, EmbeddingOutput)>,
    /// Manifest levels, coarse first: the coarse one is the pooled level.
    levels: Vec<EmbeddingOutput>,
}

/// Float initializers of an ONNX file by name, with their dims.
type Initializers = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn read_initializers(path: &Path) -> Result<Initializers> {
    let bad = |reason: String| EngineError::ModelFile { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let model = onnx_rs::parse(&bytes).map_err(|e| bad(format!("not an ONNX model: {e}")))?;
    let graph = model.graph.as_ref().ok_or_else(|| bad("holds no graph".into()))?;
    Ok(graph
        .initializer
        .iter()
        .filter_map(|t| {
            let data = t.as_f32()?.into_owned();
            Some((t.name().to_string(), (t.dims().iter().map(|&d| d.max(0) as usize).collect(), data)))
        })
        .collect())
}

impl<B: Backend> BurnBackend<B> {
    /// Loads the image encoder of the model in `dir` onto `device`; `name` is what logs and
    /// diagnostics call it ("burn-cpu", "burn-cuda").
    pub fn open(dir: &Path, manifest: &Manifest, device: B::Device, name: &'static str) -> Result<Self> {
        let path = dir.join(&manifest.image_encoder.file);
        let bad = |reason: String| EngineError::ModelFile { path: path.clone(), reason };
        if manifest.image_encoder.input.layout != Layout::Nchw {
            return Err(bad("the burn backend takes NCHW input (image_encoder.input.layout)".into()));
        }
        let levels = manifest.levels_coarse_to_fine();
        if levels.len() != 2 || levels[0].stride != 2 * levels[1].stride {
            return Err(bad(format!("the burn backend runs two-level models (stride 32 and 16); this one has {} levels", levels.len())));
        }
        let init = read_initializers(&path)?;
        let get = |name: &str, len: usize| -> std::result::Result<&[f32], BurnError> {
            match init.get(name) {
                Some((_, data)) if data.len() == len => Ok(data),
                Some((dims, _)) => Err(BurnError::Shape(format!("{name} is {dims:?}, expected {len} values"))),
                None => Err(BurnError::MissingWeight(format!(
                    "{name} (the burn backend runs EfficientNet-Lite0 encoders built by ovseg: the default model and trained ones)"
                ))),
            }
        };
        let to_engine = |e: BurnError| bad(e.to_string());
        let folded = |spec: &effnet::ConvBnSpec| {
            let n: usize = spec.shape.iter().product();
            Ok(FoldedConv { weight: get(&format!("{}.weight", spec.conv), n)?.to_vec(), bias: get(&format!("{}.bias", spec.conv), spec.shape[0])?.to_vec() })
        };
        let blocks = Blocks::whole(folded, &device).map_err(to_engine)?;
        let (classes, channels, dim) = (effnet::NUM_CLASSES, effnet::HEAD_CHANNELS, manifest.embedding_dim);
        // The projection is a `dim x 1000` conv kernel; DataFree takes the class text as `1000 x dim`.
        let projection = get(head::PROJECTION_NAME, dim * classes).map_err(to_engine)?;
        let class_text = transpose(projection, dim, classes);
        let data_free = DataFree::from_parts(
            get("_fc.weight", classes * channels).map_err(to_engine)?,
            get("_fc.bias", classes).map_err(to_engine)?,
            &class_text,
            &device,
        )
        .map_err(to_engine)?;
        let residual = match init.get("head.w1") {
            None => None,
            Some((dims, _)) => {
                let hidden = dims.first().copied().unwrap_or(0);
                let w1 = get("head.w1", hidden * channels).map_err(to_engine)?;
                let w2 = get("head.w2", dim * hidden).map_err(to_engine)?;
                let vector = |name: &str, len: usize| -> Result<Tensor<B, 1>> {
                    Ok(Tensor::from_data(TensorData::new(get(name, len).map_err(to_engine)?.to_vec(), [len]), &device))
                };
                Some(HeadTensors {
                    weights: [
                        tensor2(transpose(w1, hidden, channels), [channels, hidden], &device),
                        tensor2(transpose(w2, dim, hidden), [hidden, dim], &device),
                    ],
                    biases: [vector("head.b1", hidden)?, vector("head.b2", dim)?],
                })
            }
        };
        let depth = match &manifest.image_encoder.depth {
            None => None,
            Some(spec) => {
                let hidden = init.get("depth.w1").and_then(|(dims, _)| dims.first().copied()).unwrap_or(0);
                let inputs = channels + dim;
                let w1 = get("depth.w1", hidden * inputs).map_err(to_engine)?;
                let w2 = get("depth.w2", hidden).map_err(to_engine)?;
                let vector = |name: &str, len: usize| -> Result<Tensor<B, 1>> {
                    Ok(Tensor::from_data(TensorData::new(get(name, len).map_err(to_engine)?.to_vec(), [len]), &device))
                };
                let head = HeadTensors {
                    weights: [tensor2(transpose(w1, hidden, inputs), [inputs, hidden], &device), tensor2(w2.to_vec(), [hidden, 1], &device)],
                    biases: [vector("depth.b1", hidden)?, vector("depth.b2", 1)?],
                };
                Some((head, spec.clone()))
            }
        };
        Ok(BurnBackend { name, path, device, blocks, data_free, residual, depth, levels })
    }
}

impl<B: Backend> ImageBackend for BurnBackend<B> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn encode(&mut self, input: &NetInput) -> Result<Encoded> {
        let (h, w) = (input.height, input.width);
        if input.layout != Layout::Nchw || input.data.len() != 3 * h * w {
            return Err(EngineError::ModelFile { path: self.path.clone(), reason: format!("input is {:?} with {} values for {w}x{h}", input.layout, input.data.len()) });
        }
        let image = Tensor::<B, 4>::from_data(TensorData::new(input.data.clone(), [1, 3, h, w]), &self.device);
        let features = self.blocks.forward(image);
        let [_, _, fine_h, fine_w] = features.dims();
        let levels = self.data_free.levels(features);
        let embed = |features: Tensor<B, 2>, base: Tensor<B, 2>| match &self.residual {
            Some(r) => residual_embedding(features, base, r.weights.clone(), r.biases.clone()),
            None => base,
        };
        let coarse = embed(levels.coarse_features, levels.coarse_base);
        let fine_features = levels.fine_features.clone();
        let fine = embed(levels.fine_features, levels.fine_base);
        let readback = |t: Tensor<B, 2>| values(t).map_err(|e| EngineError::Runtime(format!("{}: {e}", self.name)));
        let depth = match &self.depth {
            Some((head, spec)) => {
                let metres = depth_log(fine_features, fine.clone(), head.weights.clone(), head.biases.clone()).exp();
                let data = readback(metres)?;
                Some(EmbeddingMap { stride: spec.stride, offset: spec.center_offset(), width: fine_w, height: fine_h, dim: 1, data })
            }
            None => None,
        };
        let coarse_size = (fine_h.div_ceil(2), fine_w.div_ceil(2));
        let mut maps = Vec::with_capacity(2);
        for ((cells, (height, width)), level) in [(coarse, coarse_size), (fine, (fine_h, fine_w))].into_iter().zip(&self.levels) {
            let mut data = readback(cells)?;
            let dim = data.len() / (height * width).max(1);
            data.chunks_mut(dim.max(1)).for_each(l2_normalize);
            maps.push(EmbeddingMap { stride: level.stride, offset: level.center_offset(), width, height, dim, data });
        }
        Ok(Encoded { levels: maps, depth })
    }
}

/// The encoder on burn's CPU backend.
pub fn cpu(dir: &Path, manifest: &Manifest) -> Result<BurnBackend<Flex>> {
    BurnBackend::<Flex>::open(dir, manifest, Default::default(), "burn-cpu")
}

fn boxed<T: ImageBackend + 'static>(backend: T) -> Box<dyn ImageBackend> {
    Box::new(backend)
}

/// burn on a CUDA device (feature `burn-cuda`, where a driver answers), then burn on the CPU,
/// then ONNX Runtime on the CPU: frames keep flowing whichever fails.
pub fn fallback_chain(model: &Model, threads: usize) -> Result<FallbackBackend> {
    let mut candidates: Vec<(&'static str, Opener)> = Vec::new();
    #[cfg(feature = "burn-cuda")]
    {
        let m = model.clone();
        candidates.push(("burn-cuda", Box::new(move || cuda::open(&m).map(boxed))));
    }
    let m = model.clone();
    candidates.push(("burn-cpu", Box::new(move || cpu(&m.dir, &m.manifest).map(boxed))));
    let m = model.clone();
    candidates.push(("cpu", Box::new(move || OrtBackend::cpu(&m.dir, &m.manifest, threads).map(boxed))));
    FallbackBackend::start(candidates)
}

#[cfg(feature = "burn-cuda")]
mod cuda {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use burn::backend::Cuda;

    use super::*;

    /// burn's CUDA runtime panics where ONNX Runtime would return an error (no driver, device
    /// lost, out of memory); this turns those panics into errors the fallback chain handles.
    pub struct Guarded(BurnBackend<Cuda>);

    fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
        payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".into())
    }

    pub fn open(model: &Model) -> Result<Guarded> {
        // burn panics without a driver, NVRTC or the CUDA headers, so ask first.
        crate::cuda::burn_cuda_ready()?;
        let device = burn::backend::cuda::CudaDevice::default();
        catch_unwind(AssertUnwindSafe(|| BurnBackend::<Cuda>::open(&model.dir, &model.manifest, device, "burn-cuda")))
            .map_err(|p| EngineError::Gpu(format!("burn's CUDA backend: {}", panic_message(p))))?
            .map(Guarded)
    }

    impl ImageBackend for Guarded {
        fn name(&self) -> &'static str {
            self.0.name()
        }

        fn encode(&mut self, input: &NetInput) -> Result<Encoded> {
            catch_unwind(AssertUnwindSafe(|| self.0.encode(input))).map_err(|p| EngineError::Gpu(format!("burn's CUDA backend: {}", panic_message(p))))?
        }
    }
}
