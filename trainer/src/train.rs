//! The training loop: frozen features computed once per augmented image, the head trained with
//! Adam on the losses of `model`, validation on held-out images, checkpoints, export, and the
//! untrained-vs-trained evaluation through the engine.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

pub use crate::config::TrainConfig;
use crate::data::{Annotation, Augment, IGNORE, Split, cell_depth_targets, cell_targets};
use crate::eval::{EvalReport, evaluate};
use crate::checkpoint::{Checkpoint, CheckpointMeta, DepthScore, HistoryPoint, TrainingState, load_checkpoint, save_checkpoint};
use crate::export::{BaseModel, export_model};
use crate::outputs::{BASE_MODEL, Kind, Outputs, model_dir};
use crate::features::{FeatureExtractor, ImageFeatures};
use engine::burn::{Blocks, DataFree};
use crate::model::{Batch, DepthHead, Head, Labels, Levels, LossWeights, interpolation_matrix, tensor2, tensor3, values};
use crate::zs3;

/// Where training runs: `auto` takes CUDA in builds with the feature `cuda` where a driver
/// answers, and the CPU otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainDevice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// One training or validation image, ready for batching.
pub(crate) struct Prepared {
    pub(crate) features: ImageFeatures,
    pub(crate) target: Vec<f32>,
    pub(crate) weight: Vec<f32>,
    pub(crate) coarse: bool,
    /// Image-tag samples: 1 for each label the image shows.
    pub(crate) tags: Option<Vec<f32>>,
    /// Per fine cell: ln depth and the share of the cell with depth (samples with depth).
    pub(crate) depth: Option<(Vec<f32>, Vec<f32>)>,
    /// Which split sample it came from (named in errors).
    pub(crate) source: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub config: TrainConfig,
    pub labels: Vec<String>,
    pub steps_done: usize,
    pub interrupted: bool,
    pub train_images: usize,
    pub val_images: usize,
    pub feature_seconds: f64,
    pub train_seconds: f64,
    /// Training images (augmented copies) per second through the head, features excluded.
    pub train_images_per_second: f64,
    pub history: Vec<HistoryPoint>,
    pub scales: [f32; 2],
    pub untrained: EvalReport,
    pub trained: EvalReport,
    pub model_dir: String,
    pub export_seconds: f64,
    /// ZS3: the generator's MMD to the real cells per seen label, first and last step.
    pub zs3_generator_mmd: Option<[Vec<f32>; 2]>,
    /// Where the head trained ("cpu" or "cuda").
    pub device: String,
    /// The depth head on the validation cells, untrained (one depth everywhere: the training
    /// set's geometric mean) and trained; none without depth data or with `depth_weight: 0`.
    pub depth: Option<DepthReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DepthReport {
    pub train_cells: usize,
    pub val_cells: usize,
    pub untrained: DepthScore,
    pub trained: DepthScore,
}

impl DepthReport {
    pub fn markdown(&self) -> String {
        format!(
            "## depth head\n\n{} validation cells with depth ({} in training)\n\n| | AbsRel | δ < 1.25 |\n|---|---|---|\n\
             | untrained (one depth everywhere) | {:.3} | {:.1}% |\n| trained | {:.3} | {:.1}% |\n",
            self.val_cells,
            self.train_cells,
            self.untrained.abs_rel,
            100.0 * self.untrained.delta1,
            self.trained.abs_rel,
            100.0 * self.trained.delta1
        )
    }
}

/// How a training run is driven (not part of the configuration a checkpoint records).
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub progress: bool,
    /// A plain line per validation on stderr, where there are no bars (a log file, a pipe).
    pub progress_lines: bool,
    /// Continue from this checkpoint (same configuration except `steps` and `threads`).
    pub resume: Option<PathBuf>,
    pub device: TrainDevice,
    /// Also write the prepared training pool here (see [`crate::fixture`]).
    pub write_fixture: Option<PathBuf>,
    /// Replace existing files that are not outputs of the same kind, and model directories
    /// ovseg-train did not write (never an input, nor the default model).
    pub force: bool,
    /// The configuration file the caller read `config` from (an input no output may replace).
    pub config_file: Option<PathBuf>,
    /// Where the caller will write the report (checked with the other outputs, up front).
    pub report_json: Option<PathBuf>,
}

type StateRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;
type HeadOptimizer<B> = OptimizerAdaptor<Adam, Head<B>, B>;
type TailOptimizer<B> = OptimizerAdaptor<Adam, Blocks<B>, B>;
type DepthOptimizer<B> = OptimizerAdaptor<Adam, DepthHead<B>, B>;

/// Trains, exports the model directory to `out` and evaluates untrained vs trained.
pub fn train(config: &TrainConfig, out: &Path, options: &TrainOptions) -> Result<TrainReport> {
    config.check()?;
    check_paths(config, out, options)?;
    match options.device {
        TrainDevice::Cpu => train_on::<Autodiff<Flex>>(config, out, options, Default::default(), "cpu"),
        TrainDevice::Cuda | TrainDevice::Auto => cuda_or_cpu(config, out, options),
    }
}

