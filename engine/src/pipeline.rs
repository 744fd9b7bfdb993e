//! One frame's way through the engine:
//! preprocess -> image encoder -> cost map + fusion + early rejection -> softmax -> upsample.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::backend::{BackendKind, CpuBackend, ImageBackend};
use crate::costmap::{ScoreField, dense_cost, fuse_level, keep_top_k, softmax_in_place};
use crate::error::{EngineError, Result};
use crate::frame::Frame;
use crate::labels::{LabelBank, LabelSet};
use crate::manifest::{Manifest, SegmentationDefaults};
use crate::post::{LabelMap, upsample_argmax};
use crate::preprocess::preprocess;
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
            return Err(EngineError::Labels(format!("logit_scale {} must be > 0", self.logit_scale)));
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
}

/// A loaded model directory.
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

    pub fn image_backend(&self, kind: BackendKind, threads: usize) -> Result<Box<dyn ImageBackend>> {
        match kind {
            BackendKind::Auto | BackendKind::Cpu => Ok(Box::new(CpuBackend::load(&self.dir, &self.manifest, threads)?)),
        }
    }

    /// The label bank with this model's text encoder and default templates.
    pub fn label_bank(&self, threads: usize, disk_cache: Option<PathBuf>) -> Result<LabelBank> {
        let encoder = TextEncoder::load(&self.dir, &self.manifest, threads)?;
        let anchors = match &self.manifest.label_calibration {
            Some(c) => Some(self.read_anchors(&c.anchors)?),
            None => None,
        };
        LabelBank::new(encoder, self.manifest.segmentation.prompt_templates.clone(), disk_cache, anchors)
    }

    fn read_anchors(&self, file: &str) -> Result<Vec<f32>> {
        let path = self.dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| EngineError::ModelFile { path: path.clone(), reason: format!("cannot read: {e}") })?;
        let dim = self.manifest.embedding_dim;
        if bytes.is_empty() || bytes.len() % (4 * dim) != 0 {
            return Err(EngineError::ModelFile {
                path,
                reason: format!("{} bytes is not a whole number of {dim}-float embeddings (label_calibration.anchors)", bytes.len()),
            });
        }
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

pub struct Pipeline {
    backend: Box<dyn ImageBackend>,
    manifest: Manifest,
    options: SegmentOptions,
}

impl Pipeline {
    pub fn new(model: &Model, backend: Box<dyn ImageBackend>) -> Self {
        Pipeline {
            backend,
            options: SegmentOptions::from_manifest(&model.manifest.segmentation),
            manifest: model.manifest.clone(),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
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
        let mut timings = StageTimings::default();

        let t = Instant::now();
        let input = {
            let _s = tracing::debug_span!("preprocess").entered();
            preprocess(frame, &self.manifest.image_encoder.input)
        };
        timings.preprocess_ms = ms(t);

        let t = Instant::now();
        let levels = {
            let _s = tracing::debug_span!("image_encoder", backend = self.backend.name()).entered();
            self.backend.encode(&input)?
        };
        timings.image_encoder_ms = ms(t);

        let t = Instant::now();
        let field = {
            let _s = tracing::debug_span!("cost_map", labels = labels.len()).entered();
            self.fused_probabilities(&levels, labels)?
        };
        timings.cost_map_ms = ms(t);

        let t = Instant::now();
        let map = {
            let _s = tracing::debug_span!("post").entered();
            upsample_argmax(&field, input.content, frame.width, frame.height, self.options.unknown_threshold)
        };
        timings.post_ms = ms(t);

        Ok(Segmentation { map, timings, net_size: (input.width, input.height) })
    }

    /// Coarsest level dense, finer levels only for labels surviving early rejection.
    fn fused_probabilities(&self, levels: &[crate::costmap::EmbeddingMap], labels: &LabelSet) -> Result<ScoreField> {
        let specs = self.manifest.levels_coarse_to_fine();
        let (first, rest) = levels.split_first().ok_or_else(|| EngineError::Runtime("image encoder returned no levels".into()))?;
        let scale = self.options.logit_scale;
        let mut field = dense_cost(first, labels, scale * specs[0].fusion_weight);
        for (level, spec) in rest.iter().zip(&specs[1..]) {
            let k = self.options.early_rejection_top_k;
            let kept = if k == 0 || k >= labels.len() { field } else { keep_top_k(&field, k) };
            field = fuse_level(&kept, level, labels, scale, 1.0, spec.fusion_weight);
        }
        softmax_in_place(&mut field);
        Ok(field)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
