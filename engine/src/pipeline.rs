//! One frame's way through the engine:
//! preprocess -> image encoder -> cost map + fusion + early rejection -> softmax -> upsample.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::backend::{BackendKind, ImageBackend, OrtBackend};
use crate::error::{EngineError, Result};
use crate::frame::Frame;
use crate::labels::{LabelBank, LabelSet};
use crate::manifest::{Manifest, SegmentationDefaults};
use crate::post::LabelMap;
use crate::preprocess::preprocess;
use crate::scoring::{CpuScorer, PaintRequest, Painted, Scored, Scorer, ScoringPlan};
use crate::text::TextEncoder;

/// Run-time settings; defaults come from the model manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentOptions {
    pub logit_scale: f32,
    pub unknown_threshold: f32,
    /// Labels kept per coarse cell for finer levels (0 = no rejection).
    pub early_rejection_top_k: usize,
}

impl SegmentOptions {
    pub fn from_manifest(seg: &SegmentationDefaults) -> Self {
        SegmentOptions {
            logit_scale: seg.logit_scale,
            unknown_threshold: seg.unknown_threshold,
            early_rejection_top_k: seg.early_rejection_top_k,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.unknown_threshold) {
            return Err(EngineError::Labels(format!("unknown_threshold {} is outside 0..=1", self.unknown_threshold)));
        }
        if !self.logit_scale.is_finite() || self.logit_scale <= 0.0 {
            return Err(EngineError::Labels(format!("logit_scale {} must be finite and > 0", self.logit_scale)));
        }
        Ok(())
    }
}

/// Milliseconds per stage of one frame.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct StageTimings {
    pub preprocess_ms: f64,
    pub image_encoder_ms: f64,
    pub cost_map_ms: f64,
    pub post_ms: f64,
}

impl StageTimings {
    pub fn total_ms(&self) -> f64 {
        self.preprocess_ms + self.image_encoder_ms + self.cost_map_ms + self.post_ms
    }
}

#[derive(Debug, Clone)]
pub struct Segmentation {
    pub map: LabelMap,
    pub timings: StageTimings,
    /// Network input size the frame was resized to.
    pub net_size: (usize, usize),
    /// The model's depth head, for models with one.
    pub depth: Option<FrameDepth>,
}

/// The depth head's cells for one frame; upsampled to the frame only when asked for, so frames
/// whose depth nobody wants do not pay for it.
#[derive(Debug, Clone)]
pub struct FrameDepth {
    cells: crate::costmap::EmbeddingMap,
    content: crate::preprocess::ContentRect,
    width: u32,
    height: u32,
}

impl FrameDepth {
    /// Metres at every frame pixel, row-major, bilinearly interpolated from the cells.
    pub fn metres(&self) -> Vec<f32> {
        let _s = tracing::debug_span!("depth_head").entered();
        crate::post::upsample_depth(&self.cells, self.content, self.width, self.height)
    }
}