#[cfg(feature = "cuda")]
fn cuda_or_cpu(config: &TrainConfig, out: &Path, options: &TrainOptions) -> Result<TrainReport> {
    // burn's CUDA runtime panics without a driver, NVRTC or the CUDA headers: ask first.
    let why = match engine::cuda::burn_cuda_ready() {
        Ok(_) => {
            tracing::info!("training on CUDA");
            return train_on::<Autodiff<burn::backend::Cuda>>(config, out, options, Default::default(), "cuda");
        }
        Err(e) => e.to_string(),
    };
    if options.device == TrainDevice::Cuda {
        bail!("device cuda: {why}");
    }
    tracing::info!("training on the CPU: {why}");
    train_on::<Autodiff<Flex>>(config, out, options, Default::default(), "cpu")
}

#[cfg(not(feature = "cuda"))]
fn cuda_or_cpu(config: &TrainConfig, out: &Path, options: &TrainOptions) -> Result<TrainReport> {
    if options.device == TrainDevice::Cuda {
        bail!("device cuda: this ovseg-train was built without the feature `cuda`");
    }
    train_on::<Autodiff<Flex>>(config, out, options, Default::default(), "cpu")
}

/// Checks every path the run writes against what it reads, before any work (see
/// [`engine::outputs`]): the model directory, the running checkpoint beside it, the fixture and
/// the caller's report.
pub fn check_paths(config: &TrainConfig, out: &Path, options: &TrainOptions) -> Result<()> {
    let mut paths = Outputs::new(options.force);
    paths.input(&engine::paths::default_model_dir(), BASE_MODEL);
    for spec in &config.data {
        paths.input(&crate::layouts::split_spec(spec).0, "a training data set");
    }
    for spec in &config.val_data {
        paths.input(&crate::layouts::split_spec(spec).0, "a validation data set");
    }
    if let Some(path) = &options.config_file {
        paths.input(path, "the configuration file");
    }
    if let Some(path) = &options.resume {
        // Resuming `<out>.checkpoint.safetensors` and writing it on is the normal way to go on.
        paths.continued_input(path, "the checkpoint being resumed", Kind::Checkpoint);
    }
    model_dir(&mut paths, out, "--out")?;
    paths.file(&checkpoint_path(out), "the running checkpoint", Kind::Checkpoint)?;
    if let Some(path) = &options.write_fixture {
        paths.file(path, "--write-fixture", Kind::Fixture)?;
    }
    // The default report lies in the freshly exported model directory.
    if let Some(path) = options.report_json.as_ref().filter(|p| !engine::outputs::same_destination(p, &out.join("train_report.json"))) {
        paths.file(path, "--json", Kind::TrainReport)?;
    }
    Ok(())
}

