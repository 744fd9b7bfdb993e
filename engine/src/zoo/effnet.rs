//! EfficientNet-Lite0 (ImageNet weights, lukemelas-style `state_dict` names) emitted as
//! ONNX nodes, with BatchNorm folded into the convolutions.
//!
//! Input: f32 NCHW `[1, 3, H, W]`, RGB scaled to [-1, 1] (`(x - 127.5) / 127.5`); any H, W.
//! Padding is TensorFlow "SAME" (extra row/column at bottom/right), which these weights
//! were trained with: stride-2 convs use `auto_pad = SAME_UPPER`, stride-1 convs use the
//! equivalent explicit symmetric pads (`dilation * (k - 1) / 2`, always even in total).

use super::onnx_graph::{ConvParams, DataType, Dim, GraphBuilder, GraphError, Padding};
use super::pth::{StateDict, Tensor};

/// One MBConv block (no squeeze-excitation in the Lite variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    /// Hidden width = `in_channels * expand_ratio`; 1 means no expansion conv.
    pub expand_ratio: usize,
    /// Depthwise kernel size (square).
    pub kernel: usize,
    /// Depthwise stride.
    pub stride: usize,
    pub in_channels: usize,
    pub out_channels: usize,
}

impl BlockSpec {
    pub const fn hidden_channels(&self) -> usize {
        self.in_channels * self.expand_ratio
    }

    /// Identity shortcut when the block keeps both resolution and width.
    pub const fn has_residual(&self) -> bool {
        self.stride == 1 && self.in_channels == self.out_channels
    }
}

const fn block(expand_ratio: usize, kernel: usize, stride: usize, i: usize, o: usize) -> BlockSpec {
    BlockSpec {
        expand_ratio,
        kernel,
        stride,
        in_channels: i,
        out_channels: o,
    }
}

/// The 16 MBConv blocks of EfficientNet-Lite0; single source of truth for the layout.
pub const LITE0_BLOCKS: [BlockSpec; 16] = [
    block(1, 3, 1, 32, 16),
    block(6, 3, 2, 16, 24),
    block(6, 3, 1, 24, 24),
    block(6, 5, 2, 24, 40),
    block(6, 5, 1, 40, 40),
    block(6, 3, 2, 40, 80),
    block(6, 3, 1, 80, 80),
    block(6, 3, 1, 80, 80),
    block(6, 5, 1, 80, 112),
    block(6, 5, 1, 112, 112),
    block(6, 5, 1, 112, 112),
    block(6, 5, 2, 112, 192),
    block(6, 5, 1, 192, 192),
    block(6, 5, 1, 192, 192),
    block(6, 5, 1, 192, 192),
    block(6, 3, 1, 192, 320),
];

pub const IMAGE_CHANNELS: usize = 3;
pub const STEM_CHANNELS: usize = 32;
pub const STEM_KERNEL: usize = 3;
pub const STEM_STRIDE: usize = 2;
pub const HEAD_CHANNELS: usize = 1280;
pub const NUM_CLASSES: usize = 1000;
/// TF EfficientNet BatchNorm epsilon (not PyTorch's default 1e-5).
pub const BN_EPS: f64 = 1e-3;

/// Last block index (inclusive) of each tapped stage.
pub const STRIDE8_BLOCK: usize = 4;
pub const STRIDE16_BLOCK: usize = 10;
pub const LAST_BLOCK: usize = LITE0_BLOCKS.len() - 1;

pub const STRIDE8_CHANNELS: usize = LITE0_BLOCKS[STRIDE8_BLOCK].out_channels;
pub const STRIDE16_CHANNELS: usize = LITE0_BLOCKS[STRIDE16_BLOCK].out_channels;
pub const LAST_BLOCK_CHANNELS: usize = LITE0_BLOCKS[LAST_BLOCK].out_channels;

// The tap widths other code is written against.
const _: () = assert!(STRIDE8_CHANNELS == 40);
const _: () = assert!(STRIDE16_CHANNELS == 112);
const _: () = assert!(LAST_BLOCK_CHANNELS == 320);
const _: () = assert!(LITE0_BLOCKS[0].in_channels == STEM_CHANNELS);

