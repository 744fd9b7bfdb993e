//! The trainable head, defined once for the trainer and the engine: a residual MLP on the
//! backbone's head features, added to the data-free embedding, with the same weights at both
//! levels: `e = base + W2 relu(W1 f + b1) + b2`. Zero `W2` and `b2` give the data-free model.
//!
//! The trainer runs [`build_feature_extractor`] (frozen backbone: features and data-free
//! embeddings per level) and learns the MLP; [`build_trained_encoder`] writes the same maths
//! as the ONNX image encoder the engine loads.
use super::effnet::{self, EffNetError};
use super::head::{self, LevelTensors};
use super::onnx_graph::{Attr, ConvParams, GraphBuilder, Padding};
use super::pth::StateDict;

/// Channels of the features the head reads (EfficientNet-Lite0 `_conv_head`).
pub const FEATURE_CHANNELS: usize = effnet::HEAD_CHANNELS;
pub const FEATURES_COARSE: &str = "features_s32";
pub const FEATURES_FINE: &str = "features_s16";
pub const BASE_COARSE: &str = "base_s32";
pub const BASE_FINE: &str = "base_s16";
/// The output of the last frozen block when the trainer tunes the blocks after it.
pub const BLOCK_TAP: &str = "block_tap";
/// The depth head's output: metres per fine cell, `[1, 1, h, w]`.
pub const DEPTH_OUTPUT: &str = "depth_s16";

/// Weights of the residual MLP, row-major `[out, in]` like ONNX 1x1 conv kernels.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadWeights {
    pub hidden: usize,
    pub dim: usize,
    /// `hidden x FEATURE_CHANNELS`
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// `dim x hidden`
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl HeadWeights {
    /// Checks every length and that all weights are finite; names the tensor that is not.
    pub fn check(&self) -> Result<(), EffNetError> {
        let expect = [
            ("head.w1", vec![self.hidden, FEATURE_CHANNELS], self.w1.as_slice()),
            ("head.b1", vec![self.hidden], self.b1.as_slice()),
            ("head.w2", vec![self.dim, self.hidden], self.w2.as_slice()),
            ("head.b2", vec![self.dim], self.b2.as_slice()),
        ];
        check_tensors(&expect, self.hidden == 0 || self.dim == 0)
    }
}

/// The depth head (SSIW's language-guided depth), on the fine cells: from the backbone features
/// and the L2-normalised pixel embedding, `ln depth = w2 . relu(W1 [f; e/|e|] + b1) + b2`.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthWeights {
    pub hidden: usize,
    /// Embedding dimension (the head reads `FEATURE_CHANNELS + dim` values per cell).
    pub dim: usize,
    /// `hidden x (FEATURE_CHANNELS + dim)`
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    /// `hidden`
    pub w2: Vec<f32>,
    /// The log depth (ln metres) of an all-zero hidden layer.
    pub b2: f32,
}

impl DepthWeights {
    /// Values the head reads per cell.
    pub fn inputs(&self) -> usize {
        FEATURE_CHANNELS + self.dim
    }

    /// Checks every length and that all weights are finite; names the tensor that is not.
    pub fn check(&self) -> Result<(), EffNetError> {
        let b2 = [self.b2];
        let expect = [
            ("depth.w1", vec![self.hidden, self.inputs()], self.w1.as_slice()),
            ("depth.b1", vec![self.hidden], self.b1.as_slice()),
            ("depth.w2", vec![1, self.hidden], self.w2.as_slice()),
            ("depth.b2", vec![1], &b2[..]),
        ];
        check_tensors(&expect, self.hidden == 0 || self.dim == 0)
    }
}

fn check_tensors(expect: &[(&str, Vec<usize>, &[f32])], empty: bool) -> Result<(), EffNetError> {
    for (name, shape, data) in expect {
        if data.len() != shape.iter().product::<usize>() || empty {
            return Err(EffNetError::ShapeMismatch { name: name.to_string(), expected: shape.clone(), actual: vec![data.len()] });
        }
        if let Some(index) = data.iter().position(|x| !x.is_finite()) {
            return Err(EffNetError::NotFinite { name: name.to_string(), index, value: data[index] });
        }
    }
    Ok(())
}