fn train_on<B: AutodiffBackend>(config: &TrainConfig, out: &Path, options: &TrainOptions, device: B::Device, device_name: &str) -> Result<TrainReport> {
    let resume = options.resume.as_deref().map(|path| resume_point(path, config)).transpose()?;
    let threads = engine::runtime::resolve_threads(config.threads);
    let (train_split, val_split) = config.splits()?;
    let seen = SeenLabels::new(&train_split, &config.holdout_labels)?;
    check_labelled(&train_split, &seen, config)?;
    let val_split = annotated_validation(val_split)?;
    // The checkpoint goes next to the output directory, from the first evaluation on: its
    // folder must exist before training starts, not when the first save fails (and only once
    // the data passed its checks, so that a refused run leaves no folders behind).
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let pool_len = train_split.len() * config.copies;
    let batch = effective_batch(config.batch, pool_len);
    if batch < config.batch {
        tracing::warn!(
            "batch {} is larger than the training set ({} images x {} copies = {pool_len}); each step trains on all {pool_len} instead",
            config.batch,
            train_split.len(),
            config.copies
        );
    }
    let quiet = |_: usize, _: usize, _: &str| {};
    let (base_dir, weights, class_text) = engine::zoo::build::default_backbone(&quiet).context("loading the default model's backbone")?;
    let base = BaseModel { dir: base_dir, weights, class_text };
    let model = engine::Model::open(&base.dir)?;
    let mut bank = model.label_bank(threads, None)?;
    // With ZS3 the held-out labels' names join the label set (after the seen ones); their
    // pixels stay ignored.
    let zs3 = config.zs3_generated > 0;
    let unseen_specs: Vec<engine::LabelSpec> =
        if zs3 { train_split.label_specs().into_iter().filter(|s| config.holdout_labels.contains(&s.name)).collect() } else { Vec::new() };
    let label_set = bank.build(&[seen.specs.clone(), unseen_specs].concat())?;
    let num_labels = label_set.len();

    let started = Instant::now();
    let mut tail = match config.tune_blocks {
        0 => None,
        count => Some(Blocks::<B>::tail(&base.weights, count, &device)?),
    };
    let data_free = DataFree::<B>::new(&base.weights, &base.class_text, &device)?;
    let tap_block = tail.as_ref().and_then(Blocks::input_block);
    let mut extractor = FeatureExtractor::new(&base.weights, &base.class_text, &model.manifest, threads, tap_block)?;
    let size = (config.image_size[0], config.image_size[1]);
    // Augmentation draws from its own generator so the pool is the same on resume.
    let mut augment_rng = StdRng::seed_from_u64(config.seed);
    let bar = progress_bar(options.progress, (train_split.len() * config.copies + val_split.len()) as u64, "features", 1);
    let mut prepare = |split: &Split, i: usize, augment: &Augment, rng: &mut StdRng| -> Result<Prepared> {
        let mut sample = augment.apply(&split.load(i)?, size, rng);
        seen.hide_unseen(&mut sample);
        let features = extractor.extract(&sample.image)?;
        let (target, weight) = cell_targets(&sample.mask, features.fine.grid, num_labels);
        let tags = match &sample.annotation {
            Annotation::Tags(ids) => Some((0..num_labels).map(|k| if ids.contains(&(k as u8)) { 1.0 } else { 0.0 }).collect()),
            _ => None,
        };
        let depth = sample.depth.as_ref().map(|d| cell_depth_targets(d, features.fine.grid));
        bar.inc(1);
        Ok(Prepared { features, target, weight, coarse: sample.annotation == Annotation::Coarse, tags, depth, source: i })
    };
    let mut train_pool = Vec::with_capacity(train_split.len() * config.copies);
    for i in 0..train_split.len() {
        for _ in 0..config.copies {
            train_pool.push(prepare(&train_split, i, &config.augment, &mut augment_rng)?);
        }
    }
    let val_pool = (0..val_split.len()).map(|i| prepare(&val_split, i, &Augment::NONE, &mut augment_rng)).collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    if let Some(path) = &options.write_fixture {
        crate::fixture::write(path, config, &label_set, &base.class_text, default_scales(&model.manifest), &train_pool)?;
    }
    let feature_seconds = started.elapsed().as_secs_f64();

    let mut generator = match zs3 {
        true => {
            let cells = zs3::RealCells::collect(
                train_pool.iter().map(|p| (&p.features.fine.features[..], &p.features.fine.base[..], &p.target[..], &p.weight[..])),
                num_labels,
                label_set.dim,
                config.seed,
            );
            let generator = zs3::train_generator(&cells, &label_set.embeddings[..seen.specs.len() * label_set.dim], config.seed)?;
            tracing::info!(mmd = ?generator.mmd, "zs3 generator trained");
            Some(generator)
        }
        false => None,
    };
    let unseen_text = label_set.embeddings[seen.specs.len() * label_set.dim..].to_vec();

    let teacher_scales = default_scales(&model.manifest);
    let Objective { labels, interp, weights: loss_weights } =
        Objective::<B>::new(config, &label_set, &base.class_text, teacher_scales, &train_pool[0].features, &device);
    let mut head = Head::<B>::init(config.hidden, label_set.dim, teacher_scales, config.seed, &device);
    let mut optimizer: HeadOptimizer<B> = AdamConfig::new().init();
    let mut tail_optimizer: TailOptimizer<B> = AdamConfig::new().init();
    let mut depth_head = new_depth_head::<B>(config, label_set.dim, &train_pool, &device);
    let mut depth_optimizer: DepthOptimizer<B> = AdamConfig::new().init();
    let recorder = StateRecorder::default();
    let (mut history, mut running, first_step) = match resume {
        Some(checkpoint) => {
            let state = checkpoint.state.with_context(|| format!("{}: the checkpoint holds no training state", options.resume.as_deref().unwrap_or(Path::new("")).display()))?;
            let module = Recorder::<B>::load(&recorder, state.module, &device).context("restoring the head from the checkpoint")?;
            head = head.load_record(module);
            let moments = Recorder::<B>::load(&recorder, state.optimizer, &device).context("restoring the optimizer from the checkpoint")?;
            optimizer = optimizer.load_record(moments);
            if let Some(t) = tail.take() {
                let module = Recorder::<B>::load(&recorder, state.tail_module, &device).context("restoring the tuned backbone blocks from the checkpoint")?;
                tail = Some(t.load_record(module));
                let moments = Recorder::<B>::load(&recorder, state.tail_optimizer, &device)
                    .context("restoring the tuned blocks' optimizer from the checkpoint")?;
                tail_optimizer = tail_optimizer.load_record(moments);
            }
            if let Some(d) = depth_head.take() {
                let module = Recorder::<B>::load(&recorder, state.depth_module, &device).context("restoring the depth head from the checkpoint")?;
                depth_head = Some(d.load_record(module));
                let moments = Recorder::<B>::load(&recorder, state.depth_optimizer, &device).context("restoring the depth head's optimizer from the checkpoint")?;
                depth_optimizer = depth_optimizer.load_record(moments);
            }
            tracing::info!(step = checkpoint.meta.step, "resuming");
            (checkpoint.meta.history, checkpoint.meta.running_loss, checkpoint.meta.step + 1)
        }
        None => {
            // Step 0: the untrained head (the data-free model) as the first point of the curves.
            let v = validate(&head, tail.as_ref(), depth_head.as_ref(), &data_free, &val_pool, &labels, &interp, &loss_weights, config.batch, &device)?;
            (vec![v.point(0, None)], None, 1)
        }
    };

    let interrupted = Arc::new(AtomicBool::new(false));
    // First Ctrl-C: finish the step, checkpoint, export. A second one exits at once (130).
    signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 130, Arc::clone(&interrupted))
        .context("installing the Ctrl-C handler")?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&interrupted)).context("installing the Ctrl-C handler")?;
    let checkpoint_path = checkpoint_path(out);
    let snapshot = |head: &Head<B>,
                    optimizer: &HeadOptimizer<B>,
                    tail: Option<&Blocks<B>>,
                    tail_optimizer: &TailOptimizer<B>,
                    depth: Option<&DepthHead<B>>,
                    depth_optimizer: &DepthOptimizer<B>,
                    step: usize,
                    history: &[HistoryPoint],
                    running: Option<f64>|
     -> Result<Checkpoint> {
        let (weights, scales) = head.to_weights()?;
        let (tail_module, tail_optimizer, backbone) = match tail {
            Some(tail) => (
                Recorder::<B>::record(&recorder, tail.clone().into_record(), ())?,
                Recorder::<B>::record(&recorder, tail_optimizer.to_record(), ())?,
                tail.to_state_dict()?,
            ),
            None => Default::default(),
        };
        let (depth_module, depth_optimizer, depth) = match depth {
            Some(d) => (
                Recorder::<B>::record(&recorder, d.clone().into_record(), ())?,
                Recorder::<B>::record(&recorder, depth_optimizer.to_record(), ())?,
                Some(d.to_weights()?),
            ),
            None => Default::default(),
        };
        let state = Some(TrainingState {
            module: Recorder::<B>::record(&recorder, head.clone().into_record(), ())?,
            optimizer: Recorder::<B>::record(&recorder, optimizer.to_record(), ())?,
            tail_module,
            tail_optimizer,
            depth_module,
            depth_optimizer,
        });
        let meta = CheckpointMeta {
            step,
            labels: label_set.names.clone(),
            config: serde_json::to_string(config)?,
            history: history.to_vec(),
            running_loss: running,
        };
        Ok(Checkpoint { weights, scales, meta, state, backbone, depth })
    };
    let mut batches = BatchOrder::new(config.seed, train_pool.len(), batch);
    let mut steps_done = first_step - 1;
    let mut saved_at = (first_step > 1).then_some(steps_done);
    let train_started = Instant::now();
    let bar = progress_bar(options.progress, config.steps as u64, "training", batch);
    bar.set_position(steps_done as u64);
    for step in first_step..=config.steps {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let items: Vec<&Prepared> = batches.at(step).into_iter().map(|i| &train_pool[i]).collect();
        let batch = make_batch::<B>(&items, labels.count, &device);
        let input = head_input(tail.as_ref(), &data_free, &batch);
        let fine_features = input.fine_features.clone();
        let (mut loss, _, embedding) = head.loss(&batch, input, &labels, &interp, &loss_weights);
        let depth_loss = depth_head.as_ref().map(|d| d.loss(fine_features, embedding, &batch).0);
        if let Some(generator) = &mut generator {
            let (features, base, unseen) = generator.generate(&unseen_text, config.zs3_generated);
            // The generator runs on the CPU; its cells move to the training device.
            let to_device = |t: Tensor<_, 2>| -> Result<Tensor<B, 2>> {
                let dims = t.dims();
                Ok(tensor2::<B>(values(t)?, dims, &device))
            };
            let (features, base) = (to_device(features)?, to_device(base)?);
            let targets: Vec<usize> = unseen.iter().map(|u| seen.specs.len() + u).collect();
            loss = loss + head.generated_loss(features, base, &targets, &labels).mul_scalar(config.zs3_weight);
        }
        let loss_value = f64::from(values(loss.clone())?[0]);
        // Stops a diverging run naming where, on what, and what is left to go back to.
        let diverged = |what: String| -> Result<()> {
            let sources: Vec<String> = items.iter().map(|p| train_split.sources[p.source].describe()).collect();
            let last_good = saved_at.map_or("no checkpoint was written yet".to_string(), |at| {
                format!("the last good checkpoint is {} (step {at})", checkpoint_path.display())
            });
            bail!("training diverged at step {step}: {what} (batch: {}); {last_good}", sources.join(", "))
        };
        if !loss_value.is_finite() {
            diverged(format!("the loss is {loss_value}"))?;
        }
        if let Some(depth_loss) = depth_loss {
            let depth_value = values(depth_loss.clone())?[0];
            if !depth_value.is_finite() {
                diverged(format!("the depth loss is {depth_value}"))?;
            }
            loss = loss + depth_loss.mul_scalar(config.depth_weight);
        }
        let mut grads = loss.backward();
        if let Some(d) = depth_head.take() {
            let depth_grads = GradientsParams::from_module(&mut grads, &d);
            depth_head = Some(depth_optimizer.step(config.learning_rate, d, depth_grads));
        }
        if let Some(t) = tail.take() {
            let tail_grads = GradientsParams::from_module(&mut grads, &t);
            tail = Some(tail_optimizer.step(config.tune_learning_rate, t, tail_grads));
        }
        let grads = GradientsParams::from_grads(grads, &head);
        head = optimizer.step(config.learning_rate, head, grads);
        let scales = head.scales()?;
        if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            diverged(format!("the learned scales became {scales:?}"))?;
        }
        let smoothed = running.map_or(loss_value, |r| 0.9 * r + 0.1 * loss_value);
        running = Some(smoothed);
        steps_done = step;
        bar.set_message(format!("loss {smoothed:.3}"));
        bar.inc(1);
        if step % config.eval_every == 0 || step == config.steps {
            let v = validate(&head, tail.as_ref(), depth_head.as_ref(), &data_free, &val_pool, &labels, &interp, &loss_weights, config.batch, &device)?;
            history.push(v.point(step, running));
            tracing::info!(step, train_loss = smoothed, val_loss = v.loss, val_cell_accuracy = v.cell_accuracy, val_cell_miou = v.cell_miou, val_depth = ?v.depth, "validation");
            if options.progress_lines {
                eprintln!("step {step}/{}: train loss {smoothed:.4}, validation loss {:.4}, cell mIoU {:.1}%", config.steps, v.loss, 100.0 * v.cell_miou);
            }
            save_checkpoint(&checkpoint_path, &snapshot(&head, &optimizer, tail.as_ref(), &tail_optimizer, depth_head.as_ref(), &depth_optimizer, step, &history, running)?)?;
            saved_at = Some(step);
        }
    }
    bar.finish_and_clear();
    let train_seconds = train_started.elapsed().as_secs_f64();
    let was_interrupted = interrupted.load(Ordering::Relaxed);
    let last = snapshot(&head, &optimizer, tail.as_ref(), &tail_optimizer, depth_head.as_ref(), &depth_optimizer, steps_done, &history, running)?;
    save_checkpoint(&checkpoint_path, &last)?;

    let t = Instant::now();
    export_model(out, &base, &last, options.force)?;
    let export_seconds = t.elapsed().as_secs_f64();
    let untrained = evaluate(&base.dir, &val_split, threads, &config.holdout_labels)?;
    let trained = evaluate(out, &val_split, threads, &config.holdout_labels)?;
    let depth = match (&depth_head, history.first().and_then(|h| h.val_depth), history.last().and_then(|h| h.val_depth)) {
        (Some(_), Some(untrained), Some(trained)) => {
            Some(DepthReport { train_cells: depth_cells(&train_pool), val_cells: depth_cells(&val_pool), untrained, trained })
        }
        _ => None,
    };
    Ok(TrainReport {
        config: config.clone(),
        labels: label_set.names.clone(),
        steps_done,
        interrupted: was_interrupted,
        train_images: train_pool.len(),
        val_images: val_pool.len(),
        feature_seconds,
        train_seconds,
        train_images_per_second: ((steps_done + 1 - first_step) * batch) as f64 / train_seconds.max(1e-9),
        history,
        scales: last.scales,
        untrained,
        trained,
        model_dir: out.display().to_string(),
        export_seconds,
        zs3_generator_mmd: generator.map(|g| g.mmd),
        device: device_name.to_string(),
        depth,
    })
}

