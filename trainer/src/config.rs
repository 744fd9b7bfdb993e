//! The training configuration (a YAML file with CLI overrides), its checks, and the training
//! and validation splits it names.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::data::{Augment, IGNORE, Split};

/// Upper bounds of the sizes a configuration may ask for: beyond them a run would not fit in
/// memory (or not finish), and it is better refused than killed.
pub const MAX_HIDDEN: usize = 8192;
pub const MAX_BATCH: usize = 1024;
pub const MAX_COPIES: usize = 64;
pub const MAX_SYNTHETIC: usize = 10_000;
pub const MAX_ZS3_GENERATED: usize = 4096;

/// Training configuration (a YAML file, every field optional; CLI flags override it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub seed: u64,
    /// Training crop `[width, height]`: multiples of 32, at most 512 (the network sees it unscaled).
    pub image_size: [u32; 2],
    /// Folder data sets (see `data`); empty = the built-in synthetic set.
    pub data: Vec<PathBuf>,
    /// Folder data sets for validation; empty = every 5th image of `data` is held out.
    pub val_data: Vec<PathBuf>,
    /// Synthetic scenes for training and for validation (when `data` is empty).
    pub synthetic_train: usize,
    pub synthetic_val: usize,
    /// Augmented copies of each training image (the frozen features are computed once per copy).
    pub copies: usize,
    pub augment: Augment,
    /// Width of the head's hidden layer.
    pub hidden: usize,
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    pub learning_rate: f64,
    /// Validate and checkpoint every this many steps.
    pub eval_every: usize,
    /// Threads for ONNX Runtime (0 = all cores).
    pub threads: usize,
    /// Weight of the multiple-instance loss on image-tag samples.
    pub tag_loss_weight: f32,
    /// Weight of the distillation from the data-free model on image-tag samples.
    pub distill_weight: f32,
    /// Weight of the same distillation on samples with masks (keeps labels the data does not
    /// show closer to the data-free model).
    pub distill_masked_weight: f32,
    /// Labels kept out of training (their pixels are ignored) and evaluated zero-shot:
    /// the report gives seen, unseen and harmonic mIoU.
    pub holdout_labels: Vec<String>,
    /// ZS3Net: generated cells per held-out label per step (0 = off). A generator learns the
    /// seen labels' cells from their text, and the head also trains on generated cells of the
    /// held-out labels, classified against all labels.
    pub zs3_generated: usize,
    /// Weight of the loss on generated cells.
    pub zs3_weight: f32,
    /// Backbone blocks tuned with the head, counted from the last (0 = frozen backbone; 1 =
    /// block 15 and the head conv, the last stage; 5 = the stride-16/32 stages). Each one costs
    /// training time: the tuned blocks run forward and backward at every step.
    pub tune_blocks: usize,
    /// Adam step size of the tuned backbone blocks (pretrained weights take smaller steps than
    /// the new head).
    pub tune_learning_rate: f64,
    /// Weight of the depth head's loss (mean absolute error of ln depth) where the data has
    /// depth; 0 = no depth head. The head reads the segmentation head detached, so this does
    /// not change segmentation.
    pub depth_weight: f32,
    /// Width of the depth head's hidden layer.
    pub depth_hidden: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 1,
            image_size: [256, 192],
            data: Vec::new(),
            val_data: Vec::new(),
            synthetic_train: 64,
            synthetic_val: 16,
            copies: 2,
            augment: Augment::default(),
            hidden: 128,
            steps: 300,
            batch: 8,
            learning_rate: 2e-3,
            eval_every: 50,
            threads: 0,
            holdout_labels: Vec::new(),
            tag_loss_weight: 1.0,
            distill_weight: 1.0,
            distill_masked_weight: 1.0,
            zs3_generated: 0,
            zs3_weight: 1.0,
            tune_blocks: 0,
            tune_learning_rate: 2e-4,
            depth_weight: 1.0,
            depth_hidden: 64,
        }
    }
}

