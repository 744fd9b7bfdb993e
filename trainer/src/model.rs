//! The trainable head in burn: the forward of `engine::zoo::trained` (residual MLP on the
//! backbone features, added to the data-free embedding) followed by the engine's scoring
//! (cosine to each label, per-label calibration, coarse cost bilinearly upsampled and fused
//! with the fine cost, softmax), so the loss sees what the node will compute.
use burn::module::{Module, Param};
use burn::prelude::Backend;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use engine::LabelSet;
use engine::backend::transpose;
use engine::costmap::{Grid, corners, fusion_axes, l2_normalize};
use engine::zoo::trained::{FEATURE_CHANNELS, HeadWeights};

pub use engine::burn::{Levels, depth_log, residual_embedding, tensor2, values};
use engine::zoo::trained::DepthWeights;

#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    /// `FEATURE_CHANNELS x hidden` (input-major, for `x.matmul(w1)`).
    w1: Param<Tensor<B, 2>>,
    b1: Param<Tensor<B, 1>>,
    /// `hidden x dim`
    w2: Param<Tensor<B, 2>>,
    b2: Param<Tensor<B, 1>>,
    /// ln of logit_scale x fusion weight, per level (coarse, fine): the learned temperature.
    log_scale: Param<Tensor<B, 1>>,
}

/// One batch of images with the same grids, cells pixel-major.
pub struct Batch<B: Backend> {
    pub images: usize,
    /// From the frozen backbone (the data-free embeddings are also the distillation teacher).
    pub frozen: Levels<B>,
    /// `[images, channels, h, w]`: the tapped block's output, when backbone blocks are tuned.
    pub tap: Option<Tensor<B, 4>>,
    /// `images x fine cells x labels` target distributions.
    pub target: Tensor<B, 3>,
    /// `images x fine cells`: annotated share of each cell (0 = no loss there).
    pub weight: Tensor<B, 2>,
    /// `images x 1`: 1 for images with a coarse mask.
    pub coarse: Tensor<B, 2>,
    /// `images x labels`: 1 where an image-tag sample shows the label.
    pub tags: Tensor<B, 2>,
    /// `images x 1`: 1 for image-tag samples.
    pub tagged: Tensor<B, 2>,
    /// How many images are tag samples (their losses are skipped when none are).
    pub tagged_images: usize,
    /// `images x fine cells`: ln depth and the share of each cell with depth (0 = no loss).
    pub depth_target: Tensor<B, 2>,
    pub depth_weight: Tensor<B, 2>,
}

/// Weights of the weak losses and the fixed scales of the data-free teacher.
#[derive(Debug, Clone, Copy)]
pub struct LossWeights {
    /// Multiple-instance loss on image tags.
    pub tags: f32,
    /// Distillation from the data-free model on image-tag samples.
    pub distill: f32,
    /// Distillation from the data-free model on samples with masks, over the anchor concepts
    /// (not the training labels), so that labels the data does not show keep working.
    pub distill_masked: f32,
    pub teacher_scales: [f32; 2],
}

/// Label text embeddings and calibration as tensors.
pub struct Labels<B: Backend> {
    /// `dim x labels`
    text: Tensor<B, 2>,
    gain: Tensor<B, 2>,
    bias: Tensor<B, 2>,
    pub count: usize,
    /// `dim x anchors`: normalised text embeddings of general concepts (the default model's
    /// 1000 class descriptions) for the distillation on masked samples.
    anchors: Option<Tensor<B, 2>>,
}

/// Temperature of the anchor distillation (cosine x 20).
const ANCHOR_SCALE: f32 = 20.0;

impl<B: Backend> Labels<B> {
    pub fn new(labels: &LabelSet, device: &B::Device) -> Self {
        let (k, d) = (labels.len(), labels.dim);
        Labels {
            text: tensor2(transpose(&labels.embeddings, k, d), [d, k], device),
            gain: tensor2(labels.gain.clone(), [1, k], device),
            bias: tensor2(labels.bias.clone(), [1, k], device),
            count: k,
            anchors: None,
        }
    }

    /// Adds the anchor concepts (`anchors x dim`, row-major).
    pub fn with_anchors(mut self, anchors: &[f32], dim: usize, device: &B::Device) -> Self {
        let n = anchors.len() / dim;
        let mut rows = anchors[..n * dim].to_vec();
        rows.chunks_mut(dim).for_each(l2_normalize);
        self.anchors = Some(tensor2(transpose(&rows, n, dim), [dim, n], device));
        self
    }
}