/// What the heads are trained against: the label tensors (with the anchor concepts of the
/// distillation), the coarse-to-fine interpolation of the pool's grids and the loss weights.
/// Built the same way by `train` and by [`crate::fixture::run`].
pub(crate) struct Objective<B: Backend> {
    pub(crate) labels: Labels<B>,
    pub(crate) interp: Tensor<B, 3>,
    pub(crate) weights: LossWeights,
}

impl<B: Backend> Objective<B> {
    pub(crate) fn new(config: &TrainConfig, label_set: &engine::LabelSet, anchors: &[f32], teacher_scales: [f32; 2], first: &ImageFeatures, device: &B::Device) -> Self {
        let (coarse, fine) = (first.coarse.grid, first.fine.grid);
        let interp = tensor3::<B>(interpolation_matrix(coarse, fine), [1, fine.width * fine.height, coarse.width * coarse.height], device);
        let weights = LossWeights {
            tags: config.tag_loss_weight,
            distill: config.distill_weight,
            distill_masked: config.distill_masked_weight,
            teacher_scales,
        };
        Objective { labels: Labels::new(label_set, device).with_anchors(anchors, label_set.dim, device), interp, weights }
    }
}

/// Cells of the pool that have depth.
fn depth_cells(pool: &[Prepared]) -> usize {
    pool.iter().filter_map(|p| p.depth.as_ref()).flat_map(|(_, w)| w.iter()).filter(|&&w| w > 0.0).count()
}

