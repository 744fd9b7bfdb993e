//! Training checkpoints as safetensors: the head in the engine's layout (what `export` needs),
//! the learned scales, metadata (step, labels, configuration, history) and, for resuming, burn's
//! own records of the module and the optimizer (Adam moments) as byte tensors. A run that tunes
//! the backbone's last blocks also stores them, under their state-dict names.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use engine::zoo::pth::{StateDict, Tensor};
use engine::zoo::trained::{DepthWeights, FEATURE_CHANNELS, HeadWeights};

/// One validation point of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub step: usize,
    /// Smoothed training loss (none at step 0).
    pub train_loss: Option<f64>,
    pub val_loss: f64,
    /// Share of validation cells whose argmax equals the majority label of their window.
    pub val_cell_accuracy: f64,
    /// mIoU over the validation cells (same truth).
    #[serde(default)]
    pub val_cell_miou: f64,
    /// The depth head on the validation cells with depth.
    #[serde(default)]
    pub val_depth: Option<DepthScore>,
}

/// Depth errors over validation cells with depth (each weighted by its share with depth).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DepthScore {
    /// Mean |predicted - true| / true.
    pub abs_rel: f64,
    /// Share of cells within a factor 1.25 of the truth.
    pub delta1: f64,
}

impl DepthScore {
    /// AbsRel and δ < 1.25 of `(predicted ln depth, true ln depth, weight)` cells or pixels.
    pub fn of(cells: &[(f32, f32, f32)]) -> Option<DepthScore> {
        let total: f64 = cells.iter().map(|c| f64::from(c.2)).sum();
        if total <= 0.0 {
            return None;
        }
        let (mut abs_rel, mut within) = (0.0f64, 0.0f64);
        for &(p, t, w) in cells {
            // Clamped so that an absurd prediction is a huge error, not an infinite one.
            let (p, t, w) = (f64::from(p).clamp(-30.0, 30.0), f64::from(t), f64::from(w));
            abs_rel += w * ((p.exp() - t.exp()).abs() / t.exp());
            within += w * f64::from(u8::from((p - t).abs() < 1.25f64.ln()));
        }
        let score = DepthScore { abs_rel: abs_rel / total, delta1: within / total };
        // A diverging head gives NaN, which a checkpoint's JSON cannot hold; the run stops on its
        // loss at the next step anyway.
        (score.abs_rel.is_finite() && score.delta1.is_finite()).then_some(score)
    }
}


/// What a checkpoint holds besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub step: usize,
    pub labels: Vec<String>,
    /// The training configuration, as JSON.
    pub config: String,
    #[serde(default)]
    pub history: Vec<HistoryPoint>,
    /// Smoothed training loss at `step` (none before the first step).
    #[serde(default)]
    pub running_loss: Option<f64>,
}

/// burn's records of the module and the optimizer, serialised (needed to resume exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    pub module: Vec<u8>,
    pub optimizer: Vec<u8>,
    /// The same for the tuned backbone blocks (empty when none are tuned) and the depth head
    /// (empty when there is none).
    pub tail_module: Vec<u8>,
    pub tail_optimizer: Vec<u8>,
    pub depth_module: Vec<u8>,
    pub depth_optimizer: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub weights: HeadWeights,
    /// Per-level scale, coarse first.
    pub scales: [f32; 2],
    pub meta: CheckpointMeta,
    pub state: Option<TrainingState>,
    /// Tuned backbone tensors (state-dict names), replacing the default model's; empty when the
    /// backbone stayed frozen.
    pub backbone: StateDict,
    pub depth: Option<DepthWeights>,
}

pub(crate) const METADATA_KEY: &str = "ovseg";
const MODULE_STATE: &str = "state.module";
const OPTIMIZER_STATE: &str = "state.optimizer";
const TAIL_MODULE_STATE: &str = "state.tail_module";
const TAIL_OPTIMIZER_STATE: &str = "state.tail_optimizer";
const DEPTH_MODULE_STATE: &str = "state.depth_module";
const DEPTH_OPTIMIZER_STATE: &str = "state.depth_optimizer";
const BACKBONE_PREFIX: &str = "backbone.";