pub fn tensor3<B: Backend>(data: Vec<f32>, shape: [usize; 3], device: &B::Device) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// The engine's coarse-to-fine bilinear weights as a dense `fine cells x coarse cells` matrix.
pub fn interpolation_matrix(coarse: Grid, fine: Grid) -> Vec<f32> {
    let (rows, cols) = fusion_axes(coarse, fine);
    let nc = coarse.width * coarse.height;
    let mut m = vec![0.0f32; fine.width * fine.height * nc];
    for (y, &row) in rows.iter().enumerate() {
        for (x, &col) in cols.iter().enumerate() {
            for (cell, w) in corners(row, col, coarse.width) {
                m[(y * fine.width + x) * nc + cell] += w;
            }
        }
    }
    m
}

impl<B: Backend> Head<B> {
    /// Kaiming-uniform `w1`, zero `w2`/`b2` (so the untrained head is the data-free model) and
    /// the default model's scales.
    pub fn init(hidden: usize, dim: usize, scales: [f32; 2], seed: u64, device: &B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let bound = (6.0 / FEATURE_CHANNELS as f32).sqrt();
        let w1: Vec<f32> = (0..FEATURE_CHANNELS * hidden).map(|_| rng.random_range(-bound..bound)).collect();
        Head {
            w1: Param::from_tensor(tensor2(w1, [FEATURE_CHANNELS, hidden], device)),
            b1: Param::from_tensor(Tensor::zeros([hidden], device)),
            w2: Param::from_tensor(Tensor::zeros([hidden, dim], device)),
            b2: Param::from_tensor(Tensor::zeros([dim], device)),
            log_scale: Param::from_tensor(Tensor::from_data(TensorData::new(scales.map(f32::ln).to_vec(), [2]), device)),
        }
    }

    /// Rebuilds the module from exported weights and scales.
    pub fn from_weights(weights: &HeadWeights, scales: [f32; 2], device: &B::Device) -> Self {
        let (h, d, c) = (weights.hidden, weights.dim, FEATURE_CHANNELS);
        Head {
            w1: Param::from_tensor(tensor2(transpose(&weights.w1, h, c), [c, h], device)),
            b1: Param::from_tensor(Tensor::from_data(TensorData::new(weights.b1.clone(), [h]), device)),
            w2: Param::from_tensor(tensor2(transpose(&weights.w2, d, h), [h, d], device)),
            b2: Param::from_tensor(Tensor::from_data(TensorData::new(weights.b2.clone(), [d]), device)),
            log_scale: Param::from_tensor(Tensor::from_data(TensorData::new(scales.map(f32::ln).to_vec(), [2]), device)),
        }
    }

    /// The weights in the engine's layout, and the two scales (coarse, fine).
    pub fn to_weights(&self) -> anyhow::Result<(HeadWeights, [f32; 2])> {
        let [c, h] = self.w1.val().dims();
        let d = self.w2.val().dims()[1];
        let w1 = values(self.w1.val())?;
        let w2 = values(self.w2.val())?;
        let scales = self.scales()?;
        let weights = HeadWeights {
            hidden: h,
            dim: d,
            w1: transpose(&w1, c, h),
            b1: values(self.b1.val())?,
            w2: transpose(&w2, h, d),
            b2: values(self.b2.val())?,
        };
        Ok((weights, [scales[0], scales[1]]))
    }

    /// The per-level scales (coarse, fine).
    pub fn scales(&self) -> anyhow::Result<Vec<f32>> {
        Ok(values(self.log_scale.val().exp())?)
    }

    /// Embeddings (not normalised) of cells: `base + W2 relu(W1 f + b1) + b2`.
    pub fn embed(&self, features: Tensor<B, 2>, base: Tensor<B, 2>) -> Tensor<B, 2> {
        residual_embedding(features, base, [self.w1.val(), self.w2.val()], [self.b1.val(), self.b2.val()])
    }