/// The depth head, where `depth_weight` asks for one and the pool has cells with depth. It has
/// its own seed, so adding depth data does not change the segmentation head's start.
pub(crate) fn new_depth_head<B: Backend>(config: &TrainConfig, dim: usize, pool: &[Prepared], device: &B::Device) -> Option<DepthHead<B>> {
    (config.depth_weight > 0.0 && depth_cells(pool) > 0)
        .then(|| DepthHead::init(config.depth_hidden, dim, mean_log_depth(pool), config.seed ^ 0xDE97, device))
}

/// The training pool's mean ln depth over its cells with depth, weighted by their share.
fn mean_log_depth(pool: &[Prepared]) -> f32 {
    let (sum, weight) = pool
        .iter()
        .filter_map(|p| p.depth.as_ref())
        .flat_map(|(t, w)| t.iter().zip(w))
        .fold((0.0f64, 0.0f64), |(s, n), (&t, &w)| (s + f64::from(t * w), n + f64::from(w)));
    (sum / weight.max(1e-9)) as f32
}

/// The labels training sees: all of the split's except the held-out ones.
struct SeenLabels {
    specs: Vec<engine::LabelSpec>,
    /// Split label id -> training label id, or IGNORE for held-out labels.
    to_seen: Vec<u8>,
}