/// Little-endian f32 bytes, as safetensors stores them.
pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The f32 values of little-endian safetensors data.
pub(crate) fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Writes the checkpoint to a temporary name, then renames it, so a crash never leaves a
/// half-written file under the real name.
pub fn save_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let Checkpoint { weights, scales, meta, state, backbone, depth } = checkpoint;
    weights.check()?;
    if let Some(d) = depth {
        d.check()?;
    }
    check_scales(scales).with_context(|| path.display().to_string())?;
    let backbone_names: Vec<String> = backbone.keys().map(|name| format!("{BACKBONE_PREFIX}{name}")).collect();
    let mut tensors = vec![
        ("head.w1", Dtype::F32, vec![weights.hidden, FEATURE_CHANNELS], f32_bytes(&weights.w1)),
        ("head.b1", Dtype::F32, vec![weights.hidden], f32_bytes(&weights.b1)),
        ("head.w2", Dtype::F32, vec![weights.dim, weights.hidden], f32_bytes(&weights.w2)),
        ("head.b2", Dtype::F32, vec![weights.dim], f32_bytes(&weights.b2)),
        ("scales", Dtype::F32, vec![2], f32_bytes(scales)),
    ];
    if let Some(d) = depth {
        tensors.push(("depth.w1", Dtype::F32, vec![d.hidden, d.inputs()], f32_bytes(&d.w1)));
        tensors.push(("depth.b1", Dtype::F32, vec![d.hidden], f32_bytes(&d.b1)));
        tensors.push(("depth.w2", Dtype::F32, vec![1, d.hidden], f32_bytes(&d.w2)));
        tensors.push(("depth.b2", Dtype::F32, vec![1], f32_bytes(&[d.b2])));
    }
    if let Some(state) = state {
        tensors.push((MODULE_STATE, Dtype::U8, vec![state.module.len()], state.module.clone()));
        tensors.push((OPTIMIZER_STATE, Dtype::U8, vec![state.optimizer.len()], state.optimizer.clone()));
        if !state.tail_module.is_empty() {
            tensors.push((TAIL_MODULE_STATE, Dtype::U8, vec![state.tail_module.len()], state.tail_module.clone()));
            tensors.push((TAIL_OPTIMIZER_STATE, Dtype::U8, vec![state.tail_optimizer.len()], state.tail_optimizer.clone()));
        }
        if !state.depth_module.is_empty() {
            tensors.push((DEPTH_MODULE_STATE, Dtype::U8, vec![state.depth_module.len()], state.depth_module.clone()));
            tensors.push((DEPTH_OPTIMIZER_STATE, Dtype::U8, vec![state.depth_optimizer.len()], state.depth_optimizer.clone()));
        }
    }
    for (name, tensor) in backbone_names.iter().zip(backbone.values()) {
        if let Some(index) = tensor.data.iter().position(|x| !x.is_finite()) {
            bail!("{name}: holds {} at index {index}; every weight must be finite", tensor.data[index]);
        }
        tensors.push((name.as_str(), Dtype::F32, tensor.shape.clone(), f32_bytes(&tensor.data)));
    }
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| Ok((*name, TensorView::new(*dtype, shape.clone(), data)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([(METADATA_KEY.to_string(), serde_json::to_string(meta)?)]);
    let data = safetensors::serialize(views, Some(metadata))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&data).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let meta: CheckpointMeta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .map(|s| serde_json::from_str(s))
        .transpose()
        .with_context(|| format!("{}: unreadable checkpoint metadata", path.display()))?
        .with_context(|| format!("{}: no ovseg metadata (not a checkpoint of this trainer)", path.display()))?;
    let file = SafeTensors::deserialize(&data).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let raw = |name: &str, dtype: Dtype| -> Result<(Vec<usize>, &[u8])> {
        let t = file.tensor(name).with_context(|| format!("{}: tensor {name} missing", path.display()))?;
        if t.dtype() != dtype {
            bail!("{}: tensor {name} is {:?}, expected {dtype:?}", path.display(), t.dtype());
        }
        Ok((t.shape().to_vec(), t.data()))
    };
    let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, data) = raw(name, Dtype::F32)?;
        Ok((shape, f32_values(data)))
    };
    let (w1_shape, w1) = read("head.w1")?;
    let (w2_shape, w2) = read("head.w2")?;
    let (_, scales) = read("scales")?;
    let (Some(&hidden), Some(&dim)) = (w1_shape.first(), w2_shape.first()) else {
        bail!("{}: head.w1 / head.w2 have no shape", path.display());
    };
    let weights = HeadWeights { hidden, dim, w1, b1: read("head.b1")?.1, w2, b2: read("head.b2")?.1 };
    weights.check().with_context(|| path.display().to_string())?;
    check_scales(&scales).with_context(|| path.display().to_string())?;
    let names: Vec<String> = file.names().into_iter().map(String::from).collect();
    let has = |name: &str| names.iter().any(|n| n == name);
    let optional = |name: &str| -> Result<Vec<u8>> { if has(name) { Ok(raw(name, Dtype::U8)?.1.to_vec()) } else { Ok(Vec::new()) } };
    let state = if has(MODULE_STATE) {
        Some(TrainingState {
            module: raw(MODULE_STATE, Dtype::U8)?.1.to_vec(),
            optimizer: raw(OPTIMIZER_STATE, Dtype::U8)?.1.to_vec(),
            tail_module: optional(TAIL_MODULE_STATE)?,
            tail_optimizer: optional(TAIL_OPTIMIZER_STATE)?,
            depth_module: optional(DEPTH_MODULE_STATE)?,
            depth_optimizer: optional(DEPTH_OPTIMIZER_STATE)?,
        })
    } else {
        None
    };
    let mut backbone = StateDict::new();
    for name in names.iter().filter_map(|n| n.strip_prefix(BACKBONE_PREFIX)) {
        let (shape, data) = read(&format!("{BACKBONE_PREFIX}{name}"))?;
        if let Some(index) = data.iter().position(|x| !x.is_finite()) {
            bail!("{}: backbone tensor {name} holds {} at index {index}", path.display(), data[index]);
        }
        backbone.insert(name.to_string(), Tensor { shape, data });
    }
    let depth = if has("depth.w1") {
        let (w1_shape, w1) = read("depth.w1")?;
        let &[hidden, inputs] = w1_shape.as_slice() else { bail!("{}: depth.w1 is {w1_shape:?}, expected [hidden, inputs]", path.display()) };
        let depth = DepthWeights {
            hidden,
            dim: inputs.saturating_sub(FEATURE_CHANNELS),
            w1,
            b1: read("depth.b1")?.1,
            w2: read("depth.w2")?.1,
            b2: read("depth.b2")?.1.first().copied().unwrap_or(f32::NAN),
        };
        depth.check().with_context(|| path.display().to_string())?;
        Some(depth)
    } else {
        None
    };
    Ok(Checkpoint { weights, scales: [scales[0], scales[1]], meta, state, backbone, depth })
}