impl TrainConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let text = engine::labels::strip_bom(&text);
        let mut config: TrainConfig = serde_yaml_ng::from_str(text).with_context(|| format!("{}: invalid training configuration", path.display()))?;
        // Folders the file names are relative to the file, which is often kept beside its data
        // and run from elsewhere (the flags' folders stay relative to the working directory).
        let base = path.parent().unwrap_or(Path::new(""));
        for folder in config.data.iter_mut().chain(&mut config.val_data) {
            if folder.is_relative() {
                *folder = base.join(&*folder);
            }
        }
        Ok(config)
    }

    /// Names the first field whose value cannot work.
    pub fn check(&self) -> Result<()> {
        let [w, h] = self.image_size;
        if w % 32 != 0 || h % 32 != 0 || w == 0 || h == 0 || w.max(h) > 512 {
            bail!("image_size [{w}, {h}]: both sides must be positive multiples of 32, at most 512");
        }
        let positive = [
            ("steps", self.steps),
            ("batch", self.batch),
            ("hidden", self.hidden),
            ("copies", self.copies),
            ("eval_every", self.eval_every),
            ("depth_hidden", self.depth_hidden),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| *v == 0) {
            bail!("{name} is {v}; it must be at least 1");
        }
        let bounded = [
            ("hidden", self.hidden, MAX_HIDDEN),
            ("depth_hidden", self.depth_hidden, MAX_HIDDEN),
            ("batch", self.batch, MAX_BATCH),
            ("copies", self.copies, MAX_COPIES),
            ("synthetic_train", self.synthetic_train, MAX_SYNTHETIC),
            ("synthetic_val", self.synthetic_val, MAX_SYNTHETIC),
            ("zs3_generated", self.zs3_generated, MAX_ZS3_GENERATED),
        ];
        if let Some((name, v, max)) = bounded.iter().find(|(_, v, max)| v > max) {
            bail!("{name} is {v}; it must be at most {max}");
        }
        for (name, rate) in [("learning_rate", self.learning_rate), ("tune_learning_rate", self.tune_learning_rate)] {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("{name} {rate} must be a positive number");
            }
        }
        // Adam moves each weight by about the rate per step: past 1, tuned backbone blocks blow
        // up while the loss stays finite (ReLU6 caps them), so unlike the head's rate (whose
        // divergence shows in the loss and stops the run) nothing would notice, and the
        // exported model would score nothing.
        if self.tune_learning_rate > 1.0 {
            bail!("tune_learning_rate {} must be at most 1 (Adam moves each weight by about the rate per step)", self.tune_learning_rate);
        }
        if self.threads > engine::runtime::MAX_THREADS {
            bail!("threads is {}; it must be at most {} (0 = every core)", self.threads, engine::runtime::MAX_THREADS);
        }
        let blocks = engine::zoo::effnet::LITE0_BLOCKS.len();
        if self.tune_blocks >= blocks {
            bail!("tune_blocks {} must be below {blocks} (the network has {blocks} blocks; the first stays frozen)", self.tune_blocks);
        }
        if self.tune_blocks > 0 && self.zs3_generated > 0 {
            bail!("tune_blocks {} with zs3_generated {}: the ZS3 generator learns the frozen backbone's cells, so it cannot be combined with tuning", self.tune_blocks, self.zs3_generated);
        }
        for (name, w) in [
            ("tag_loss_weight", self.tag_loss_weight),
            ("distill_weight", self.distill_weight),
            ("distill_masked_weight", self.distill_masked_weight),
            ("zs3_weight", self.zs3_weight),
            ("depth_weight", self.depth_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                bail!("{name} {w} must be a non-negative number");
            }
        }
        if self.zs3_generated > 0 && self.holdout_labels.is_empty() {
            bail!("zs3_generated is {}, but holdout_labels is empty: ZS3 generates cells of held-out labels", self.zs3_generated);
        }
        let a = &self.augment;
        if !(a.scale_min > 0.0 && a.scale_min <= a.scale_max && a.scale_max <= 4.0) {
            bail!("augment.scale_min {} / scale_max {}: need 0 < min <= max <= 4", a.scale_min, a.scale_max);
        }
        if !(0.0..1.0).contains(&a.color) {
            bail!("augment.color {} must be in 0..1", a.color);
        }
        if self.data.is_empty() && (self.synthetic_train == 0 || self.synthetic_val == 0) {
            bail!("synthetic_train / synthetic_val must be at least 1 when no data set is given");
        }
        Ok(())
    }

    /// Training and validation splits.
    pub fn splits(&self) -> Result<(Split, Split)> {
        let size = (self.image_size[0], self.image_size[1]);
        if self.data.is_empty() {
            let base = self.seed << 20;
            return Ok((Split::synthetic(base, self.synthetic_train, size), Split::synthetic(base + (1 << 19), self.synthetic_val, size)));
        }
        let key = |spec: &PathBuf| crate::layouts::canonical_spec(spec);
        if let Some(spec) = self.val_data.iter().find(|v| self.data.iter().any(|d| key(d) == key(v))) {
            bail!("val_data: {} is also a training data set; validation must be on images training does not see", spec.display());
        }
        let all = Split::folders(&self.data)?;
        if !self.val_data.is_empty() {
            let val = Split::folders(&self.val_data)?;
            if let Some(tagged) = val.sources.iter().find(|s| !s.has_mask()) {
                bail!("val_data: {} has tags only; validation needs masks", tagged.describe());
            }
            if let Some(label) = val.labels.iter().find(|l| !all.labels.contains(l)) {
                bail!("val_data: label {label:?} is in no training data set");
            }
            let val = remap_labels(val, &all.labels);
            return Ok((all, val));
        }
        // Every 5th image with a mask is held out; tag-only images all train.
        let (mut train, mut val) = (all.clone(), all);
        let mut masked = 0;
        let held_out: Vec<bool> = train
            .sources
            .iter()
            .map(|s| {
                masked += usize::from(s.has_mask());
                s.has_mask() && masked % 5 == 0
            })
            .collect();
        let pick = |keep: bool| train.sources.iter().zip(&held_out).filter(|(_, h)| **h == keep).map(|(s, _)| s.clone()).collect::<Vec<_>>();
        (train.sources, val.sources) = (pick(false), pick(true));
        if train.is_empty() || val.is_empty() {
            bail!("{masked} images with masks are too few to hold out every 5th for validation; give val_data");
        }
        Ok((train, val))
    }
}

