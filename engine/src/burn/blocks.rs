//! EfficientNet-Lite0 in burn, whole or its last blocks (which the trainer tunes with the head).
//! The convs are the ones [`crate::zoo::effnet`] emits into the ONNX graph (same specs,
//! BatchNorm folded, same "SAME" padding and output-stride-16 dilations), followed by the
//! data-free part: the ImageNet classifier map, its softmax projected onto the
//! class-description embeddings, and the 3x3 stride-2 pooling of the coarse level. So what burn
//! computes is what the exported model computes.
use burn::module::{Module, Param};
use burn::prelude::Backend;
use burn::tensor::module::{avg_pool2d, conv2d};
use burn::tensor::ops::{PadMode, PaddedConvOptions};
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};

use super::{BurnError, Levels, tensor2, values};
use crate::zoo::effnet::{self, ConvBnSpec, FoldedConv, LITE0_BLOCKS, OutputStride};
use crate::zoo::pth::StateDict;

/// One conv with its BatchNorm folded in, trainable; its stride, dilation, groups and
/// activation come from its [`ConvBnSpec`], the one source of the layout.
#[derive(Module, Debug)]
pub struct TunedConv<B: Backend> {
    weight: Param<Tensor<B, 4>>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> TunedConv<B> {
    fn new(spec: &ConvBnSpec, conv: FoldedConv, device: &B::Device) -> Self {
        TunedConv {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(conv.weight, spec.shape), device)),
            bias: Param::from_tensor(Tensor::from_data(TensorData::new(conv.bias, [spec.shape[0]]), device)),
        }
    }

    fn forward(&self, x: Tensor<B, 4>, spec: &ConvBnSpec) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let ((top, bottom), (left, right)) = (spec.same_padding(h), spec.same_padding(w));
        let options = PaddedConvOptions::asymmetric([spec.stride; 2], [top, left], [bottom, right], [spec.dilation; 2], spec.groups);
        let y = conv2d(x, self.weight.val(), Some(self.bias.val()), options);
        if spec.relu6 { y.clamp(0.0, 6.0) } else { y }
    }

    fn folded(&self) -> Result<FoldedConv, BurnError> {
        Ok(FoldedConv { weight: values(self.weight.val())?, bias: values(self.bias.val())? })
    }
}

/// Blocks `first_block..` of EfficientNet-Lite0 (with the stem when that is block 0) and its
/// head conv, at output stride 16 (as in the default model).
#[derive(Module, Debug)]
pub struct Blocks<B: Backend> {
    first_block: usize,
    stem: Option<TunedConv<B>>,
    /// The convs of each block, in order.
    blocks: Vec<Vec<TunedConv<B>>>,
    head: TunedConv<B>,
}

impl<B: Backend> Blocks<B> {
    /// The last `count` blocks (1..=15) and the head conv, from state-dict weights.
    pub fn tail(weights: &StateDict, count: usize, device: &B::Device) -> Result<Self, BurnError> {
        let max = LITE0_BLOCKS.len() - 1;
        if !(1..=max).contains(&count) {
            return Err(BurnError::TuneBlocks { count, max });
        }
        Self::build(LITE0_BLOCKS.len() - count, |spec| Ok(effnet::folded(weights, spec)?), device)
    }

    /// The whole network, stem to head conv, from already folded convs (`source` gives each
    /// spec's weight and bias).
    pub fn whole(source: impl Fn(&ConvBnSpec) -> Result<FoldedConv, BurnError>, device: &B::Device) -> Result<Self, BurnError> {
        Self::build(0, source, device)
    }

    fn build(first_block: usize, source: impl Fn(&ConvBnSpec) -> Result<FoldedConv, BurnError>, device: &B::Device) -> Result<Self, BurnError> {
        let conv = |spec: &ConvBnSpec| Ok::<_, BurnError>(TunedConv::new(spec, source(spec)?, device));
        let stem = if first_block == 0 { Some(conv(&effnet::stem_conv())?) } else { None };
        let blocks = block_specs(first_block).map(|specs| specs.iter().map(conv).collect()).collect::<Result<_, _>>()?;
        Ok(Blocks { first_block, stem, blocks, head: conv(&effnet::head_conv())? })
    }

    /// The block whose output feeds the first of these blocks (the trainer's feature extractor
    /// taps it); none when they start from the image.
    pub fn input_block(&self) -> Option<usize> {
        self.first_block.checked_sub(1)
    }

    /// The backbone's head features `[n, 1280, h, w]` from the normalised image (whole network)
    /// or from the tapped block's output.
    pub fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 4> {
        if let Some(stem) = &self.stem {
            x = stem.forward(x, &effnet::stem_conv());
        }
        for (i, (convs, specs)) in self.blocks.iter().zip(block_specs(self.first_block)).enumerate() {
            let input = x.clone();
            for (conv, spec) in convs.iter().zip(&specs) {
                x = conv.forward(x, spec);
            }
            if LITE0_BLOCKS[self.first_block + i].has_residual() {
                x = x + input;
            }
        }
        self.head.forward(x, &effnet::head_conv())
    }

