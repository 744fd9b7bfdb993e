//! ZS3Net's generated unseen features: a generator learns, from the real cells of the seen
//! labels, to turn a label's text embedding (plus noise) into what such a cell looks like to the
//! head (backbone features and data-free embedding), matching the real cells' distribution per
//! label by maximum mean discrepancy (GMMN). The head then also trains on generated cells of
//! the held-out labels, whose names (not pixels) are known, so its classifier is not fitted to
//! the seen labels alone.
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::Backend;
use burn::tensor::Tensor;
use burn::tensor::activation::leaky_relu;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use engine::zoo::trained::FEATURE_CHANNELS;

use crate::model::{tensor2, values};

const NOISE: usize = 32;
const HIDDEN: usize = 256;
const STEPS: usize = 300;
/// Real and generated cells per label per generator step.
const CELLS: usize = 64;
/// Real cells kept per label (a random subset of the pure cells).
const KEEP: usize = 512;
/// Head features are ReLU6 outputs.
const FEATURE_MAX: f32 = 6.0;

#[derive(Module, Debug)]
pub struct Generator<B: Backend> {
    w1: Param<Tensor<B, 2>>,
    b1: Param<Tensor<B, 1>>,
    w2: Param<Tensor<B, 2>>,
    b2: Param<Tensor<B, 1>>,
}

/// Real cells of the seen labels: `FEATURE_CHANNELS` features then `dim` base per row.
pub struct RealCells {
    pub dim: usize,
    /// Per seen label: its cells, row-major.
    pub by_label: Vec<Vec<f32>>,
}

impl RealCells {
    /// Cells whose target is (almost) all one label, from `(features, base, target, weight)`
    /// per image (fine level, pixel-major), at most `KEEP` per label.
    pub fn collect<'a>(images: impl Iterator<Item = (&'a [f32], &'a [f32], &'a [f32], &'a [f32])>, labels: usize, dim: usize, seed: u64) -> Self {
        let mut by_label: Vec<Vec<Vec<f32>>> = vec![Vec::new(); labels];
        for (features, base, target, weight) in images {
            let cells = weight.len();
            for c in 0..cells {
                let t = &target[c * labels..][..labels];
                let Some(k) = t.iter().position(|&p| p >= 0.99) else { continue };
                if weight[c] < 0.99 {
                    continue;
                }
                let mut row = features[c * FEATURE_CHANNELS..][..FEATURE_CHANNELS].to_vec();
                row.extend_from_slice(&base[c * dim..][..dim]);
                by_label[k].push(row);
            }
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let by_label = by_label
            .into_iter()
            .map(|rows| rows.choose_multiple(&mut rng, KEEP).flatten().copied().collect())
            .collect();
        RealCells { dim, by_label }
    }

    fn width(&self) -> usize {
        FEATURE_CHANNELS + self.dim
    }
}

