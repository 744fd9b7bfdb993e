//! The frozen part of the model, run once per training image through ONNX Runtime (the engine's
//! CPU path): backbone head features and data-free embeddings of both levels, and, when the
//! last blocks are tuned, the output of the block before them.
use std::path::Path;

use anyhow::{Context, Result, bail};
use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;

use engine::costmap::Grid;
use engine::manifest::ImageInputSpec;
use engine::zoo::{head, pth::StateDict, trained};
use engine::{Frame, Manifest};

/// One level's cells, pixel-major: `features` is `cells x FEATURE_CHANNELS`, `base` is `cells x dim`.
#[derive(Debug, Clone)]
pub struct LevelFeatures {
    pub grid: Grid,
    pub features: Vec<f32>,
    pub base: Vec<f32>,
}

impl LevelFeatures {
    pub fn cells(&self) -> usize {
        self.grid.width * self.grid.height
    }
}

/// A block's output, channel-major `[channels, height, width]` as burn's convs take it.
#[derive(Debug, Clone)]
pub struct TapFeatures {
    pub shape: [usize; 3],
    pub data: Vec<f32>,
}

/// Both levels of one image, coarse first.
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    pub coarse: LevelFeatures,
    pub fine: LevelFeatures,
    pub tap: Option<TapFeatures>,
}

pub struct FeatureExtractor {
    session: Session,
    input: ImageInputSpec,
    dim: usize,
    tap_block: Option<usize>,
}

impl FeatureExtractor {
    /// Builds the feature graph from the default model's backbone and opens it; `tap_block`
    /// also outputs that block's output.
    pub fn new(weights: &StateDict, class_text: &[f32], manifest: &Manifest, threads: usize, tap_block: Option<usize>) -> Result<Self> {
        let graph = trained::build_feature_extractor(weights, class_text, manifest.embedding_dim, tap_block)
            .context("building the feature extractor graph")?;
        let bytes = graph.to_bytes().context("serialising the feature extractor graph")?;
        let session = engine::runtime::open_session_from_memory(Path::new("<feature extractor>"), &bytes, threads)?;
        Ok(FeatureExtractor { session, input: manifest.image_encoder.input.clone(), dim: manifest.embedding_dim, tap_block })
    }

    /// The network input for `image` exactly as the engine prepares it.
    pub fn extract(&mut self, image: &RgbImage) -> Result<ImageFeatures> {
        let frame = Frame::from_rgb_image(image);
        let net = engine::preprocess::preprocess(&frame, &self.input);
        if (net.width, net.height) != (image.width() as usize, image.height() as usize) {
            bail!(
                "training images must reach the network unscaled: {}x{} became {}x{} (use sides that are multiples of {} and at most {})",
                image.width(),
                image.height(),
                net.width,
                net.height,
                self.input.size_multiple,
                self.input.max_side
            );
        }
        let tensor = TensorRef::from_array_view(([1i64, 3, net.height as i64, net.width as i64], net.data.as_slice()))?;
        let outputs = self.session.run(ort::inputs![head::INPUT_NAME => tensor])?;
        let level = |features: &str, base: &str, stride: u32, offset: f32| -> Result<LevelFeatures> {
            let (f_dims, f) = to_pixel_major(&outputs, features, trained::FEATURE_CHANNELS)?;
            let (b_dims, b) = to_pixel_major(&outputs, base, self.dim)?;
            if f_dims != b_dims {
                bail!("feature graph: {features} is {f_dims:?} but {base} is {b_dims:?}");
            }
            Ok(LevelFeatures { grid: Grid { stride, offset, width: f_dims.1, height: f_dims.0 }, features: f, base: b })
        };
        let coarse = level(trained::FEATURES_COARSE, trained::BASE_COARSE, 32, head::COARSE_CENTER_OFFSET)?;
        let fine = level(trained::FEATURES_FINE, trained::BASE_FINE, 16, head::FINE_CENTER_OFFSET)?;
        let tap = match self.tap_block {
            Some(_) => {
                let value = outputs.get(trained::BLOCK_TAP).context("feature graph produced no block tap")?;
                let (shape, data) = value.try_extract_tensor::<f32>()?;
                let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
                let &[1, c, h, w] = dims.as_slice() else { bail!("feature graph: the block tap is {dims:?}, expected [1, c, h, w]") };
                Some(TapFeatures { shape: [c, h, w], data: data[..c * h * w].to_vec() })
            }
            None => None,
        };
        Ok(ImageFeatures { coarse, fine, tap })
    }
}

/// `[1, C, H, W]` output -> `((H, W), H*W x C)`.
fn to_pixel_major(outputs: &ort::session::SessionOutputs, name: &str, channels: usize) -> Result<((usize, usize), Vec<f32>)> {
    let value = outputs.get(name).with_context(|| format!("feature graph produced no {name}"))?;
    let (shape, data) = value.try_extract_tensor::<f32>()?;
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    if dims.len() != 4 || dims[0] != 1 || dims[1] != channels {
        bail!("feature graph: {name} is {dims:?}, expected [1, {channels}, h, w]");
    }
    let plane = dims[2] * dims[3];
    Ok(((dims[2], dims[3]), engine::backend::transpose(&data[..channels * plane], channels, plane)))
}