impl SeenLabels {
    fn new(split: &Split, holdout: &[String]) -> Result<Self> {
        split.check_labels("holdout_labels", holdout, "training")?;
        let all = split.label_specs();
        let mut specs = Vec::new();
        let mut to_seen = Vec::with_capacity(all.len());
        for spec in all {
            if holdout.contains(&spec.name) {
                to_seen.push(IGNORE);
            } else {
                to_seen.push(specs.len() as u8);
                specs.push(spec);
            }
        }
        if specs.is_empty() {
            bail!("holdout_labels: every label is held out; at least one must be trained");
        }
        Ok(SeenLabels { specs, to_seen })
    }

    /// Re-expresses the sample's mask and tags in training label ids (held-out labels ignored).
    fn hide_unseen(&self, sample: &mut crate::data::Sample) {
        for p in sample.mask.pixels_mut() {
            if let Some(&id) = self.to_seen.get(usize::from(p.0[0])) {
                p.0[0] = id;
            }
        }
        if let Annotation::Tags(ids) = &mut sample.annotation {
            *ids = ids.iter().filter_map(|&id| self.to_seen.get(usize::from(id)).copied().filter(|&s| s != IGNORE)).collect();
        }
    }
}

/// The batch a step trains on: `batch`, or the whole pool where it holds fewer images (a larger
/// batch would only repeat images within the step, at any memory cost).
pub(crate) fn effective_batch(batch: usize, pool: usize) -> usize {
    batch.min(pool.max(1))
}

/// Refuses a training set in which no sample has a pixel or tag of a trained label: it would
/// train on nothing. Stops at the first sample that has one (usually the first).
fn check_labelled(split: &Split, seen: &SeenLabels, config: &TrainConfig) -> Result<()> {
    let trained = |id: u8| seen.to_seen.get(usize::from(id)).is_some_and(|&s| s != IGNORE);
    for i in 0..split.len() {
        if split.annotated(i, &trained)? {
            return Ok(());
        }
    }
    let sets: Vec<String> = config.data.iter().map(|d| d.display().to_string()).collect();
    let held = if config.holdout_labels.is_empty() { "" } else { " or of a held-out label" };
    let tags = if split.sources.iter().any(|s| !s.has_mask()) { ", and no image tag names a trained label" } else { "" };
    bail!(
        "the training set ({}) has no labelled pixel: in all {} training images every mask pixel is 255 (not annotated){held}{tags}; there is nothing to train on",
        sets.join(", "),
        split.len()
    )
}

/// The validation split without images that have no annotated pixel (they have nothing to be
/// scored on and would count as 0), named in a warning; refused when none is left.
fn annotated_validation(split: Split) -> Result<Split> {
    let total = split.len();
    let (split, dropped) = split.without_unannotated()?;
    if split.is_empty() {
        bail!("no validation image has an annotated pixel (all {total} masks are 255 everywhere); there is nothing to validate on");
    }
    if !dropped.is_empty() {
        tracing::warn!("{} of {total} validation images have no annotated pixel and are left out: {}", dropped.len(), crate::data::some_names(&dropped));
    }
    Ok(split)
}

/// The first field (dotted for nested ones) whose value differs between two configurations,
/// with both values, ignoring those that may change on resume.
fn config_difference(saved: &TrainConfig, now: &TrainConfig) -> Result<Option<(String, String, String)>> {
    fn first(prefix: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<(String, String, String)> {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                keys.into_iter().find_map(|k| {
                    let null = serde_json::Value::Null;
                    first(&format!("{prefix}{k}."), a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null))
                })
            }
            _ if a == b => None,
            _ => Some((prefix.trim_end_matches('.').to_string(), a.to_string(), b.to_string())),
        }
    }
    // Data folders as places, so that `./set`, `set` and its absolute path all match.
    let places = |specs: &[PathBuf]| specs.iter().map(|s| crate::layouts::canonical_spec(s)).collect::<Vec<_>>();
    let comparable = |c: &TrainConfig| {
        serde_json::to_value(TrainConfig { steps: 0, threads: 0, data: places(&c.data), val_data: places(&c.val_data), ..c.clone() })
    };
    Ok(first("", &comparable(saved)?, &comparable(now)?))
}

/// Reads a checkpoint to resume from and checks that it belongs to this configuration.
fn resume_point(path: &Path, config: &TrainConfig) -> Result<Checkpoint> {
    let checkpoint = load_checkpoint(path)?;
    if checkpoint.state.is_none() {
        bail!(
            "{}: the checkpoint holds no training state (a model's head.safetensors cannot be resumed; resume the <out>.checkpoint.safetensors that training writes)",
            path.display()
        );
    }
    let saved: TrainConfig = serde_json::from_str(&checkpoint.meta.config).with_context(|| format!("{}: unreadable configuration", path.display()))?;
    if let Some((field, then, now)) = config_difference(&saved, config)? {
        bail!(
            "{}: the checkpoint was trained with another configuration: {field} is {then} there and {now} now (only steps and threads may change on resume)",
            path.display()
        );
    }
    if checkpoint.meta.step >= config.steps {
        bail!("{}: the checkpoint is at step {}; steps ({}) must be larger to resume", path.display(), checkpoint.meta.step, config.steps);
    }
    Ok(checkpoint)
}

