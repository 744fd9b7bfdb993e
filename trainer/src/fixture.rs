//! A head-training fixture: what a training run prepared before its first step (the frozen
//! backbone's features, the cell targets and depth of every augmented image, the label set and
//! the anchor concepts), written by `train --write-fixture`. `ovseg-train bench` trains the heads
//! from it on the CPU and on CUDA, same seed, same batches, and compares: where the model files
//! and ONNX Runtime are not at hand (a GPU machine with no network), this file and the binary
//! are all it needs.
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use engine::LabelSet;
use engine::costmap::Grid;
use engine::zoo::trained::{DepthWeights, HeadWeights};

use crate::checkpoint::{f32_bytes, f32_values};
use crate::features::{ImageFeatures, LevelFeatures};
use crate::model::{DepthHead, Head, values};
use crate::train::{BatchOrder, Objective, Prepared, TrainConfig, effective_batch, make_batch, new_depth_head};

/// Everything but the tensors.
#[derive(Serialize, Deserialize)]
struct Meta {
    config: TrainConfig,
    labels: Vec<String>,
    dim: usize,
    teacher_scales: [f32; 2],
    /// (stride, offset, width, height) of the coarse and fine levels.
    grids: [(u32, f32, usize, usize); 2],
    train_images: usize,
}

pub struct Fixture {
    pub config: TrainConfig,
    pub labels: LabelSet,
    /// The anchor concepts (`n x dim`) of the distillation.
    pub anchors: Vec<f32>,
    pub teacher_scales: [f32; 2],
    pub(crate) train: Vec<Prepared>,
}

pub(crate) const META_KEY: &str = "ovseg_fixture";

fn grid_tuple(g: Grid) -> (u32, f32, usize, usize) {
    (g.stride, g.offset, g.width, g.height)
}