    /// The blocks' convs (not the stem) as state-dict tensors: what export writes over the
    /// default weights after tuning.
    pub fn to_state_dict(&self) -> Result<StateDict, BurnError> {
        let mut out = StateDict::new();
        for (convs, specs) in self.blocks.iter().zip(block_specs(self.first_block)) {
            for (conv, spec) in convs.iter().zip(&specs) {
                effnet::set_folded(&mut out, spec, &conv.folded()?)?;
            }
        }
        effnet::set_folded(&mut out, &effnet::head_conv(), &self.head.folded()?)?;
        Ok(out)
    }
}

/// The conv specs of each block from `first_block` on, placed as in the default model.
fn block_specs(first_block: usize) -> impl Iterator<Item = Vec<ConvBnSpec>> {
    let placements = effnet::block_placements(OutputStride::S16);
    (first_block..LITE0_BLOCKS.len()).map(move |i| effnet::block_convs(i, placements[i]))
}

/// The frozen data-free part after the backbone: classifier map, softmax, projection onto the
/// class-description embeddings.
pub struct DataFree<B: Backend> {
    /// `1280 x 1000`
    classifier: Tensor<B, 2>,
    classifier_bias: Tensor<B, 2>,
    /// `1000 x dim`
    projection: Tensor<B, 2>,
}

impl<B: Backend> DataFree<B> {
    /// From the state dict's classifier (`_fc`) and the class-description embeddings
    /// (`1000 x dim`, row-major).
    pub fn new(weights: &StateDict, class_text: &[f32], device: &B::Device) -> Result<Self, BurnError> {
        let tensor = |name: &str| weights.get(name).map(|t| t.data.as_slice()).ok_or_else(|| BurnError::MissingWeight(name.to_string()));
        Self::from_parts(tensor("_fc.weight")?, tensor("_fc.bias")?, class_text, device)
    }

    /// `classifier` is `1000 x 1280` row-major (also the layout of the ONNX 1x1 conv kernel).
    pub fn from_parts(classifier: &[f32], bias: &[f32], class_text: &[f32], device: &B::Device) -> Result<Self, BurnError> {
        let (classes, channels) = (effnet::NUM_CLASSES, effnet::HEAD_CHANNELS);
        let dim = class_text.len() / classes;
        if classifier.len() != classes * channels || bias.len() != classes || dim == 0 || class_text.len() != classes * dim {
            return Err(BurnError::Shape(format!(
                "classifier {} values (expected {}), bias {} (expected {classes}), class text {} (expected {classes} x dim)",
                classifier.len(),
                classes * channels,
                bias.len(),
                class_text.len()
            )));
        }
        Ok(DataFree {
            classifier: tensor2(crate::backend::transpose(classifier, classes, channels), [channels, classes], device),
            classifier_bias: tensor2(bias.to_vec(), [1, classes], device),
            projection: tensor2(class_text.to_vec(), [classes, dim], device),
        })
    }

    /// Both levels' features and data-free embeddings, cells pixel-major, from the head
    /// features at the fine stride.
    pub fn levels(&self, features: Tensor<B, 4>) -> Levels<B> {
        let coarse = same_avg_pool_3x3_s2(features.clone());
        let (coarse_features, fine_features) = (pixel_major(coarse), pixel_major(features));
        Levels {
            coarse_base: self.embed(coarse_features.clone()),
            fine_base: self.embed(fine_features.clone()),
            coarse_features,
            fine_features,
        }
    }

    /// The classifier is affine and the pooling averages, so pooling the features before it
    /// equals the model's pooling of the logits (up to rounding).
    fn embed(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = features.matmul(self.classifier.clone()) + self.classifier_bias.clone();
        softmax(logits, 1).matmul(self.projection.clone())
    }
}

/// `[n, c, h, w]` -> `[n h w, c]`
fn pixel_major<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, h, w] = x.dims();
    x.permute([0, 2, 3, 1]).reshape([n * h * w, c])
}

/// The coarse level's pooling: 3x3, stride 2, "SAME_UPPER" padding that is not counted.
/// burn pools with symmetric padding only, so the input is padded explicitly and each window
/// divided by the number of real pixels in it.
fn same_avg_pool_3x3_s2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let pad = |size: usize| effnet::same_padding(size, 3, 2, 1);
    let ((top, bottom), (left, right)) = (pad(h), pad(w));
    let pool = |t: Tensor<B, 4>| avg_pool2d(t.pad((left, right, top, bottom), PadMode::Constant(0.0)), [3, 3], [2, 2], [0, 0], true, false);
    let counted = pool(Tensor::<B, 4>::ones([1, 1, h, w], &x.device()));
    pool(x) / counted
}