    /// The loss, the logits and the fine cells' embeddings. Fine masks: cross-entropy of each cell's label distribution,
    /// weighted by its annotated share. Coarse masks: the same, on the cells where the model
    /// gives the annotated labels at least the image's mean probability (an adaptive
    /// threshold). Image tags: multiple-instance loss (each label's image score is its highest
    /// cell probability) plus distillation from the data-free model, which keeps what the
    /// backbone already knew where the tags say little.
    /// `levels` are the head's input: the batch's frozen levels, or those of the tuned backbone.
    pub fn loss(&self, batch: &Batch<B>, levels: Levels<B>, labels: &Labels<B>, interp: &Tensor<B, 3>, weights: &LossWeights) -> (Tensor<B, 1>, Tensor<B, 3>, Tensor<B, 2>) {
        let coarse_e = self.embed(levels.coarse_features, levels.coarse_base);
        let fine_e = self.embed(levels.fine_features, levels.fine_base);
        let embedding = fine_e.clone();
        let scale = self.log_scale.val().exp();
        let logits = fuse(batch.images, labels, interp, coarse_e, fine_e.clone(), scale.clone().slice(0..1), scale.slice(1..2));
        let [n, nf, k] = logits.dims();
        let log_p = log_softmax(logits.clone(), 2);
        let weight = batch.weight.clone();
        let p_target = (batch.target.clone() * log_p.clone().exp()).sum_dim(2).reshape([n, nf]).detach();
        let mean_p = (p_target.clone() * weight.clone()).sum_dim(1) / weight.clone().sum_dim(1).add_scalar(1e-6);
        let confident = p_target.greater_equal(mean_p.expand([n, nf])).float();
        let coarse = batch.coarse.clone();
        let weight = weight * (confident * coarse.clone() + coarse.neg().add_scalar(1.0));
        let per_cell = (batch.target.clone() * log_p.clone()).sum_dim(2).reshape([n, nf]).neg();
        let mut loss = (per_cell * weight.clone()).sum() / weight.sum().add_scalar(1e-6);
        if batch.tagged_images > 0 {
            let tagged = batch.tagged.clone();
            let count = batch.tagged_images as f64;
            let score = log_p.clone().exp().max_dim(1).reshape([n, k]).clamp(1e-6, 1.0 - 1e-6);
            let tags = batch.tags.clone();
            let bce = (tags.clone() * score.clone().log() + tags.neg().add_scalar(1.0) * score.neg().add_scalar(1.0).log()).neg().mean_dim(1);
            loss = loss + (bce * tagged).sum().div_scalar(count).mul_scalar(weights.tags);
        }
        let masked_images = n - batch.tagged_images;
        if let (Some(anchors), true) = (&labels.anchors, masked_images > 0 && weights.distill_masked > 0.0) {
            let log_p_anchors = |e: Tensor<B, 2>| {
                let norm = (e.clone() * e.clone()).sum_dim(1).add_scalar(1e-24).sqrt();
                log_softmax((e / norm).matmul(anchors.clone()).mul_scalar(ANCHOR_SCALE), 1)
            };
            let teacher = log_p_anchors(batch.frozen.fine_base.clone()).detach();
            let kl = (teacher.clone().exp() * (teacher - log_p_anchors(fine_e))).sum_dim(1).reshape([n, nf]).mean_dim(1);
            let per_image = batch.tagged.clone().neg().add_scalar(1.0).mul_scalar(weights.distill_masked / masked_images as f32);
            loss = loss + (kl * per_image).sum();
        }
        if batch.tagged_images > 0 && weights.distill > 0.0 {
            let per_image = batch.tagged.clone().mul_scalar(weights.distill / batch.tagged_images as f32);
            let device = logits.device();
            let scale = |s: f32| Tensor::<B, 1>::from_data(TensorData::new(vec![s], [1]), &device);
            let [sc, sf] = weights.teacher_scales;
            let teacher_logits =
                fuse(n, labels, interp, batch.frozen.coarse_base.clone(), batch.frozen.fine_base.clone(), scale(sc), scale(sf)).detach();
            let teacher_log_p = log_softmax(teacher_logits, 2);
            let kl = (teacher_log_p.clone().exp() * (teacher_log_p - log_p)).sum_dim(2).reshape([n, nf]).mean_dim(1);
            loss = loss + (kl * per_image).sum();
        }
        (loss, logits, embedding)
    }
}

/// The depth head (engine: [`DepthWeights`]) as a module. It reads the segmentation head's
/// input and output detached: depth is a read-out that leaves segmentation as it would be alone.
#[derive(Module, Debug)]
pub struct DepthHead<B: Backend> {
    /// `inputs x hidden`
    w1: Param<Tensor<B, 2>>,
    b1: Param<Tensor<B, 1>>,
    /// `hidden x 1`
    w2: Param<Tensor<B, 2>>,
    b2: Param<Tensor<B, 1>>,
}