/// Total stride of the deepest features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStride {
    /// As trained: blocks 11.. and the head run at stride 32.
    S32,
    /// DeepLab-style: block 11's depthwise conv runs with stride 1 (dilation 1) and the
    /// depthwise convs of blocks 12..15 with dilation 2, so the receptive field matches
    /// S32 while blocks 11.. and the head stay at stride 16 (4x the pixels).
    /// Sampling positions shift by half a stride-32 cell relative to S32.
    S16,
}

impl OutputStride {
    pub fn value(self) -> usize {
        match self {
            OutputStride::S16 => 16,
            OutputStride::S32 => 32,
        }
    }
}

/// A feature map produced by the backbone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// Tensor name in the graph.
    pub name: String,
    pub channels: usize,
    /// Actual stride relative to the input image.
    pub stride: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackboneTaps {
    /// Output of block 4: 40 channels at stride 8.
    pub stride8: Tap,
    /// Output of block 10: 112 channels at stride 16.
    pub stride16: Tap,
    /// Output of block 15: 320 channels at stride 32 (S32) or 16 (S16).
    pub last_block: Tap,
    /// `_conv_head` + BN + ReLU6: 1280 channels, same stride as `last_block`.
    pub head: Tap,
    /// The output of every block, in order.
    pub blocks: Vec<Tap>,
}

#[derive(Debug, thiserror::Error)]
pub enum EffNetError {
    #[error("weights: tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("weights: tensor {name:?} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("weights: unexpected tensor {0:?} (not part of EfficientNet-Lite0)")]
    UnexpectedTensor(String),
    #[error("weights: tensor {name:?} holds {value} at index {index}; every weight must be finite")]
    NotFinite { name: String, index: usize, value: f32 },
    #[error("weights: BatchNorm {name:?} has a negative running variance at channel {channel}")]
    NegativeVariance { name: String, channel: usize },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// One convolution of the network with the BatchNorm that follows it, as both the ONNX
/// emitter here and the trainer's burn copy build it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvBnSpec {
    /// State-dict prefix of the conv (`{conv}.weight`).
    pub conv: String,
    /// State-dict prefix of its BatchNorm.
    pub bn: String,
    /// `[out, in / groups, k, k]`
    pub shape: [usize; 4],
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    /// ReLU6 after the (folded) BatchNorm; the project conv of each block has none.
    pub relu6: bool,
}

impl ConvBnSpec {
    fn new(conv: String, bn: String, shape: [usize; 4], stride: usize, dilation: usize, groups: usize, relu6: bool) -> Self {
        ConvBnSpec { conv, bn, shape, stride, dilation, groups, relu6 }
    }

    /// TF-"SAME" padding `(begin, end)` along an axis of `size` input pixels.
    pub fn same_padding(&self, size: usize) -> (usize, usize) {
        same_padding(size, self.shape[2], self.stride, self.dilation)
    }
}

/// TF-"SAME" (ONNX `SAME_UPPER`) padding `(begin, end)` of a window along an axis of `size`
/// pixels: the output has `ceil(size / stride)` positions and any odd pixel goes at the end.
pub fn same_padding(size: usize, kernel: usize, stride: usize, dilation: usize) -> (usize, usize) {
    let k = dilation * (kernel - 1) + 1;
    let out = size.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + k).saturating_sub(size);
    (total / 2, total - total / 2)
}

pub fn stem_conv() -> ConvBnSpec {
    ConvBnSpec::new(
        "_conv_stem".into(),
        "_bn0".into(),
        [STEM_CHANNELS, IMAGE_CHANNELS, STEM_KERNEL, STEM_KERNEL],
        STEM_STRIDE,
        1,
        1,
        true,
    )
}

pub fn head_conv() -> ConvBnSpec {
    ConvBnSpec::new("_conv_head".into(), "_bn1".into(), [HEAD_CHANNELS, LAST_BLOCK_CHANNELS, 1, 1], 1, 1, 1, true)
}