/// A loaded model directory.
#[derive(Debug, Clone)]
pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Model {
    /// Reads and validates the manifest and checks that every file it names exists.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(EngineError::ModelFile { path: dir.to_path_buf(), reason: "model directory not found".into() });
        }
        let manifest = Manifest::read(dir)?;
        let files = [
            ("image_encoder.file", &manifest.image_encoder.file),
            ("text_encoder.file", &manifest.text_encoder.file),
            ("text_encoder.tokenizer", &manifest.text_encoder.tokenizer),
        ];
        let anchors = manifest.label_calibration.as_ref().map(|c| ("label_calibration.anchors", &c.anchors));
        for (field, file) in files.into_iter().chain(anchors) {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(EngineError::Manifest {
                    path: dir.join(crate::manifest::MANIFEST_FILE),
                    field: field.into(),
                    reason: format!("file {} does not exist", path.display()),
                });
            }
        }
        Ok(Model { dir: dir.to_path_buf(), manifest })
    }

    /// The image encoder: TensorRT's fallback chain for `tensorrt` (default options), ONNX
    /// Runtime on the CPU otherwise.
    pub fn image_backend(&self, kind: BackendKind, threads: usize) -> Result<Box<dyn ImageBackend>> {
        #[cfg(feature = "tensorrt")]
        if kind == BackendKind::TensorRt {
            return crate::tensorrt::fallback_chain(self, &crate::tensorrt::TensorRtOptions::default(), threads);
        }
        #[cfg(feature = "burn")]
        if kind == BackendKind::Burn {
            return Ok(Box::new(crate::burn::encoder::fallback_chain(self, threads)?));
        }
        let _ = kind;
        Ok(Box::new(OrtBackend::cpu(&self.dir, &self.manifest, threads)?))
    }

    /// Image encoder and scorer for `kind`; `auto` takes CUDA where a driver and a device answer
    /// and logs why it did not otherwise.
    pub fn pipeline(&self, kind: BackendKind, threads: usize) -> Result<Pipeline> {
        let scorer = crate::scoring::scorer_for(kind)?;
        Ok(Pipeline::with_scorer(self, self.image_backend(kind, threads)?, scorer))
    }

    /// Image encoder on TensorRT (falling back to ONNX Runtime's CUDA provider, then the CPU)
    /// and the scorer `auto` picks.
    #[cfg(feature = "tensorrt")]
    pub fn pipeline_tensorrt(&self, options: &crate::tensorrt::TensorRtOptions, threads: usize) -> Result<Pipeline> {
        let scorer = crate::scoring::scorer_for(BackendKind::TensorRt)?;
        Ok(Pipeline::with_scorer(self, crate::tensorrt::fallback_chain(self, options, threads)?, scorer))
    }

    /// The label bank with this model's text encoder and default templates.
    pub fn label_bank(&self, threads: usize, disk_cache: Option<PathBuf>) -> Result<LabelBank> {
        let encoder = TextEncoder::load(&self.dir, &self.manifest, threads)?;
        let anchors = self.calibration_anchors()?;
        LabelBank::new(encoder, self.manifest.segmentation.prompt_templates.clone(), disk_cache, anchors)
    }

    /// The label-calibration anchors (`n x embedding_dim`, row-major), if the model has them.
    pub fn calibration_anchors(&self) -> Result<Option<Vec<f32>>> {
        let Some(calibration) = &self.manifest.label_calibration else {
            return Ok(None);
        };
        let path = self.dir.join(&calibration.anchors);
        let bytes = std::fs::read(&path).map_err(|e| EngineError::ModelFile { path: path.clone(), reason: format!("cannot read: {e}") })?;
        let dim = self.manifest.embedding_dim;
        if bytes.is_empty() || bytes.len() % (4 * dim) != 0 {
            return Err(EngineError::ModelFile {
                path,
                reason: format!("{} bytes is not a whole number of {dim}-float embeddings (label_calibration.anchors)", bytes.len()),
            });
        }
        Ok(Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
    }
}

pub struct Pipeline {
    backend: Box<dyn ImageBackend>,
    scorer: Box<dyn Scorer>,
    /// Why the scorer fell back to the CPU mid-run, if it did.
    scorer_fallback: Option<String>,
    /// Whether the last frame stayed in GPU memory from preprocessing to the label map.
    on_device: bool,
    /// Why frames stopped staying in GPU memory, if they did.
    device_path_fallback: Option<String>,
    manifest: Manifest,
    options: SegmentOptions,
    /// The encoder's levels, coarse to fine.
    levels: Vec<crate::manifest::EmbeddingOutput>,
}

impl Pipeline {
    /// A pipeline scoring on the CPU.
    pub fn new(model: &Model, backend: Box<dyn ImageBackend>) -> Self {
        Self::with_scorer(model, backend, Box::new(CpuScorer))
    }

