//! The label-dependent half of a frame: pixel embeddings x label embeddings -> cost map at each
//! level, coarse-to-fine fusion with category early rejection, softmax, and interpolation to a
//! label map. One trait, a CPU implementation (also the reference) and, with feature `cuda`, a
//! CUDA one that reproduces it bit for bit.
use crate::costmap::{EmbeddingMap, ScoreField, dense_cost, fuse_level, keep_top_k, rest_gain, softmax_in_place};
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

/// What [`Scorer::paint`] draws.
#[derive(Debug, Clone, Copy)]
pub struct PaintRequest<'a> {
    /// Colour per label id; other ids (unknown) get [`crate::colors::UNKNOWN_COLOR`] in the
    /// colour image and keep the frame's pixel in the overlay.
    pub colors: &'a [[u8; 3]],
    pub color: bool,
    /// The frame (packed RGB8, the map's size) and the colours' weight, for an overlay.
    pub overlay: Option<(&'a [u8], f32)>,
}

/// RGB8 images of a label map: label colours, and label colours blended over the frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Painted {
    pub color: Option<Vec<u8>>,
    pub overlay: Option<Vec<u8>>,
}

/// The CPU's painting (the reference for [`Scorer::paint`]).
pub fn paint_on_cpu(map: &LabelMap, request: &PaintRequest) -> Painted {
    Painted {
        color: request.color.then(|| map.colorize(request.colors)),
        overlay: request.overlay.map(|(rgb, alpha)| map.overlay(rgb, request.colors, alpha)),
    }
}

/// Cost map + fusion + early rejection + softmax + interpolation, and painting the result.
pub trait Scorer: Send {
    /// Short name for logs, diagnostics and reports ("cpu", "cuda").
    fn name(&self) -> &'static str;
    fn score(&mut self, levels: &[EmbeddingMap], plan: &ScoringPlan) -> Result<Scored>;
    /// The CUDA scorer, for the pipeline's device-resident path.
    #[cfg(feature = "cuda")]
    fn cuda(&mut self) -> Option<&mut crate::cuda::CudaScorer> {
        None
    }
    /// Colour image and overlay of `map`, only those asked for.
    fn paint(&mut self, map: &LabelMap, request: &PaintRequest) -> Result<Painted> {
        check_paint(map, request)?;
        Ok(paint_on_cpu(map, request))
    }
}

/// The frame must be the map's size, and alpha a weight.
pub fn check_paint(map: &LabelMap, request: &PaintRequest) -> Result<()> {
    if let Some((rgb, alpha)) = request.overlay {
        let expected = map.width as usize * map.height as usize * 3;
        if rgb.len() != expected {
            return Err(EngineError::Runtime(format!("overlay: the frame has {} bytes, the {}x{} label map needs {expected}", rgb.len(), map.width, map.height)));
        }
        if !(0.0..=1.0).contains(&alpha) {
            return Err(EngineError::Runtime(format!("overlay: alpha {alpha} is outside 0..=1")));
        }
    }
    Ok(())
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
    for (i, (level, &weight)) in rest.iter().zip(&plan.fusion_weights[1..]).enumerate() {
        let kept = plan.rejection().map(|k| keep_top_k(&field, k));
        field = fuse_level(&field, kept.as_ref(), level, plan.labels, scale, 1.0, weight, rest_gain(plan.fusion_weights, i + 1));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn painting_gives_what_is_asked_for_and_checks_the_frame() {
        let map = LabelMap { width: 2, height: 1, labels: vec![0, crate::post::UNKNOWN], confidence: vec![1.0, 0.0] };
        let colors = [[200, 100, 0]];
        let rgb = [10, 20, 30, 40, 50, 60];
        let request = PaintRequest { colors: &colors, color: true, overlay: Some((&rgb, 0.5)) };
        let painted = CpuScorer.paint(&map, &request).unwrap();
        assert_eq!(painted.color.unwrap(), vec![200, 100, 0, 0, 0, 0]);
        assert_eq!(painted.overlay.unwrap(), vec![105, 60, 15, 40, 50, 60], "unknown keeps the frame");
        let none = CpuScorer.paint(&map, &PaintRequest { colors: &colors, color: false, overlay: None }).unwrap();
        assert_eq!(none, Painted::default());
        let err = CpuScorer.paint(&map, &PaintRequest { colors: &colors, color: false, overlay: Some((&rgb[..3], 0.5)) }).unwrap_err().to_string();
        assert!(err.contains("3 bytes") && err.contains("needs 6"), "{err}");
        let err = CpuScorer.paint(&map, &PaintRequest { colors: &colors, color: false, overlay: Some((&rgb, 1.5)) }).unwrap_err().to_string();
        assert!(err.contains("alpha 1.5"), "{err}");
    }
}