/// Where each block runs at an output stride: its depthwise conv's stride and dilation, and
/// the total stride of its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlacement {
    pub dw_stride: usize,
    pub dw_dilation: usize,
    pub out_stride: usize,
}

/// The placement of all 16 blocks. DeepLab rule: the block that would exceed the target keeps
/// its current dilation with stride 1; later blocks get dilation multiplied by that stride.
pub fn block_placements(stride: OutputStride) -> [BlockPlacement; LITE0_BLOCKS.len()] {
    let (mut cur_stride, mut dilation) = (STEM_STRIDE, 1);
    LITE0_BLOCKS.map(|b| {
        if cur_stride * b.stride > stride.value() {
            let d = dilation;
            dilation *= b.stride;
            BlockPlacement { dw_stride: 1, dw_dilation: d, out_stride: cur_stride }
        } else {
            cur_stride *= b.stride;
            BlockPlacement { dw_stride: b.stride, dw_dilation: dilation, out_stride: cur_stride }
        }
    })
}

/// The convs of block `i` in order: expansion (when the block has one), depthwise, projection.
pub fn block_convs(i: usize, placement: BlockPlacement) -> Vec<ConvBnSpec> {
    let b = LITE0_BLOCKS[i];
    let p = format!("_blocks.{i}");
    let hidden = b.hidden_channels();
    let mut convs = Vec::with_capacity(3);
    if b.expand_ratio != 1 {
        convs.push(ConvBnSpec::new(format!("{p}._expand_conv"), format!("{p}._bn0"), [hidden, b.in_channels, 1, 1], 1, 1, 1, true));
    }
    convs.push(ConvBnSpec::new(
        format!("{p}._depthwise_conv"),
        format!("{p}._bn1"),
        [hidden, 1, b.kernel, b.kernel],
        placement.dw_stride,
        placement.dw_dilation,
        hidden,
        true,
    ));
    convs.push(ConvBnSpec::new(format!("{p}._project_conv"), format!("{p}._bn2"), [b.out_channels, hidden, 1, 1], 1, 1, 1, false));
    convs
}

/// Every float tensor name and shape a Lite0 state dict must hold, in network order.
pub fn lite0_expected_tensors() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let placements = block_placements(OutputStride::S32);
    let convs = std::iter::once(stem_conv())
        .chain((0..LITE0_BLOCKS.len()).flat_map(|i| block_convs(i, placements[i])))
        .chain(std::iter::once(head_conv()));
    for spec in convs {
        out.push((format!("{}.weight", spec.conv), spec.shape.to_vec()));
        for p in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{}.{p}", spec.bn), vec![spec.shape[0]]));
        }
    }
    out.push(("_fc.weight".into(), vec![NUM_CLASSES, HEAD_CHANNELS]));
    out.push(("_fc.bias".into(), vec![NUM_CLASSES]));
    out
}

/// Checks that `weights` holds exactly the Lite0 tensors with the right shapes
/// (catches e.g. a B0 checkpoint, which has squeeze-excitation tensors).
pub fn check_lite0_weights(weights: &StateDict) -> Result<(), EffNetError> {
    let expected = lite0_expected_tensors();
    for (name, shape) in &expected {
        get(weights, name, shape)?;
    }
    if weights.len() != expected.len() {
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(extra) = weights.keys().find(|k| !known.contains(k.as_str())) {
            return Err(EffNetError::UnexpectedTensor(extra.clone()));
        }
    }
    Ok(())
}

fn get<'a>(weights: &'a StateDict, name: &str, shape: &[usize]) -> Result<&'a Tensor, EffNetError> {
    let t = weights
        .get(name)
        .ok_or_else(|| EffNetError::MissingTensor(name.to_string()))?;
    if t.shape != shape {
        return Err(EffNetError::ShapeMismatch {
            name: name.to_string(),
            expected: shape.to_vec(),
            actual: t.shape.clone(),
        });
    }
    Ok(t)
}

/// Conv weight and bias after folding an inference-mode BatchNorm:
/// `w' = w * g / sqrt(v + eps)`, `b' = beta - mean * g / sqrt(v + eps)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedConv {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