    pub fn with_scorer(model: &Model, backend: Box<dyn ImageBackend>, scorer: Box<dyn Scorer>) -> Self {
        Pipeline {
            backend,
            scorer,
            scorer_fallback: None,
            on_device: false,
            device_path_fallback: None,
            options: SegmentOptions::from_manifest(&model.manifest.segmentation),
            levels: model.manifest.levels_coarse_to_fine(),
            manifest: model.manifest.clone(),
        }
    }

    /// Where the image encoder runs.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Where the cost map, fusion and post-processing run.
    pub fn scorer_name(&self) -> &'static str {
        self.scorer.name()
    }

    /// Why the image encoder is not on the backend asked for, if it is not.
    pub fn backend_fallback(&self) -> Option<&str> {
        self.backend.fallback_reason()
    }

    /// Set once a GPU scorer failed and the CPU took over.
    pub fn scorer_fallback(&self) -> Option<&str> {
        self.scorer_fallback.as_deref()
    }

    /// Where the last frame's network input and encoder outputs were: "device" when the frame
    /// stayed in GPU memory from preprocessing to the label map (a CUDA scorer with an image
    /// encoder that works in device memory), "host" otherwise.
    pub fn frame_memory(&self) -> &'static str {
        if self.on_device { "device" } else { "host" }
    }

    /// Why frames that could stay in GPU memory go through the host, if they do.
    pub fn device_path_fallback(&self) -> Option<&str> {
        self.device_path_fallback.as_deref()
    }

    pub fn options(&self) -> &SegmentOptions {
        &self.options
    }

    pub fn set_options(&mut self, options: SegmentOptions) -> Result<()> {
        options.validate()?;
        self.options = options;
        Ok(())
    }

    pub fn process(&mut self, frame: &Frame, labels: &LabelSet) -> Result<Segmentation> {
        frame.validate()?;
        if labels.dim != self.manifest.embedding_dim {
            return Err(EngineError::DimMismatch { labels: labels.dim, model: self.manifest.embedding_dim });
        }
        if labels.is_empty() {
            return Err(EngineError::Labels("the label set is empty".into()));
        }
        let spec = &self.manifest.image_encoder.input;
        let (net_width, net_height, content) = crate::preprocess::plan(frame.width, frame.height, spec);
        #[cfg(not(feature = "cuda"))]
        let _ = (net_width, net_height);
        let fusion_weights: Vec<f32> = self.levels.iter().map(|l| l.fusion_weight).collect(); // a few floats; frees `self` below
        let plan = ScoringPlan {
            labels,
            logit_scale: self.options.logit_scale,
            fusion_weights: &fusion_weights,
            top_k: self.options.early_rejection_top_k,
            unknown_threshold: self.options.unknown_threshold,
            content,
            width: frame.width,
            height: frame.height,
        };
        #[cfg(feature = "cuda")]
        if self.device_path_fallback.is_none() {
            match self.process_on_device(frame, &plan, (net_width, net_height)) {
                Some(Ok(seg)) => {
                    self.on_device = true;
                    return Ok(seg);
                }
                Some(Err(e)) => {
                    let reason = format!("frames go through host memory from now on: {e}");
                    tracing::warn!("{reason}");
                    self.device_path_fallback = Some(reason);
                }
                None => {}
            }
        }
        self.on_device = false;
        let mut timings = StageTimings::default();

        let t = Instant::now();
        let input = {
            let _s = tracing::debug_span!("preprocess").entered();
            preprocess(frame, &self.manifest.image_encoder.input)
        };
        timings.preprocess_ms = ms(t);

        let t = Instant::now();
        let encoded = {
            let _s = tracing::debug_span!("image_encoder", backend = self.backend.name()).entered();
            self.backend.encode(&input)?
        };
        timings.image_encoder_ms = ms(t);

        let scored = {
            let _s = tracing::debug_span!("cost_map", labels = labels.len(), scorer = self.scorer.name()).entered();
            self.score(&encoded.levels, &plan)?
        };
        timings.cost_map_ms = scored.cost_ms;
        timings.post_ms = scored.post_ms;
        Ok(Self::segmentation(scored.map, timings, frame, (input.width, input.height), content, encoded.depth))
    }

    /// Frame -> label map with the network input, the encoder's outputs and the scores all in
    /// GPU memory: for a CUDA scorer with an image encoder that works in device memory (ONNX
    /// Runtime's TensorRT and CUDA providers). `None` where either is missing or the plan is
    /// past the kernels' limits.
    #[cfg(feature = "cuda")]
    fn process_on_device(&mut self, frame: &Frame, plan: &ScoringPlan, net: (usize, usize)) -> Option<Result<Segmentation>> {
        let gpu = self.scorer.cuda()?;
        if !crate::cuda::CudaScorer::within_limits(plan) {
            return None;
        }
        let input = self.backend.device_input(net.0, net.1)?;
        let spec = &self.manifest.image_encoder.input;
        let level_specs = &self.levels;
        let backend = &mut self.backend;
        let run = || -> Result<_> {
            let mut timings = StageTimings::default();
            let t = Instant::now();
            let input = input?;
            {
                let _s = tracing::debug_span!("preprocess", memory = "device").entered();
                gpu.preprocessor().preprocess_to(frame, spec, input)?;
            }
            timings.preprocess_ms = ms(t);
            let t = Instant::now();
            let mut levels = None;
            let depth = {
                let _s = tracing::debug_span!("image_encoder", backend = backend.name(), memory = "device").entered();
                backend.encode_device(&mut |outputs| {
                    levels = Some(gpu.levels_from_device(outputs, level_specs)?);
                    Ok(())
                })?
            };
            let levels = levels.ok_or_else(|| EngineError::Runtime(format!("image encoder {} handed over no outputs", backend.name())))?;
            timings.image_encoder_ms = ms(t);
            let scored = {
                let _s = tracing::debug_span!("cost_map", labels = plan.labels.len(), scorer = "cuda", memory = "device").entered();
                gpu.score_resident(&levels, plan)?
            };
            timings.cost_map_ms = scored.cost_ms;
            timings.post_ms = scored.post_ms;
            Ok((scored.map, timings, depth))
        };
        Some(run().map(|(map, timings, depth)| Self::segmentation(map, timings, frame, net, plan.content, depth)))
    }

    fn segmentation(
        map: LabelMap,
        timings: StageTimings,
        frame: &Frame,
        net_size: (usize, usize),
        content: crate::preprocess::ContentRect,
        depth: Option<crate::costmap::EmbeddingMap>,
    ) -> Segmentation {
        let depth = depth.map(|cells| FrameDepth { cells, content, width: frame.width, height: frame.height });
        Segmentation { map, timings, net_size, depth }
    }

    /// Label colours and the overlay of `map` (only those asked for), where the scorer runs.
    pub fn paint(&mut self, map: &LabelMap, request: &PaintRequest) -> Result<Painted> {
        match self.scorer.paint(map, request) {
            Err(e @ EngineError::Gpu(_)) => {
                self.fall_back_to_cpu(e);
                self.scorer.paint(map, request)
            }
            other => other,
        }
    }

    /// Scores on the current scorer; a GPU failure hands this and every later frame to the CPU.
    fn score(&mut self, levels: &[crate::costmap::EmbeddingMap], plan: &ScoringPlan) -> Result<Scored> {
        match self.scorer.score(levels, plan) {
            Err(e @ EngineError::Gpu(_)) => {
                self.fall_back_to_cpu(e);
                self.scorer.score(levels, plan)
            }
            other => other,
        }
    }

    fn fall_back_to_cpu(&mut self, e: EngineError) {
        let reason = e.to_string();
        tracing::warn!(scorer = self.scorer.name(), "{reason}; scoring on the CPU from now on");
        self.scorer = Box::new(CpuScorer);
        self.scorer_fallback = Some(reason);
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