/// Which pool entries step `s` trains on: epochs of one seeded permutation each, so a resumed
/// run sees the same batches as an uninterrupted one.
pub(crate) struct BatchOrder {
    seed: u64,
    len: usize,
    batch: usize,
    epoch: Option<(usize, Vec<usize>)>,
}

impl BatchOrder {
    pub(crate) fn new(seed: u64, len: usize, batch: usize) -> Self {
        BatchOrder { seed, len, batch, epoch: None }
    }

    pub(crate) fn at(&mut self, step: usize) -> Vec<usize> {
        let first = (step - 1) * self.batch;
        (first..first + self.batch)
            .map(|position| {
                let epoch = position / self.len;
                if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    let mut order: Vec<usize> = (0..self.len).collect();
                    order.shuffle(&mut StdRng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ epoch as u64));
                    self.epoch = Some((epoch, order));
                }
                self.epoch.as_ref().map_or(0, |(_, order)| order[position % self.len])
            })
            .collect()
    }
}

/// Where the running checkpoint of a training that exports to `out` is kept.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{name}.checkpoint.safetensors"))
}

/// The manifest's per-level scale (logit_scale x fusion weight), coarse first.
pub fn default_scales(manifest: &engine::Manifest) -> [f32; 2] {
    let levels = manifest.levels_coarse_to_fine();
    let s = manifest.segmentation.logit_scale;
    [s * levels[0].fusion_weight, s * levels[levels.len() - 1].fusion_weight]
}

/// A bar over `len` steps of `images` images each, showing images per second.
fn progress_bar(show: bool, len: u64, what: &'static str, images: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_prefix(what);
    if let Ok(style) = ProgressStyle::with_template("{prefix:>9} {bar:30} {pos}/{len} {images_per_sec} ETA {eta} {msg}") {
        let rate = move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1} img/s", state.per_sec() * images as f64);
        };
        bar.set_style(style.with_key("images_per_sec", rate));
    }
    bar
}

pub(crate) fn make_batch<B: Backend>(items: &[&Prepared], num_labels: usize, device: &B::Device) -> Batch<B> {
    let cat = |f: &dyn Fn(&Prepared) -> &[f32]| items.iter().flat_map(|p| f(p).iter().copied()).collect::<Vec<f32>>();
    let first = &items[0].features;
    let (nc, nf) = (first.coarse.cells(), first.fine.cells());
    let channels = first.fine.features.len() / nf;
    let dim = first.fine.base.len() / nf;
    let n = items.len();
    let tap = first.tap.as_ref().map(|t| {
        let [c, h, w] = t.shape;
        let data = items.iter().flat_map(|p| p.features.tap.as_ref().map_or(&[][..], |t| &t.data[..]).iter().copied()).collect::<Vec<f32>>();
        Tensor::from_data(burn::tensor::TensorData::new(data, [n, c, h, w]), device)
    });
    Batch {
        images: n,
        frozen: Levels {
            coarse_features: tensor2(cat(&|p| &p.features.coarse.features), [n * nc, channels], device),
            coarse_base: tensor2(cat(&|p| &p.features.coarse.base), [n * nc, dim], device),
            fine_features: tensor2(cat(&|p| &p.features.fine.features), [n * nf, channels], device),
            fine_base: tensor2(cat(&|p| &p.features.fine.base), [n * nf, dim], device),
        },
        tap,
        target: tensor3(cat(&|p| &p.target), [n, nf, num_labels], device),
        weight: tensor2(cat(&|p| &p.weight), [n, nf], device),
        coarse: tensor2(items.iter().map(|p| if p.coarse { 1.0 } else { 0.0 }).collect(), [n, 1], device),
        tags: tensor2(items.iter().flat_map(|p| p.tags.clone().unwrap_or_else(|| vec![0.0; num_labels])).collect(), [n, num_labels], device),
        tagged: tensor2(items.iter().map(|p| if p.tags.is_some() { 1.0 } else { 0.0 }).collect(), [n, 1], device),
        tagged_images: items.iter().filter(|p| p.tags.is_some()).count(),
        depth_target: tensor2(items.iter().flat_map(|p| p.depth.as_ref().map_or(vec![0.0; nf], |d| d.0.clone())).collect(), [n, nf], device),
        depth_weight: tensor2(items.iter().flat_map(|p| p.depth.as_ref().map_or(vec![0.0; nf], |d| d.1.clone())).collect(), [n, nf], device),
    }
}

/// Validation over the held-out pool, at the fine cells (majority label of each cell's window).
struct Validation {
    loss: f64,
    cell_accuracy: f64,
    cell_miou: f64,
    depth: Option<DepthScore>,
}

impl Validation {
    fn point(&self, step: usize, train_loss: Option<f64>) -> HistoryPoint {
        HistoryPoint { step, train_loss, val_loss: self.loss, val_cell_accuracy: self.cell_accuracy, val_cell_miou: self.cell_miou, val_depth: self.depth }
    }
}

