//! The label-dependent half of a frame: pixel embeddings x label embeddings -> cost map at each
//! level, coarse-to-fine fusion with category early rejection, softmax, and interpolation to a
//! label map. One trait, a CPU implementation (also the reference) and, with feature `cuda`, a
//! CUDA one that reproduces it bit for bit.
use crate::costmap::{EmbeddingMap, ScoreField, dense_cost, fuse_level, keep_top_k, softmax_in_place};
use crate::backend::BackendKind;
use crate::error::{EngineError, Result};
use crate::labels::LabelSet;
use crate::post::{LabelMap, upsample_argmax};
use crate::preprocess::ContentRect;

/// What to score and where the result goes, for one frame.
#[derive(Debug, Clone)]
pub struct ScoringPlan<'a> {
    pub labels: &'a LabelSet,
    pub logit_scale: f32,
    /// Per level, coarse to fine (the manifest's `fusion_weight`).
    pub fusion_weights: &'a [f32],
    /// Labels kept per coarse cell for finer levels; 0 (or >= the label count) keeps all.
    pub top_k: usize,
    pub unknown_threshold: f32,
    /// Where the frame sits in the network input.
    pub content: ContentRect,
    pub width: u32,
    pub height: u32,
}

impl ScoringPlan<'_> {
    /// The number of labels each coarse cell passes down, or `None` for no rejection.
    pub fn rejection(&self) -> Option<usize> {
        (self.top_k > 0 && self.top_k < self.labels.len()).then_some(self.top_k)
    }

    pub fn check(&self, levels: &[EmbeddingMap]) -> Result<()> {
        self.check_dims(levels.iter().map(|l| l.dim))
    }

    /// [`Self::check`] for levels known by their embedding dimensions (on a device, say).
    pub fn check_dims(&self, dims: impl ExactSizeIterator<Item = usize>) -> Result<()> {
        let count = dims.len();
        if count == 0 {
            return Err(EngineError::Runtime("image encoder returned no levels".into()));
        }
        if count != self.fusion_weights.len() {
            return Err(EngineError::Runtime(format!(
                "image encoder returned {count} levels, the manifest lists {}",
                self.fusion_weights.len()
            )));
        }
        let mut dims = dims;
        if let Some(dim) = dims.find(|&d| d != self.labels.dim) {
            return Err(EngineError::DimMismatch { labels: self.labels.dim, model: dim });
        }
        Ok(())
    }
}

/// A scored frame and where the time went.
#[derive(Debug, Clone)]
pub struct Scored {
    pub map: LabelMap,
    /// Cost map, fusion, early rejection and softmax.
    pub cost_ms: f64,
    /// Interpolation to the frame, argmax, confidence (and the copy back from a GPU).
    pub post_ms: f64,
}

/// Cost map + fusion + early rejection + softmax + interpolation.
pub trait Scorer: Send {
    /// Short name for logs, diagnostics and reports ("cpu", "cuda").
    fn name(&self) -> &'static str;
    fn score(&mut self, levels: &[EmbeddingMap], plan: &ScoringPlan) -> Result<Scored>;
}

pub(crate) fn ms_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Per-cell probabilities at the finest level: the coarsest level dense, each finer level only
/// for the labels its coarse neighbourhood kept. The reference every other scorer must match.
pub fn fused_probabilities(levels: &[EmbeddingMap], plan: &ScoringPlan) -> Result<ScoreField> {
    plan.check(levels)?;
    let (first, rest) = levels.split_first().ok_or_else(|| EngineError::Runtime("no levels".into()))?;
    let scale = plan.logit_scale;
    let mut field = dense_cost(first, plan.labels, scale * plan.fusion_weights[0]);
    for (level, &weight) in rest.iter().zip(&plan.fusion_weights[1..]) {
        let kept = plan.rejection().map(|k| keep_top_k(&field, k));
        field = fuse_level(&field, kept.as_ref(), level, plan.labels, scale, 1.0, weight);
    }
    softmax_in_place(&mut field);
    Ok(field)
}

/// The CPU implementation (rayon across cells).
#[derive(Debug, Default)]
pub struct CpuScorer;

impl Scorer for CpuScorer {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn score(&mut self, levels: &[EmbeddingMap], plan: &ScoringPlan) -> Result<Scored> {
        let t = std::time::Instant::now();
        let field = fused_probabilities(levels, plan)?;
        let cost_ms = ms_since(t);
        let t = std::time::Instant::now();
        let map = upsample_argmax(&field, plan.content, plan.width, plan.height, plan.unknown_threshold);
        Ok(Scored { map, cost_ms, post_ms: ms_since(t) })
    }
}

/// The scorer for a backend choice. `auto` takes CUDA when it starts and says why not otherwise.
pub fn scorer_for(kind: BackendKind) -> Result<Box<dyn Scorer>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(CpuScorer)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(Box::new(crate::cuda::CudaScorer::new()?)),
        #[cfg(feature = "tensorrt")]
        BackendKind::TensorRt => scorer_for(BackendKind::Auto),
        #[cfg(feature = "burn")]
        BackendKind::Burn => scorer_for(BackendKind::Auto),
        #[cfg(feature = "cuda")]
        BackendKind::Auto => match crate::cuda::CudaScorer::new() {
            Ok(s) => {
                tracing::info!("scoring on CUDA ({})", s.device_name());
                Ok(Box::new(s))
            }
            Err(e) => {
                tracing::info!("scoring on the CPU: {e}");
                Ok(Box::new(CpuScorer))
            }
        },
        #[cfg(not(feature = "cuda"))]
        BackendKind::Auto => {
            tracing::info!("scoring on the CPU: this build has no CUDA support (feature `cuda`)");
            Ok(Box::new(CpuScorer))
        }
    }
}