/// Re-expresses a split's label ids in another (super)set of label names.
fn remap_labels(mut split: Split, labels: &[String]) -> Split {
    let names = split.labels.clone();
    let map = |id: u8| names.get(usize::from(id)).and_then(|n| labels.iter().position(|l| l == n)).map_or(IGNORE, |i| i as u8);
    split.sources.iter_mut().for_each(|s| s.remap(&map));
    split.descriptions = labels.iter().map(|_| None).collect();
    split.labels = labels.to_vec();
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_upper_bounds() {
        let cases = [
            (TrainConfig { hidden: 100_000_000, ..TrainConfig::default() }, "hidden is 100000000; it must be at most 8192"),
            (TrainConfig { depth_hidden: MAX_HIDDEN + 1, ..TrainConfig::default() }, "depth_hidden is 8193"),
            (TrainConfig { batch: 100_000, ..TrainConfig::default() }, "batch is 100000; it must be at most 1024"),
            (TrainConfig { copies: 1000, ..TrainConfig::default() }, "copies is 1000"),
            (TrainConfig { synthetic_train: 1 << 40, ..TrainConfig::default() }, "synthetic_train is"),
            (TrainConfig { zs3_generated: 1 << 20, holdout_labels: vec!["sky".into()], ..TrainConfig::default() }, "zs3_generated is 1048576"),
            (TrainConfig { threads: 100_000, ..TrainConfig::default() }, "threads is 100000; it must be at most 256"),
            // A tuned backbone diverges without the loss noticing; the export would score nothing.
            (TrainConfig { tune_blocks: 1, tune_learning_rate: 1e30, ..TrainConfig::default() }, "tune_learning_rate 1000000000000000000000000000000 must be at most 1"),
        ];
        for (config, needle) in cases {
            let err = config.check().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
        TrainConfig { hidden: MAX_HIDDEN, batch: MAX_BATCH, ..TrainConfig::default() }.check().unwrap();
    }

    #[test]
    fn validation_on_a_training_set_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = TrainConfig { data: vec![dir.path().to_path_buf()], val_data: vec![dir.path().join(".")], ..TrainConfig::default() };
        let err = config.splits().unwrap_err().to_string();
        assert!(err.contains("val_data") && err.contains("is also a training data set"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_and_a_partial_augment_block_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "\u{FEFF}steps: 7\naugment:\n  scale_min: 0.8\n  scale_max: 1.2\n").unwrap();
        let config = TrainConfig::read(&path).unwrap();
        assert_eq!((config.steps, config.augment.scale_min, config.augment.flip, config.augment.color), (7, 0.8, true, 0.2));
    }

    #[test]
    fn data_folders_in_a_file_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "data: [field, /abs/set]\nval_data: [\"held out#validation\"]\n").unwrap();
        let config = TrainConfig::read(&path).unwrap();
        assert_eq!(config.data, [dir.path().join("field"), PathBuf::from("/abs/set")]);
        assert_eq!(config.val_data, [dir.path().join("held out#validation")]);
    }
}