impl<B: Backend> DepthHead<B> {
    /// Kaiming-uniform `w1`, zero `w2` and `b2` = `log_depth` (the training set's mean ln
    /// depth), so the untrained head predicts one depth everywhere.
    pub fn init(hidden: usize, dim: usize, log_depth: f32, seed: u64, device: &B::Device) -> Self {
        let inputs = FEATURE_CHANNELS + dim;
        let mut rng = StdRng::seed_from_u64(seed);
        let bound = (6.0 / inputs as f32).sqrt();
        let w1: Vec<f32> = (0..inputs * hidden).map(|_| rng.random_range(-bound..bound)).collect();
        DepthHead {
            w1: Param::from_tensor(tensor2(w1, [inputs, hidden], device)),
            b1: Param::from_tensor(Tensor::zeros([hidden], device)),
            w2: Param::from_tensor(Tensor::zeros([hidden, 1], device)),
            b2: Param::from_tensor(Tensor::from_data(TensorData::new(vec![log_depth], [1]), device)),
        }
    }

    /// ln depth per cell (`cells x 1`).
    pub fn forward(&self, features: Tensor<B, 2>, embedding: Tensor<B, 2>) -> Tensor<B, 2> {
        depth_log(features.detach(), embedding.detach(), [self.w1.val(), self.w2.val()], [self.b1.val(), self.b2.val()])
    }

    /// Mean absolute error of ln depth over the cells with depth, weighted by their share, and
    /// the prediction (`images x cells`).
    pub fn loss(&self, features: Tensor<B, 2>, embedding: Tensor<B, 2>, batch: &Batch<B>) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let [n, nf] = batch.depth_weight.dims();
        let predicted = self.forward(features, embedding).reshape([n, nf]);
        let weight = batch.depth_weight.clone();
        let loss = ((predicted.clone() - batch.depth_target.clone()).abs() * weight.clone()).sum() / weight.sum().add_scalar(1e-6);
        (loss, predicted)
    }

    /// The weights in the engine's layout.
    pub fn to_weights(&self) -> anyhow::Result<DepthWeights> {
        let [inputs, hidden] = self.w1.val().dims();
        Ok(DepthWeights {
            hidden,
            dim: inputs - FEATURE_CHANNELS,
            w1: transpose(&values(self.w1.val())?, inputs, hidden),
            b1: values(self.b1.val())?,
            w2: values(self.w2.val())?,
            b2: values(self.b2.val())?[0],
        })
    }
}

impl<B: Backend> Head<B> {
    /// Cross-entropy of generated cells (ZS3Net), each scored against every label as a cell
    /// seen at both levels would be (coarse and fine scale together); `target[i]` is the label
    /// index of cell i.
    pub fn generated_loss(&self, features: Tensor<B, 2>, base: Tensor<B, 2>, target: &[usize], labels: &Labels<B>) -> Tensor<B, 1> {
        let scale = self.log_scale.val().exp().sum();
        let logits = label_cost(labels, self.embed(features, base)) * scale.unsqueeze::<2>();
        let [n, k] = logits.dims();
        let one_hot: Vec<f32> = target.iter().flat_map(|&t| (0..k).map(move |j| if j == t { 1.0 } else { 0.0 })).collect();
        let one_hot = tensor2(one_hot, [n, k], &logits.device());
        (one_hot * log_softmax(logits, 1)).sum_dim(1).mean().neg()
    }
}

/// The engine's scoring: cosine cost of each level's embeddings, calibrated per label, the
/// coarse level bilinearly upsampled onto the fine cells, each level times its scale.
fn fuse<B: Backend>(
    images: usize,
    labels: &Labels<B>,
    interp: &Tensor<B, 3>,
    coarse: Tensor<B, 2>,
    fine: Tensor<B, 2>,
    scale_coarse: Tensor<B, 1>,
    scale_fine: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let cost = |e: Tensor<B, 2>| label_cost(labels, e);
    let (n, k) = (images, labels.count);
    let (coarse, fine) = (cost(coarse), cost(fine));
    let (nc, nf) = (coarse.dims()[0] / n, fine.dims()[0] / n);
    let upsampled = interp.clone().expand([n, nf, nc]).matmul(coarse.reshape([n, nc, k]));
    upsampled * scale_coarse.reshape([1, 1, 1]) + fine.reshape([n, nf, k]) * scale_fine.reshape([1, 1, 1])
}

/// Calibrated cosine cost of each embedding (row) against each label.
fn label_cost<B: Backend>(labels: &Labels<B>, e: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = (e.clone() * e.clone()).sum_dim(1).add_scalar(1e-24).sqrt();
    (e / norm).matmul(labels.text.clone()) * labels.gain.clone() + labels.bias.clone()
}

