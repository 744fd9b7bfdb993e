//! The model directory the engine and the node load, written from a trained head.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use engine::Manifest;
use engine::zoo::build::{ANCHORS_FILE, default_manifest};
use engine::zoo::pth::StateDict;
use engine::zoo::trained::build_trained_encoder;

use crate::checkpoint::{Checkpoint, save_checkpoint};
use crate::outputs::{BASE_MODEL, Outputs, TRAINED_BY, model_dir};

/// File name of the trained head inside an exported model directory.
pub const HEAD_FILE: &str = "head.safetensors";

/// Everything an export needs from the default model.
pub struct BaseModel {
    pub dir: PathBuf,
    pub weights: StateDict,
    pub class_text: Vec<f32>,
}

/// The manifest of a trained model: the default model's, with the learned scales and labels.
pub fn trained_manifest(name: &str, scales: [f32; 2], labels: &[String], backbone_tuned: bool) -> Manifest {
    let mut m = default_manifest();
    m.name = name.to_string();
    let backbone = if backbone_tuned { "ImageNet, last blocks tuned" } else { "ImageNet, frozen" };
    m.description = format!(
        "EfficientNet-Lite0 ({backbone}) with the data-free head plus a trained residual head, \
         in the all-MiniLM-L6-v2 sentence space; {TRAINED_BY}."
    );
    // logit_scale x fusion_weight of each level reproduces the learned per-level scale.
    let total = scales[0] + scales[1];
    m.segmentation.logit_scale = total;
    let mut levels = m.image_encoder.outputs.clone();
    levels.sort_by_key(|l| std::cmp::Reverse(l.stride));
    for out in m.image_encoder.outputs.iter_mut() {
        out.fusion_weight = if out.stride == levels[0].stride { scales[0] } else { scales[1] } / total;
    }
    m.segmentation.default_labels = labels.to_vec();
    m
}

/// Writes a complete model directory at `out`: built in a staging directory next to it, checked
/// by loading it through the engine, then moved into place. An existing `out` is replaced only
/// when ovseg-train wrote it (with `force`: any model directory), and never when it is or holds
/// the base model; anything else is left alone.
/// The head is taken from `checkpoint` (its training state, if any, is not copied).
pub fn export_model(out: &Path, base: &BaseModel, checkpoint: &Checkpoint, force: bool) -> Result<()> {
    check_destination(out, &base.dir, force)?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let staging = parent.join(format!(".{name}.staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = write_model(&staging, base, checkpoint, &name);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old).with_context(|| format!("moving aside {}", out.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(&staging, out).with_context(|| format!("installing {}", out.display()))
}

/// Refuses an `out` that is, holds or lies in the base model's directory, or that exists and is
/// neither an empty directory nor a model directory ovseg-train wrote (any model directory with
/// `force`). Training checks this with its other outputs before it starts; the export checks
/// again, as the destination may have changed since.
pub fn check_destination(out: &Path, base_dir: &Path, force: bool) -> Result<()> {
    model_dir(Outputs::new(force).input(base_dir, BASE_MODEL), out, "the model directory")?;
    Ok(())
}

fn write_model(dir: &Path, base: &BaseModel, checkpoint: &Checkpoint, name: &str) -> Result<()> {
    let mut manifest = trained_manifest(name, checkpoint.scales, &checkpoint.meta.labels, !checkpoint.backbone.is_empty());
    if checkpoint.depth.is_some() {
        let fine = manifest.levels_coarse_to_fine().pop().context("the manifest has no embedding output")?;
        manifest.image_encoder.depth = Some(engine::manifest::EmbeddingOutput { name: engine::zoo::trained::DEPTH_OUTPUT.into(), fusion_weight: 1.0, ..fine });
        manifest.description.push_str(" With a depth head (metres, on the fine cells).");
    }
    for file in [&manifest.text_encoder.file, &manifest.text_encoder.tokenizer, &ANCHORS_FILE.to_string()] {
        std::fs::copy(base.dir.join(file), dir.join(file)).with_context(|| format!("copying {file} from {}", base.dir.display()))?;
    }
    // Tuned backbone blocks replace the default model's (names and shapes are checked there).
    let mut weights = base.weights.clone();
    weights.extend(checkpoint.backbone.iter().map(|(name, t)| (name.clone(), t.clone())));
    let graph = build_trained_encoder(&weights, &base.class_text, &checkpoint.weights, checkpoint.depth.as_ref()).context("building the image encoder")?;
    let encoder = dir.join(&manifest.image_encoder.file);
    graph.write(&encoder).with_context(|| format!("writing {}", encoder.display()))?;
    // The head without its training state (the optimizer moments are not part of a model).
    let head = Checkpoint {
        weights: checkpoint.weights.clone(),
        scales: checkpoint.scales,
        meta: checkpoint.meta.clone(),
        state: None,
        backbone: checkpoint.backbone.clone(),
        depth: checkpoint.depth.clone(),
    };
    save_checkpoint(&dir.join(HEAD_FILE), &head)?;
    manifest.write(dir)?;
    let model = engine::Model::open(dir).context("the exported model does not load")?;
    model.image_backend(engine::BackendKind::Cpu, 1).context("the exported image encoder does not load")?;
    Ok(())
}