/// Writes the pools (every image with the same grids, as training requires) and the labels.
pub(crate) fn write(path: &Path, config: &TrainConfig, labels: &LabelSet, anchors: &[f32], teacher_scales: [f32; 2], train: &[Prepared]) -> Result<()> {
    let first = train.first().context("the fixture needs at least one training image")?;
    if train.iter().any(|p| p.features.tap.is_some()) {
        bail!("--write-fixture: tuned backbone blocks (tune_blocks) are not part of a fixture; use tune_blocks 0");
    }
    let (k, n) = (labels.len(), train.len());
    let (nc, nf) = (first.features.coarse.cells(), first.features.fine.cells());
    let concat = |f: &dyn Fn(&Prepared) -> Vec<f32>| -> Vec<u8> { f32_bytes(&train.iter().flat_map(f).collect::<Vec<f32>>()) };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let channels = first.features.fine.features.len() / nf;
    let fields: Vec<(&str, Vec<usize>, Vec<u8>)> = vec![
        ("coarse_features", vec![n, nc, channels], concat(&|p| p.features.coarse.features.clone())),
        ("coarse_base", vec![n, nc, labels.dim], concat(&|p| p.features.coarse.base.clone())),
        ("fine_features", vec![n, nf, channels], concat(&|p| p.features.fine.features.clone())),
        ("fine_base", vec![n, nf, labels.dim], concat(&|p| p.features.fine.base.clone())),
        ("target", vec![n, nf, k], concat(&|p| p.target.clone())),
        ("weight", vec![n, nf], concat(&|p| p.weight.clone())),
        ("coarse", vec![n], concat(&|p| vec![flag(p.coarse)])),
        ("tagged", vec![n], concat(&|p| vec![flag(p.tags.is_some())])),
        ("tags", vec![n, k], concat(&|p| p.tags.clone().unwrap_or_else(|| vec![0.0; k]))),
        ("has_depth", vec![n], concat(&|p| vec![flag(p.depth.is_some())])),
        ("depth_target", vec![n, nf], concat(&|p| p.depth.as_ref().map_or(vec![0.0; nf], |d| d.0.clone()))),
        ("depth_weight", vec![n, nf], concat(&|p| p.depth.as_ref().map_or(vec![0.0; nf], |d| d.1.clone()))),
        ("label_embeddings", vec![k, labels.dim], f32_bytes(&labels.embeddings)),
        ("label_gain", vec![k], f32_bytes(&labels.gain)),
        ("label_bias", vec![k], f32_bytes(&labels.bias)),
        ("anchors", vec![anchors.len() / labels.dim, labels.dim], f32_bytes(anchors)),
    ];
    let meta = Meta {
        config: config.clone(),
        labels: labels.names.clone(),
        dim: labels.dim,
        teacher_scales,
        grids: [grid_tuple(first.features.coarse.grid), grid_tuple(first.features.fine.grid)],
        train_images: n,
    };
    let views = fields
        .iter()
        .map(|(name, shape, data)| Ok((*name, TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let bytes = safetensors::serialize(views, Some(HashMap::from([(META_KEY.to_string(), serde_json::to_string(&meta)?)])))?;
    engine::labels::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))
}

pub fn read(path: &Path) -> Result<Fixture> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = |what: String| anyhow::anyhow!("{}: {what} (not a fixture written by `ovseg-train train --write-fixture`)", path.display());
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let meta: Meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .map_err(|e| bad(format!("unreadable metadata: {e}")))?
        .ok_or_else(|| bad("no fixture metadata".into()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let tensor = |name: &str, len: usize| -> Result<Vec<f32>> {
        let t = file.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
        let data = f32_values(t.data());
        if t.dtype() != Dtype::F32 || data.len() != len {
            return Err(bad(format!("{name} holds {} values, expected {len}", data.len())));
        }
        Ok(data)
    };
    let (k, d, n) = (meta.labels.len(), meta.dim, meta.train_images);
    let grid = |(stride, offset, width, height): (u32, f32, usize, usize)| Grid { stride, offset, width, height };
    let (coarse_grid, fine_grid) = (grid(meta.grids[0]), grid(meta.grids[1]));
    let (nc, nf) = (coarse_grid.width * coarse_grid.height, fine_grid.width * fine_grid.height);
    let channels = file.tensor("fine_features").map_err(|e| bad(e.to_string()))?.shape().last().copied().unwrap_or(0);
    let per_image = |name: &str, len: usize| -> Result<Vec<Vec<f32>>> { Ok(tensor(name, n * len)?.chunks(len.max(1)).map(<[f32]>::to_vec).collect()) };
    let (cf, cb) = (per_image("coarse_features", nc * channels)?, per_image("coarse_base", nc * d)?);
    let (ff, fb) = (per_image("fine_features", nf * channels)?, per_image("fine_base", nf * d)?);
    let (target, weight) = (per_image("target", nf * k)?, per_image("weight", nf)?);
    let (coarse, tagged, tags) = (tensor("coarse", n)?, tensor("tagged", n)?, per_image("tags", k)?);
    let (has_depth, depth_target, depth_weight) = (tensor("has_depth", n)?, per_image("depth_target", nf)?, per_image("depth_weight", nf)?);
    let train = (0..n)
        .map(|i| Prepared {
            features: ImageFeatures {
                coarse: LevelFeatures { grid: coarse_grid, features: cf[i].clone(), base: cb[i].clone() },
                fine: LevelFeatures { grid: fine_grid, features: ff[i].clone(), base: fb[i].clone() },
                tap: None,
            },
            target: target[i].clone(),
            weight: weight[i].clone(),
            coarse: coarse[i] > 0.5,
            tags: (tagged[i] > 0.5).then(|| tags[i].clone()),
            depth: (has_depth[i] > 0.5).then(|| (depth_target[i].clone(), depth_weight[i].clone())),
            source: i,
        })
        .collect();
    let labels = LabelSet {
        colors: meta.labels.iter().map(|l| engine::colors::label_color(l)).collect(),
        names: meta.labels,
        embeddings: tensor("label_embeddings", k * d)?,
        dim: d,
        gain: tensor("label_gain", k)?,
        bias: tensor("label_bias", k)?,
    };
    let anchors_len = file.tensor("anchors").map_err(|e| bad(e.to_string()))?.shape().iter().product();
    Ok(Fixture { config: meta.config, labels, anchors: tensor("anchors", anchors_len)?, teacher_scales: meta.teacher_scales, train })
}

/// One device's run: the segmentation and depth losses at every step, and its throughput.
#[derive(Debug, Clone, Serialize)]
pub struct HeadRun {
    pub device: String,
    pub loss: Vec<f64>,
    pub depth_loss: Vec<f64>,
    pub images_per_second: f64,
    /// The trained heads in the engine's layout, and the two scales.
    #[serde(skip)]
    pub weights: (HeadWeights, [f32; 2], Option<DepthWeights>),
}

/// Trains the heads from the fixture for `steps` steps as `train` would (frozen backbone, no ZS3):
/// the same losses, the same Adam steps, the same batches.
pub fn run<B: AutodiffBackend>(fixture: &Fixture, steps: usize, device: B::Device, name: &str) -> Result<HeadRun> {
    let c = &fixture.config;
    let (dim, k) = (fixture.labels.dim, fixture.labels.len());
    let first = fixture.train.first().context("the fixture holds no training images")?;
    let Objective { labels, interp, weights } = Objective::<B>::new(c, &fixture.labels, &fixture.anchors, fixture.teacher_scales, &first.features, &device);
    let mut head = Head::<B>::init(c.hidden, dim, fixture.teacher_scales, c.seed, &device);
    let mut optimizer = AdamConfig::new().init::<B, Head<B>>();
    let mut depth_head = new_depth_head::<B>(c, dim, &fixture.train, &device);
    let mut depth_optimizer = AdamConfig::new().init::<B, DepthHead<B>>();
    let batch_size = effective_batch(c.batch, fixture.train.len());
    let mut order = BatchOrder::new(c.seed, fixture.train.len(), batch_size);
    let (mut loss_curve, mut depth_curve) = (Vec::with_capacity(steps), Vec::new());
    let started = Instant::now();
    for step in 1..=steps {
        let items: Vec<&Prepared> = order.at(step).into_iter().map(|i| &fixture.train[i]).collect();
        let batch = make_batch::<B>(&items, k, &device);
        let fine_features = batch.frozen.fine_features.clone();
        let (mut loss, _, embedding) = head.loss(&batch, batch.frozen.clone(), &labels, &interp, &weights);
        loss_curve.push(f64::from(values(loss.clone())?[0]));
        if let Some(d) = &depth_head {
            let depth_loss = d.loss(fine_features, embedding, &batch).0;
            depth_curve.push(f64::from(values(depth_loss.clone())?[0]));
            loss = loss + depth_loss.mul_scalar(c.depth_weight);
        }
        let mut grads = loss.backward();
        if let Some(d) = depth_head.take() {
            let depth_grads = GradientsParams::from_module(&mut grads, &d);
            depth_head = Some(depth_optimizer.step(c.learning_rate, d, depth_grads));
        }
        let grads = GradientsParams::from_grads(grads, &head);
        head = optimizer.step(c.learning_rate, head, grads);
    }
    let seconds = started.elapsed().as_secs_f64();
    let (head_weights, scales) = head.to_weights()?;
    let depth_weights = depth_head.map(|d| d.to_weights()).transpose()?;
    Ok(HeadRun {
        device: name.to_string(),
        loss: loss_curve,
        depth_loss: depth_curve,
        images_per_second: (steps * batch_size) as f64 / seconds.max(1e-9),
        weights: (head_weights, scales, depth_weights),
    })
}

/// Largest relative difference between two loss curves.
pub fn curve_difference(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(1e-12)).fold(0.0, f64::max)
}

/// The heads trained from `fixture` on the CPU and, where this build has the feature `cuda`
/// and a driver answers, on CUDA; the curves' largest relative difference and the throughput
/// ratio.
pub fn compare(fixture: &Fixture, steps: usize) -> Result<serde_json::Value> {
    use burn::backend::{Autodiff, Flex};
    let cpu = run::<Autodiff<Flex>>(fixture, steps, Default::default(), "cpu")?;
    let cuda = cuda_run(fixture, steps)?;
    let (cuda, cuda_missing) = match cuda {
        Ok(run) => (Some(run), None),
        Err(reason) => (None, Some(reason)),
    };
    Ok(serde_json::json!({
        "steps": steps,
        "batch": effective_batch(fixture.config.batch, fixture.train.len()),
        "train_images": fixture.train.len(),
        "loss_max_relative_difference": cuda.as_ref().map(|g| curve_difference(&cpu.loss, &g.loss)),
        "depth_loss_max_relative_difference": cuda.as_ref().map(|g| curve_difference(&cpu.depth_loss, &g.depth_loss)),
        "cuda_over_cpu_images_per_second": cuda.as_ref().map(|g| g.images_per_second / cpu.images_per_second),
        "cuda_unavailable": cuda_missing,
        "cpu": cpu,
        "cuda": cuda,
    }))
}

/// Ok(Err(reason)) where CUDA cannot run here.
#[cfg(feature = "cuda")]
fn cuda_run(fixture: &Fixture, steps: usize) -> Result<std::result::Result<HeadRun, String>> {
    // burn's CUDA runtime panics without a driver, NVRTC or the CUDA headers: ask first.
    if let Err(e) = engine::cuda::burn_cuda_ready() {
        return Ok(Err(e.to_string()));
    }
    Ok(Ok(run::<burn::backend::Autodiff<burn::backend::Cuda>>(fixture, steps, Default::default(), "cuda")?))
}

#[cfg(not(feature = "cuda"))]
fn cuda_run(_: &Fixture, _: usize) -> Result<std::result::Result<HeadRun, String>> {
    Ok(Err("this ovseg-train was built without the feature `cuda`".into()))
}