/// The head's input: the tuned blocks' levels when blocks are tuned, else the frozen ones.
fn head_input<B: Backend>(tail: Option<&Blocks<B>>, data_free: &DataFree<B>, batch: &Batch<B>) -> Levels<B> {
    match (tail, &batch.tap) {
        (Some(tail), Some(tap)) => data_free.levels(tail.forward(tap.clone())),
        _ => batch.frozen.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
fn validate<B: Backend>(
    head: &Head<B>,
    tail: Option<&Blocks<B>>,
    depth_head: Option<&DepthHead<B>>,
    data_free: &DataFree<B>,
    pool: &[Prepared],
    labels: &Labels<B>,
    interp: &Tensor<B, 3>,
    loss_weights: &LossWeights,
    batch: usize,
    device: &B::Device,
) -> Result<Validation> {
    let k = labels.count;
    let (mut loss_sum, mut weight_sum) = (0.0f64, 0.0f64);
    let (mut predicted, mut truth) = (Vec::new(), Vec::new());
    // Per depth cell: (predicted ln depth, true ln depth, weight).
    let mut depth_cells = Vec::new();
    for chunk in pool.chunks(batch) {
        let items: Vec<&Prepared> = chunk.iter().collect();
        let b = make_batch::<B>(&items, k, device);
        let input = head_input(tail, data_free, &b);
        let fine_features = input.fine_features.clone();
        let (loss, logits, embedding) = head.loss(&b, input, labels, interp, loss_weights);
        if let Some(d) = depth_head {
            let predicted = values(d.loss(fine_features, embedding, &b).1)?;
            let nf = predicted.len() / items.len();
            for (i, item) in items.iter().enumerate() {
                if let Some((target, weight)) = &item.depth {
                    depth_cells.extend((0..nf).filter(|&c| weight[c] > 0.0).map(|c| (predicted[i * nf + c], target[c], weight[c])));
                }
            }
        }
        let w: f64 = items.iter().flat_map(|p| p.weight.iter()).map(|&w| f64::from(w)).sum();
        loss_sum += f64::from(values(loss)?[0]) * w;
        weight_sum += w;
        let logits = values(logits)?;
        let cells_per_image = logits.len() / k / items.len();
        for (cell, scores) in logits.chunks(k).enumerate() {
            let (item, c) = (items[cell / cells_per_image], cell % cells_per_image);
            predicted.push(argmax(scores) as u16);
            truth.push(if item.weight[c] == 0.0 { IGNORE } else { argmax(&item.target[c * k..(c + 1) * k]) as u8 });
        }
    }
    let identity: Vec<u16> = (0..k as u16).collect();
    let (ious, cell_accuracy) = engine::metrics::score(&predicted, &truth, &identity);
    let cell_miou = ious.iter().map(|(_, iou)| iou).sum::<f64>() / ious.len().max(1) as f64;
    Ok(Validation { loss: loss_sum / weight_sum.max(1e-9), cell_accuracy, cell_miou, depth: DepthScore::of(&depth_cells) })
}


fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::zoo::trained::{FEATURE_CHANNELS, HeadWeights};

    fn checkpoint(config: &TrainConfig, state: Option<TrainingState>) -> Checkpoint {
        let weights = HeadWeights { hidden: 1, dim: 1, w1: vec![0.0; FEATURE_CHANNELS], b1: vec![0.0], w2: vec![0.0], b2: vec![0.0] };
        let meta = CheckpointMeta { step: 2, labels: vec!["sky".into()], config: serde_json::to_string(config).unwrap(), history: Vec::new(), running_loss: None };
        Checkpoint { weights, scales: [1.0, 1.0], meta, state, backbone: Default::default(), depth: None }
    }

    #[test]
    fn resuming_names_the_file_and_the_field_that_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.checkpoint.safetensors");
        let config = TrainConfig { steps: 2, ..TrainConfig::default() };
        save_checkpoint(&path, &checkpoint(&config, None)).unwrap();
        let err = format!("{:#}", resume_point(&path, &config).unwrap_err());
        assert!(err.contains("m.checkpoint.safetensors: the checkpoint holds no training state"), "{err}");
        let state = TrainingState {
            module: vec![1],
            optimizer: vec![1],
            tail_module: Vec::new(),
            tail_optimizer: Vec::new(),
            depth_module: Vec::new(),
            depth_optimizer: Vec::new(),
        };
        save_checkpoint(&path, &checkpoint(&config, Some(state))).unwrap();
        let more = |c: TrainConfig| TrainConfig { steps: 4, threads: 3, ..c };
        resume_point(&path, &more(config.clone())).unwrap();
        let err = format!("{:#}", resume_point(&path, &more(TrainConfig { hidden: 64, ..config.clone() })).unwrap_err());
        assert!(err.contains("m.checkpoint.safetensors") && err.contains("hidden is 128 there and 64 now"), "{err}");
        let augment = Augment { flip: false, ..Augment::default() };
        let err = format!("{:#}", resume_point(&path, &more(TrainConfig { augment, ..config })).unwrap_err());
        assert!(err.contains("augment.flip is true there and false now"), "{err}");
    }

    #[test]
    fn a_batch_larger_than_the_pool_is_cut_to_it() {
        assert_eq!(effective_batch(8, 10), 8);
        assert_eq!(effective_batch(100, 10), 10);
        let mut order = BatchOrder::new(1, 10, effective_batch(100, 10));
        let mut first = order.at(1);
        first.sort_unstable();
        assert_eq!(first, (0..10).collect::<Vec<_>>(), "each image once per step");
    }
}
