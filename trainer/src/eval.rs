//! Evaluation through the engine itself (the path the node runs): mIoU over a split, per-class
//! IoU accumulated over all its pixels, pixel accuracy; JSON and Markdown reports.
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use engine::{BackendKind, Frame, Model};

use crate::checkpoint::DepthScore;
use crate::data::Split;

/// The per-class table of [`EvalReport::markdown`] starts with this (it marks our reports).
pub(crate) const MARKDOWN_TABLE_HEADER: &str = "| label | IoU | pixels |";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassIou {
    pub label: String,
    /// `None` when the label does not occur in the truth.
    pub iou: Option<f64>,
    pub pixels: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    pub model: String,
    pub images: usize,
    /// Mean over the labels that occur in the split's truth.
    pub miou: f64,
    pub pixel_accuracy: f64,
    /// With held-out labels: mIoU over the trained (seen) and held-out (unseen) labels that occur,
    /// and their harmonic mean (generalized zero-shot).
    pub seen_miou: Option<f64>,
    pub unseen_miou: Option<f64>,
    pub harmonic_miou: Option<f64>,
    pub classes: Vec<ClassIou>,
    /// The model's depth at frame resolution (as the engine upsamples it, before conditioning)
    /// against the pixels with true depth; none for models without a depth head or data
    /// without depth.
    pub depth: Option<DepthScore>,
    pub depth_pixels: u64,
}

impl EvalReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "## {}\n\n{} images: mIoU {:.1}%, pixel accuracy {:.1}%\n\n",
            self.model,
            self.images,
            100.0 * self.miou,
            100.0 * self.pixel_accuracy
        );
        if let (Some(seen), Some(unseen), Some(h)) = (self.seen_miou, self.unseen_miou, self.harmonic_miou) {
            s.push_str(&format!("seen mIoU {:.1}%, unseen (held-out) mIoU {:.1}%, harmonic {:.1}%\n\n", 100.0 * seen, 100.0 * unseen, 100.0 * h));
        }
        if let Some(d) = self.depth {
            s.push_str(&format!(
                "depth at frame resolution ({} pixels with true depth): AbsRel {:.3}, within a factor 1.25 {:.1}%\n\n",
                self.depth_pixels,
                d.abs_rel,
                100.0 * d.delta1
            ));
        }
        s.push_str(MARKDOWN_TABLE_HEADER);
        s.push_str("\n|---|---|---|\n");
        for c in &self.classes {
            let iou = c.iou.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
            s.push_str(&format!("| {} | {iou} | {} |\n", c.label, c.pixels));
        }
        s
    }
}

/// Segments every sample of `split` with the model in `model_dir` and scores it; `unseen` names
/// the labels held out of training (empty: no seen/unseen split).
pub fn evaluate(model_dir: &Path, split: &Split, threads: usize, unseen: &[String]) -> Result<EvalReport> {
    split.check_labels("--unseen", unseen, "evaluation")?;
    let model = Model::open(model_dir).with_context(|| format!("opening the model in {}", model_dir.display()))?;
    let mut pipeline = model.pipeline(BackendKind::Cpu, threads)?;
    let mut bank = model.label_bank(threads, None)?;
    let labels = bank.build(&split.label_specs())?;
    // Pixels of all images in one list, so IoU accumulates over the split, not per image.
    let (mut predicted, mut truth) = (Vec::new(), Vec::new());
    // (predicted ln depth, true ln depth, 1) per pixel with true depth.
    let mut depth_pixels = Vec::new();
    for i in 0..split.len() {
        let sample = split.load(i)?;
        let seg = pipeline.process(&Frame::from_rgb_image(&sample.image), &labels)?;
        predicted.extend_from_slice(&seg.map.labels);
        truth.extend_from_slice(sample.mask.as_raw());
        if let (Some(ours), Some(true_depth)) = (seg.depth.as_ref().map(|d| d.metres()), &sample.depth) {
            let pairs = ours.iter().zip(true_depth.as_raw()).filter(|(_, t)| t.is_finite() && **t > 0.0);
            depth_pixels.extend(pairs.map(|(p, t)| (p.max(f32::MIN_POSITIVE).ln(), t.ln(), 1.0)));
        }
    }
    let k = split.labels.len();
    let identity: Vec<u16> = (0..k as u16).collect();
    let (ious, pixel_accuracy) = engine::metrics::score(&predicted, &truth, &identity);
    let classes: Vec<ClassIou> = (0..k)
        .map(|c| ClassIou {
            label: split.labels[c].clone(),
            iou: ious.iter().find(|(id, _)| *id == c).map(|(_, iou)| *iou),
            pixels: truth.iter().filter(|&&t| usize::from(t) == c).count() as u64,
        })
        .collect();
    let mean = |keep: &dyn Fn(&ClassIou) -> bool| -> Option<f64> {
        let present: Vec<f64> = classes.iter().filter(|c| c.pixels > 0 && keep(c)).filter_map(|c| c.iou).collect();
        (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
    };
    let (seen_miou, unseen_miou) = if unseen.is_empty() {
        (None, None)
    } else {
        (mean(&|c| !unseen.contains(&c.label)), mean(&|c| unseen.contains(&c.label)))
    };
    let harmonic_miou = seen_miou.zip(unseen_miou).map(|(s, u)| if s + u > 0.0 { 2.0 * s * u / (s + u) } else { 0.0 });
    Ok(EvalReport {
        model: model.manifest.name.clone(),
        images: split.len(),
        miou: mean(&|_| true).unwrap_or(0.0),
        pixel_accuracy,
        seen_miou,
        unseen_miou,
        harmonic_miou,
        classes,
        depth: DepthScore::of(&depth_pixels),
        depth_pixels: depth_pixels.len() as u64,
    })
}