fn check_scales(scales: &[f32]) -> Result<()> {
    if scales.len() != 2 || scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("scales {scales:?} must be two positive finite numbers");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(state: Option<TrainingState>) -> Checkpoint {
        let (hidden, dim) = (3, 4);
        let ramp = |n: usize, k: f32| (0..n).map(|i| k * i as f32 - 0.5).collect::<Vec<f32>>();
        Checkpoint {
            weights: HeadWeights {
                hidden,
                dim,
                w1: ramp(hidden * FEATURE_CHANNELS, 1e-3),
                b1: ramp(hidden, 0.1),
                w2: ramp(dim * hidden, 0.01),
                b2: ramp(dim, 0.2),
            },
            scales: [2.5, 7.0],
            meta: CheckpointMeta {
                step: 12,
                labels: vec!["sky".into(), "weed".into()],
                config: "{}".into(),
                history: vec![HistoryPoint {
                    step: 10,
                    train_loss: Some(0.5),
                    val_loss: 0.7,
                    val_cell_accuracy: 0.8,
                    val_cell_miou: 0.6,
                    val_depth: Some(DepthScore { abs_rel: 0.2, delta1: 0.7 }),
                }],
                running_loss: Some(0.45),
            },
            state,
            backbone: StateDict::from([("_conv_head.weight".to_string(), Tensor { shape: vec![2, 1, 1, 1], data: vec![0.25, -1.5] })]),
            depth: Some(DepthWeights { hidden: 2, dim, w1: ramp(2 * (FEATURE_CHANNELS + dim), 1e-4), b1: ramp(2, 0.3), w2: ramp(2, 0.5), b2: 2.5 }),
        }
    }

    #[test]
    fn round_trip_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let tuned = TrainingState {
            module: vec![1, 2, 3],
            optimizer: vec![9; 17],
            tail_module: vec![4; 5],
            tail_optimizer: vec![7; 3],
            depth_module: vec![8; 4],
            depth_optimizer: vec![6; 9],
        };
        let frozen = TrainingState { tail_module: Vec::new(), tail_optimizer: Vec::new(), depth_module: Vec::new(), depth_optimizer: Vec::new(), ..tuned.clone() };
        for (state, depth) in [(None, true), (Some(frozen), false), (Some(tuned), true)] {
            let mut c = sample(state);
            if !depth {
                c.depth = None;
            }
            save_checkpoint(&path, &c).unwrap();
            let back = load_checkpoint(&path).unwrap();
            assert_eq!(back.weights, c.weights);
            assert_eq!((back.scales, back.meta, back.state), (c.scales, c.meta, c.state));
            assert_eq!(back.backbone, c.backbone);
            assert_eq!(back.depth, c.depth);
        }
        assert!(!path.with_extension("safetensors.tmp").exists(), "the temporary file is renamed away");
    }

    #[test]
    fn refuses_bad_files_and_non_finite_weights() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = format!("{:#}", load_checkpoint(&path).unwrap_err());
        assert!(err.contains("not a safetensors file"), "{err}");
        let mut c = sample(None);
        c.weights.b2[1] = f32::NAN;
        let err = format!("{:#}", save_checkpoint(&path, &c).unwrap_err());
        assert!(err.contains("b2") && err.contains("NaN"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a checkpoint", "a failed save leaves the old file alone");
        let mut c = sample(None);
        c.backbone.values_mut().for_each(|t| t.data[1] = f32::INFINITY);
        let err = format!("{:#}", save_checkpoint(&path, &c).unwrap_err());
        assert!(err.contains("backbone._conv_head.weight") && err.contains("inf"), "{err}");
        let mut c = sample(None);
        c.depth.as_mut().unwrap().b2 = f32::NAN;
        let err = format!("{:#}", save_checkpoint(&path, &c).unwrap_err());
        assert!(err.contains("depth.b2") && err.contains("NaN"), "{err}");
    }
}