impl<B: Backend> Generator<B> {
    fn init(text_dim: usize, out: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut uniform = |fan_in: usize, n: usize| -> Vec<f32> {
            let bound = (6.0 / fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let input = text_dim + NOISE;
        Generator {
            w1: Param::from_tensor(tensor2(uniform(input, input * HIDDEN), [input, HIDDEN], device)),
            b1: Param::from_tensor(Tensor::zeros([HIDDEN], device)),
            w2: Param::from_tensor(tensor2(uniform(HIDDEN, HIDDEN * out).iter().map(|v| v * 0.1).collect(), [HIDDEN, out], device)),
            b2: Param::from_tensor(Tensor::zeros([out], device)),
        }
    }

    /// Cells for the text embeddings `text` (`n x dim`): features clamped to the ReLU6 range,
    /// then the data-free embedding.
    fn forward(&self, text: Tensor<B, 2>, noise: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = leaky_relu(Tensor::cat(vec![text, noise], 1).matmul(self.w1.val()) + self.b1.val().unsqueeze::<2>(), 0.2);
        let out = h.matmul(self.w2.val()) + self.b2.val().unsqueeze::<2>();
        let [n, width] = out.dims();
        let features = out.clone().slice([0..n, 0..FEATURE_CHANNELS]).clamp(0.0, FEATURE_MAX);
        let base = out.slice([0..n, FEATURE_CHANNELS..width]);
        Tensor::cat(vec![features, base], 1)
    }
}

/// Squared-MMD between the rows of `x` and `y` under a sum of Gaussian kernels.
fn mmd<B: Backend>(x: Tensor<B, 2>, y: Tensor<B, 2>, bandwidths: &[f32]) -> Tensor<B, 1> {
    let sq = |a: Tensor<B, 2>, b: Tensor<B, 2>| {
        let an = (a.clone() * a.clone()).sum_dim(1);
        let bn = (b.clone() * b.clone()).sum_dim(1);
        (an + bn.transpose() - a.matmul(b.transpose()).mul_scalar(2.0)).clamp_min(0.0)
    };
    let kernel = |d: Tensor<B, 2>| bandwidths.iter().map(|s| d.clone().div_scalar(-2.0 * s).exp()).reduce(|a, b| a + b).expect("bandwidths");
    kernel(sq(x.clone(), x.clone())).mean() + kernel(sq(y.clone(), y.clone())).mean() - kernel(sq(x, y)).mean().mul_scalar(2.0)
}

fn noise<B: Backend>(rng: &mut StdRng, n: usize, device: &B::Device) -> Tensor<B, 2> {
    tensor2((0..n * NOISE).map(|_| rng.random_range(-1.0f32..1.0)).collect(), [n, NOISE], device)
}

/// The generator is small: it trains on the CPU whatever device the head trains on.
type GeneratorBackend = burn::backend::Autodiff<burn::backend::Flex>;

/// A generator trained on `real`; `text` holds each seen label's embedding (`labels x dim`).
pub struct TrainedGenerator {
    generator: Generator<GeneratorBackend>,
    dim: usize,
    rng: StdRng,
    /// MMD per seen label at its first and its last generator step (NaN for labels with too
    /// few cells), for the report.
    pub mmd: [Vec<f32>; 2],
}

pub fn train_generator(real: &RealCells, text: &[f32], seed: u64) -> anyhow::Result<TrainedGenerator> {
    let device = Default::default();
    let (dim, width) = (real.dim, real.width());
    let mut generator = Generator::<GeneratorBackend>::init(dim, width, seed, &device);
    let mut optimizer = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x253);
    let usable: Vec<usize> = (0..real.by_label.len()).filter(|&k| real.by_label[k].len() >= 8 * width).collect();
    if usable.is_empty() {
        anyhow::bail!("zs3: no seen label has 8 pure cells to learn from");
    }
    // Kernel widths around the real cells' median squared distance.
    let sample = &real.by_label[usable[0]];
    let rows = sample.len() / width;
    let pick = |i: usize| &sample[(i % rows) * width..][..width];
    let mut distances: Vec<f32> = (0..64).map(|i| pick(i).iter().zip(pick(i * 7 + 3)).map(|(a, b)| (a - b) * (a - b)).sum()).collect();
    distances.sort_by(f32::total_cmp);
    let median = distances[distances.len() / 2].max(1e-3);
    let bandwidths = [median / 4.0, median, median * 4.0];
    let mut mmd_at = [vec![f32::NAN; real.by_label.len()], vec![f32::NAN; real.by_label.len()]];
    for step in 0..STEPS {
        let k = usable[step % usable.len()];
        let cells = &real.by_label[k];
        let rows = cells.len() / width;
        let chosen: Vec<f32> = (0..CELLS).flat_map(|_| cells[rng.random_range(0..rows) * width..][..width].iter().copied()).collect();
        let real_batch = tensor2::<GeneratorBackend>(chosen, [CELLS, width], &device);
        let text_rows = tensor2::<GeneratorBackend>(text[k * dim..][..dim].repeat(CELLS), [CELLS, dim], &device);
        let fake = generator.forward(text_rows, noise(&mut rng, CELLS, &device));
        let loss = mmd(fake, real_batch, &bandwidths);
        let value = values(loss.clone())?[0];
        if mmd_at[0][k].is_nan() {
            mmd_at[0][k] = value;
        }
        mmd_at[1][k] = value;
        let grads = GradientsParams::from_grads(loss.backward(), &generator);
        generator = optimizer.step(1e-3, generator, grads);
    }
    Ok(TrainedGenerator { generator, dim, rng, mmd: mmd_at })
}

impl TrainedGenerator {
    /// `per_label` generated cells for each embedding in `text` (`labels x dim`), as
    /// (features, base, label index in `text`), detached from the generator.
    pub fn generate(&mut self, text: &[f32], per_label: usize) -> (Tensor<GeneratorBackend, 2>, Tensor<GeneratorBackend, 2>, Vec<usize>) {
        let device = Default::default();
        let labels = text.len() / self.dim;
        let rows: Vec<f32> = (0..labels).flat_map(|k| text[k * self.dim..][..self.dim].repeat(per_label)).collect();
        let n = labels * per_label;
        let cells = self.generator.forward(tensor2(rows, [n, self.dim], &device), noise(&mut self.rng, n, &device)).detach();
        let width = cells.dims()[1];
        let features = cells.clone().slice([0..n, 0..FEATURE_CHANNELS]);
        let base = cells.slice([0..n, FEATURE_CHANNELS..width]);
        (features, base, (0..labels).flat_map(|k| std::iter::repeat_n(k, per_label)).collect())
    }
}