pub fn fold_bn(
    weight: &[f32],
    out_channels: usize,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> FoldedConv {
    let per_out = weight.len() / out_channels.max(1);
    let mut w = Vec::with_capacity(weight.len());
    let mut b = Vec::with_capacity(out_channels);
    for o in 0..out_channels {
        // f64 so the fold adds no rounding beyond the final cast.
        let scale = gamma[o] as f64 / (var[o] as f64 + eps).sqrt();
        w.extend(
            weight[o * per_out..(o + 1) * per_out]
                .iter()
                .map(|&x| (x as f64 * scale) as f32),
        );
        b.push((beta[o] as f64 - mean[o] as f64 * scale) as f32);
    }
    FoldedConv { weight: w, bias: b }
}

/// The conv of `spec` with its BatchNorm folded in, read from `weights`.
pub fn folded(weights: &StateDict, spec: &ConvBnSpec) -> Result<FoldedConv, EffNetError> {
    let w = get(weights, &format!("{}.weight", spec.conv), &spec.shape)?;
    let c = [spec.shape[0]];
    let gamma = get(weights, &format!("{}.weight", spec.bn), &c)?;
    let beta = get(weights, &format!("{}.bias", spec.bn), &c)?;
    let mean = get(weights, &format!("{}.running_mean", spec.bn), &c)?;
    let var = get(weights, &format!("{}.running_var", spec.bn), &c)?;
    if let Some(channel) = var.data.iter().position(|&v| v < 0.0 || v.is_nan()) {
        return Err(EffNetError::NegativeVariance { name: format!("{}.running_var", spec.bn), channel });
    }
    Ok(fold_bn(&w.data, spec.shape[0], &gamma.data, &beta.data, &mean.data, &var.data, BN_EPS))
}

/// Writes an already folded conv back as `spec`'s state-dict tensors, with a BatchNorm that
/// folds to it (unit scale, zero mean, variance `1 - eps`), so a fine-tuned conv goes through
/// the same loading path as the original weights.
pub fn set_folded(weights: &mut StateDict, spec: &ConvBnSpec, conv: &FoldedConv) -> Result<(), EffNetError> {
    let out = spec.shape[0];
    let expected: usize = spec.shape.iter().product();
    if conv.weight.len() != expected || conv.bias.len() != out {
        return Err(EffNetError::ShapeMismatch {
            name: spec.conv.clone(),
            expected: spec.shape.to_vec(),
            actual: vec![conv.weight.len(), conv.bias.len()],
        });
    }
    if let Some(index) = conv.weight.iter().chain(&conv.bias).position(|x| !x.is_finite()) {
        let value = conv.weight.iter().chain(&conv.bias).nth(index).copied().unwrap_or(f32::NAN);
        return Err(EffNetError::NotFinite { name: spec.conv.clone(), index, value });
    }
    let vector = |data: Vec<f32>| Tensor { shape: vec![out], data };
    weights.insert(format!("{}.weight", spec.conv), Tensor { shape: spec.shape.to_vec(), data: conv.weight.clone() });
    weights.insert(format!("{}.weight", spec.bn), vector(vec![1.0; out]));
    weights.insert(format!("{}.bias", spec.bn), vector(conv.bias.clone()));
    weights.insert(format!("{}.running_mean", spec.bn), vector(vec![0.0; out]));
    weights.insert(format!("{}.running_var", spec.bn), vector(vec![(1.0 - BN_EPS) as f32; out]));
    Ok(())
}

/// Adds `[conv] -> BN (folded) -> optional ReLU6` and returns the output name.
fn conv_bn(g: &mut GraphBuilder, weights: &StateDict, x: &str, spec: &ConvBnSpec) -> Result<String, EffNetError> {
    let f = folded(weights, spec)?;
    let wn = g.initializer_f32(&format!("{}.weight", spec.conv), &spec.shape, &f.weight)?;
    let bn_ = g.initializer_f32(&format!("{}.bias", spec.conv), &[spec.shape[0]], &f.bias)?;
    let y = g.conv(x, &wn, Some(&bn_), &same_conv(spec), &spec.conv)?;
    if spec.relu6 {
        Ok(g.relu6(&y, &format!("{}.relu6", spec.conv))?)
    } else {
        Ok(y)
    }
}

/// TF-"SAME" conv parameters for a square kernel.
fn same_conv(spec: &ConvBnSpec) -> ConvParams {
    let (kernel, stride, dilation) = (spec.shape[2], spec.stride, spec.dilation);
    let padding = if stride == 1 {
        // Stride 1: SAME pads dilation*(k-1) in total, even for odd k, so it's symmetric
        // and size-independent; explicit pads avoid relying on auto_pad + dilation.
        let p = dilation * (kernel - 1) / 2;
        Padding::Explicit {
            top: p,
            left: p,
            bottom: p,
            right: p,
        }
    } else {
        Padding::SameUpper
    };
    ConvParams {
        kernel: [kernel, kernel],
        stride: [stride, stride],
        dilation: [dilation, dilation],
        group: spec.groups,
        padding,
    }
}

/// Declares the usual backbone input: f32 `[1, 3, height, width]`.
pub fn declare_image_input(g: &mut GraphBuilder, name: &str) -> Result<(), EffNetError> {
    g.add_input(
        name,
        DataType::Float,
        vec![
            Dim::Fixed(1),
            Dim::Fixed(IMAGE_CHANNELS as i64),
            Dim::sym("height"),
            Dim::sym("width"),
        ],
    )?;
    Ok(())
}

/// `[1, channels, ?, ?]`: the declared shape of a feature map graph output.
pub fn feature_dims(channels: usize) -> Vec<Dim> {
    vec![
        Dim::Fixed(1),
        Dim::Fixed(channels as i64),
        Dim::Unknown,
        Dim::Unknown,
    ]
}

/// Emits stem, 16 MBConv blocks and head. `input` must already be defined in `g`
/// (normalised image, NCHW).
pub fn emit_backbone(
    g: &mut GraphBuilder,
    weights: &StateDict,
    input: &str,
    stride: OutputStride,
) -> Result<BackboneTaps, EffNetError> {
    let mut x = conv_bn(g, weights, input, &stem_conv())?;
    let placements = block_placements(stride);
    let mut blocks: Vec<Tap> = Vec::with_capacity(LITE0_BLOCKS.len());
    for (i, b) in LITE0_BLOCKS.iter().enumerate() {
        let mut h = x.clone();
        for spec in block_convs(i, placements[i]) {
            h = conv_bn(g, weights, &h, &spec)?;
        }
        // The residual depends on the spec, not on the S16 rewrite: block 11 changes
        // width, so it never has one either way.
        if b.has_residual() {
            h = g.add(&h, &x, &format!("_blocks.{i}.out"))?;
        }
        x = h;
        blocks.push(Tap { name: x.clone(), channels: b.out_channels, stride: placements[i].out_stride });
    }
    let head = conv_bn(g, weights, &x, &head_conv())?;
    Ok(BackboneTaps {
        stride8: blocks[STRIDE8_BLOCK].clone(),
        stride16: blocks[STRIDE16_BLOCK].clone(),
        last_block: blocks[LAST_BLOCK].clone(),
        head: Tap { name: head, channels: HEAD_CHANNELS, stride: placements[LAST_BLOCK].out_stride },
        blocks,
    })
}

/// `_fc` applied at every pixel as a 1x1 conv: `[1, 1000, h, w]` ImageNet logits.
/// Averaging this map spatially equals the trained classifier (global pool + fc),
/// since both steps are linear.
pub fn emit_classifier_map(
    g: &mut GraphBuilder,
    weights: &StateDict,
    features: &str,
) -> Result<String, EffNetError> {
    let w = get(weights, "_fc.weight", &[NUM_CLASSES, HEAD_CHANNELS])?;
    let b = get(weights, "_fc.bias", &[NUM_CLASSES])?;
    let wn = g.initializer_f32("_fc.weight", &[NUM_CLASSES, HEAD_CHANNELS, 1, 1], &w.data)?;
    let bn = g.initializer_f32("_fc.bias", &[NUM_CLASSES], &b.data)?;
    Ok(g.conv(features, &wn, Some(&bn), &ConvParams::new(1), "_fc.logits")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::pth::load_state_dict;

    #[test]
    fn spec_table_matches_lite0() {
        let strides: Vec<usize> = (0..16).filter(|&i| LITE0_BLOCKS[i].stride == 2).collect();
        assert_eq!(strides, [1, 3, 5, 11]);
        let k5: Vec<usize> = (0..16).filter(|&i| LITE0_BLOCKS[i].kernel == 5).collect();
        assert_eq!(k5, [3, 4, 8, 9, 10, 11, 12, 13, 14]);
        for w in LITE0_BLOCKS.windows(2) {
            assert_eq!(w[0].out_channels, w[1].in_channels);
        }
        assert_eq!(LITE0_BLOCKS[0].expand_ratio, 1);
        assert!(LITE0_BLOCKS[1..].iter().all(|b| b.expand_ratio == 6));
        let residual = LITE0_BLOCKS.iter().filter(|b| b.has_residual()).count();
        assert_eq!(residual, 9);
        // 4 params per BN; Lite0 has 296 entries incl. one num_batches_tracked per BN.
        let expected = lite0_expected_tensors();
        let bns = expected
            .iter()
            .filter(|(n, _)| n.ends_with(".running_var"))
            .count();
        assert_eq!(expected.len() + bns, 296);
    }

    #[test]
    fn bn_folding_matches_direct_computation() {
        // conv (2 out, 1 in, 1x2 kernel) then BN, evaluated on one input patch.
        let w = [0.5f32, -1.0, 2.0, 0.25];
        let (gamma, beta, mean, var) = (
            [1.5f32, -0.5],
            [0.1f32, 0.2],
            [0.3f32, -0.4],
            [0.04f32, 2.0],
        );
        let patch = [3.0f32, -2.0];
        let eps = 1e-3;
        let f = fold_bn(&w, 2, &gamma, &beta, &mean, &var, eps);
        for o in 0..2 {
            let conv: f64 = (0..2).map(|k| w[o * 2 + k] as f64 * patch[k] as f64).sum();
            let direct = (conv - mean[o] as f64) / (var[o] as f64 + eps).sqrt() * gamma[o] as f64
                + beta[o] as f64;
            let folded: f64 = (0..2)
                .map(|k| f.weight[o * 2 + k] as f64 * patch[k] as f64)
                .sum::<f64>()
                + f.bias[o] as f64;
            assert!(
                (direct - folded).abs() < 1e-5,
                "channel {o}: {direct} vs {folded}"
            );
        }
    }

    fn synthetic_weights() -> StateDict {
        // Identity-ish BN (gamma 1, var 1-eps) so values stay finite; content is irrelevant.
        lite0_expected_tensors()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let fill = if name.ends_with("running_var") {
                    1.0 - BN_EPS as f32
                } else {
                    0.01
                };
                (
                    name,
                    Tensor {
                        shape,
                        data: vec![fill; n],
                    },
                )
            })
            .collect()
    }

    #[test]
    fn emits_graph_with_taps() {
        let weights = synthetic_weights();
        check_lite0_weights(&weights).expect("synthetic weights are complete");
        for (os, deep) in [(OutputStride::S32, 32), (OutputStride::S16, 16)] {
            let mut g = GraphBuilder::new("bb");
            declare_image_input(&mut g, "image").expect("input");
            let taps = emit_backbone(&mut g, &weights, "image", os).expect("emits");
            assert_eq!((taps.stride8.channels, taps.stride8.stride), (40, 8));
            assert_eq!((taps.stride16.channels, taps.stride16.stride), (112, 16));
            assert_eq!(
                (taps.last_block.channels, taps.last_block.stride),
                (320, deep)
            );
            assert_eq!((taps.head.channels, taps.head.stride), (1280, deep));
            let logits = emit_classifier_map(&mut g, &weights, &taps.head.name).expect("fc");
            g.add_output(&logits, DataType::Float, feature_dims(NUM_CLASSES))
                .expect("out");
            // 1 stem + 15 expand + 16 dw + 16 project + 1 head + 1 fc convs.
            let bytes = g.to_bytes().expect("encodes");
            let model = onnx_rs::parse(&bytes).expect("parses");
            let graph = model.graph.expect("graph");
            let convs: Vec<_> = graph
                .node
                .iter()
                .filter(|n| n.op_type == onnx_rs::ast::OpType::Conv)
                .collect();
            assert_eq!(convs.len(), 50);
            let adds = graph
                .node
                .iter()
                .filter(|n| n.op_type == onnx_rs::ast::OpType::Add)
                .count();
            assert_eq!(adds, 9);
            let dil = |name: &str| {
                let n = convs.iter().find(|n| n.output[0] == name).expect("conv");
                let a = |k: &str| {
                    n.attribute
                        .iter()
                        .find(|a| a.name == k)
                        .expect("attr")
                        .ints
                        .clone()
                };
                (a("strides")[0], a("dilations")[0])
            };
            let s11 = if os == OutputStride::S16 {
                (1, 1)
            } else {
                (2, 1)
            };
            assert_eq!(dil("_blocks.11._depthwise_conv"), s11);
            let d12 = if os == OutputStride::S16 {
                (1, 2)
            } else {
                (1, 1)
            };
            assert_eq!(dil("_blocks.12._depthwise_conv"), d12);
            assert_eq!(dil("_blocks.15._depthwise_conv"), d12);
            assert_eq!(dil("_blocks.5._depthwise_conv"), (2, 1));
        }
    }

    #[test]
    fn shape_errors_name_the_tensor() {
        let mut weights = synthetic_weights();
        weights.insert(
            "_blocks.3._depthwise_conv.weight".into(),
            Tensor {
                shape: vec![144, 1, 3, 3],
                data: vec![0.0; 144 * 9],
            },
        );
        let mut g = GraphBuilder::new("bb");
        declare_image_input(&mut g, "image").expect("input");
        let err = emit_backbone(&mut g, &weights, "image", OutputStride::S32).expect_err("fails");
        let msg = err.to_string();
        assert!(msg.contains("_blocks.3._depthwise_conv.weight"), "{msg}");
        assert!(
            msg.contains("[144, 1, 5, 5]") && msg.contains("[144, 1, 3, 3]"),
            "{msg}"
        );

        let mut weights = synthetic_weights();
        weights.remove("_bn1.running_mean");
        assert!(matches!(
            check_lite0_weights(&weights),
            Err(EffNetError::MissingTensor(n)) if n == "_bn1.running_mean"
        ));
        let mut weights = synthetic_weights();
        weights.insert(
            "_blocks.1._se_reduce.weight".into(),
            Tensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        assert!(matches!(
            check_lite0_weights(&weights),
            Err(EffNetError::UnexpectedTensor(_))
        ));
    }

    /// Real checkpoint: set OVSEG_TEST_PTH to efficientnet-lite0-57934424.pth.
    #[test]
    fn real_weights_match_spec() {
        let Some(path) = std::env::var_os("OVSEG_TEST_PTH") else {
            eprintln!("skipping real_weights_match_spec: OVSEG_TEST_PTH is not set");
            return;
        };
        let weights = load_state_dict(std::path::Path::new(&path)).expect("loads .pth");
        check_lite0_weights(&weights).expect("matches LITE0_BLOCKS");
        assert_eq!(
            weights.len(),
            296 - 49,
            "296 entries minus 49 num_batches_tracked"
        );
        let params: usize = weights.values().map(Tensor::numel).sum();
        // 4.65M weights + BN stats.
        assert!((4_600_000..4_700_000).contains(&params), "{params}");
        // Plausible BN statistics: positive variances, finite everything.
        assert!(
            weights
                .values()
                .all(|t| t.data.iter().all(|v| v.is_finite()))
        );
        let mut g = GraphBuilder::new("bb");
        declare_image_input(&mut g, "image").expect("input");
        let taps = emit_backbone(&mut g, &weights, "image", OutputStride::S32).expect("emits");
        emit_classifier_map(&mut g, &weights, &taps.head.name).expect("fc");
    }
}