/// Frozen part of the trainable model: outputs the head features and data-free embeddings of
/// both levels ([`FEATURES_COARSE`], [`FEATURES_FINE`], [`BASE_COARSE`], [`BASE_FINE`]), and with
/// `tap_block` that block's output as [`BLOCK_TAP`].
pub fn build_feature_extractor(weights: &StateDict, class_text: &[f32], dim: usize, tap_block: Option<usize>) -> Result<GraphBuilder, EffNetError> {
    let mut g = GraphBuilder::new("ovseg_effnetlite0_features");
    let levels = head::emit_data_free(&mut g, weights, class_text, dim)?;
    if let Some(i) = tap_block {
        let tap = levels.blocks.get(i).ok_or_else(|| EffNetError::MissingTensor(format!("_blocks.{i} (the network has {})", levels.blocks.len())))?;
        head::emit_output(&mut g, &tap.name.clone(), BLOCK_TAP, tap.channels)?;
    }
    let [coarse, fine] = levels.with_features(&mut g)?;
    head::emit_output(&mut g, &coarse.features, FEATURES_COARSE, FEATURE_CHANNELS)?;
    head::emit_output(&mut g, &fine.features, FEATURES_FINE, FEATURE_CHANNELS)?;
    head::emit_output(&mut g, &coarse.base, BASE_COARSE, dim)?;
    head::emit_output(&mut g, &fine.base, BASE_FINE, dim)?;
    Ok(g)
}

/// The image encoder with a trained head: the default model's outputs
/// ([`head::COARSE_OUTPUT`], [`head::FINE_OUTPUT`]) with the residual added, and with a depth
/// head also [`DEPTH_OUTPUT`].
pub fn build_trained_encoder(weights: &StateDict, class_text: &[f32], trained: &HeadWeights, depth: Option<&DepthWeights>) -> Result<GraphBuilder, EffNetError> {
    trained.check()?;
    if let Some(d) = depth {
        d.check()?;
        if d.dim != trained.dim {
            return Err(EffNetError::ShapeMismatch { name: "depth.w1".into(), expected: vec![d.hidden, FEATURE_CHANNELS + trained.dim], actual: vec![d.hidden, d.inputs()] });
        }
    }
    let mut g = GraphBuilder::new("ovseg_effnetlite0_trained");
    let [coarse_level, fine_level] = head::emit_data_free(&mut g, weights, class_text, trained.dim)?.with_features(&mut g)?;
    let w1 = g.initializer_f32("head.w1", &[trained.hidden, FEATURE_CHANNELS, 1, 1], &trained.w1)?;
    let b1 = g.initializer_f32("head.b1", &[trained.hidden], &trained.b1)?;
    let w2 = g.initializer_f32("head.w2", &[trained.dim, trained.hidden, 1, 1], &trained.w2)?;
    let b2 = g.initializer_f32("head.b2", &[trained.dim], &trained.b2)?;
    let pointwise = ConvParams { padding: Padding::Valid, ..ConvParams::new(1) };
    let residual = |g: &mut GraphBuilder, level: &LevelTensors| -> Result<String, EffNetError> {
        let h = g.conv(&level.features, &w1, Some(&b1), &pointwise, "head_hidden")?;
        let h = g.op1("Relu", &[&h], Vec::new(), "head_relu")?;
        let r = g.conv(&h, &w2, Some(&b2), &pointwise, "head_residual")?;
        Ok(g.add(&level.base, &r, "head_embedding")?)
    };
    let coarse = residual(&mut g, &coarse_level)?;
    let fine = residual(&mut g, &fine_level)?;
    head::emit_output(&mut g, &coarse, head::COARSE_OUTPUT, trained.dim)?;
    head::emit_output(&mut g, &fine, head::FINE_OUTPUT, trained.dim)?;
    if let Some(d) = depth {
        let w1 = g.initializer_f32("depth.w1", &[d.hidden, d.inputs(), 1, 1], &d.w1)?;
        let b1 = g.initializer_f32("depth.b1", &[d.hidden], &d.b1)?;
        let w2 = g.initializer_f32("depth.w2", &[1, d.hidden, 1, 1], &d.w2)?;
        let b2 = g.initializer_f32("depth.b2", &[1], &[d.b2])?;
        let unit = g.op1("LpNormalization", &[&fine], vec![Attr::int("axis", 1), Attr::int("p", 2)], "depth_unit_embedding")?;
        let x = g.op1("Concat", &[&fine_level.features, &unit], vec![Attr::int("axis", 1)], "depth_input")?;
        let h = g.conv(&x, &w1, Some(&b1), &pointwise, "depth_hidden")?;
        let h = g.op1("Relu", &[&h], Vec::new(), "depth_relu")?;
        let log_depth = g.conv(&h, &w2, Some(&b2), &pointwise, "depth_log")?;
        let metres = g.op1("Exp", &[&log_depth], Vec::new(), "depth_metres")?;
        head::emit_output(&mut g, &metres, DEPTH_OUTPUT, 1)?;
    }
    Ok(g)
}
