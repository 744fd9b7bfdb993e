//! The model in burn (feature `burn`): one definition for the trainer, which tunes it, and for
//! [`encoder::BurnBackend`], which runs the exported image encoder as an [`crate::ImageBackend`]
//! on burn's CPU backend or, with `burn-cuda`, on a CUDA device.
use burn::prelude::Backend;
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, TensorData};

use crate::zoo::effnet::EffNetError;

mod blocks;
pub mod encoder;

pub use blocks::{Blocks, DataFree, TunedConv};

#[derive(Debug, thiserror::Error)]
pub enum BurnError {
    #[error(transparent)]
    Weights(#[from] EffNetError),
    #[error("tune_blocks {count}: between 1 and {max} blocks can be tuned (the first block stays frozen)")]
    TuneBlocks { count: usize, max: usize },
    #[error("weights: no tensor {0:?}")]
    MissingWeight(String),
    #[error("weights: {0}")]
    Shape(String),
    #[error("reading a tensor back from burn: {0}")]
    Readback(String),
}

/// The head's input at both levels: backbone features and data-free embeddings, cells
/// pixel-major, images one after the other.
#[derive(Clone, Debug)]
pub struct Levels<B: Backend> {
    pub coarse_features: Tensor<B, 2>,
    pub coarse_base: Tensor<B, 2>,
    pub fine_features: Tensor<B, 2>,
    pub fine_base: Tensor<B, 2>,
}

/// The trained residual head on cells (`features` pixel-major): `base + W2 relu(W1 f + b1) + b2`,
/// with `w1` as `features x hidden` and `w2` as `hidden x dim`.
pub fn residual_embedding<B: Backend>(
    features: Tensor<B, 2>,
    base: Tensor<B, 2>,
    [w1, w2]: [Tensor<B, 2>; 2],
    [b1, b2]: [Tensor<B, 1>; 2],
) -> Tensor<B, 2> {
    let hidden = relu(features.matmul(w1) + b1.unsqueeze::<2>());
    base + hidden.matmul(w2) + b2.unsqueeze::<2>()
}

/// The depth head on cells (see [`crate::zoo::trained::DepthWeights`]): ln metres per cell
/// (`cells x 1`), with `w1` as `inputs x hidden` and `w2` as `hidden x 1`.
pub fn depth_log<B: Backend>(features: Tensor<B, 2>, embedding: Tensor<B, 2>, [w1, w2]: [Tensor<B, 2>; 2], [b1, b2]: [Tensor<B, 1>; 2]) -> Tensor<B, 2> {
    let norm = (embedding.clone() * embedding.clone()).sum_dim(1).sqrt();
    let input = Tensor::cat(vec![features, embedding / norm], 1);
    relu(input.matmul(w1) + b1.unsqueeze::<2>()).matmul(w2) + b2.unsqueeze::<2>()
}

pub fn tensor2<B: Backend>(data: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

pub fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, BurnError> {
    t.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| BurnError::Readback(format!("{e:?}")))
}
