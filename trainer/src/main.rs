//! `ovseg-train`: train the open-vocabulary head, evaluate a model directory, export a checkpoint.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use trainer::config::MAX_SYNTHETIC;
use trainer::data::Split;
use trainer::eval::{EvalReport, evaluate};
use trainer::checkpoint::load_checkpoint;
use trainer::export::{BaseModel, export_model};
use trainer::outputs::{BASE_MODEL, Kind, Outputs, model_dir};
use trainer::train::{TrainConfig, TrainOptions, train};

#[derive(Parser)]
#[command(name = "ovseg-train", version, about = "Train, evaluate and export ovseg models (CPU).")]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the head on the backbone's frozen features (optionally tuning its last blocks) and export a model directory that
    /// `ovseg --model-dir` and the node load. Without --data, trains on the built-in synthetic set.
    /// Ctrl-C stops after the current step, saves a checkpoint and still exports.
    Train(Box<TrainArgs>),
    /// mIoU, per-class IoU and pixel accuracy of a model directory on a folder data set or on
    /// held-out synthetic scenes.
    Eval(EvalArgs),
    /// Rebuild a model directory from a training checkpoint.
    Export(ExportArgs),
    /// Train the heads from a fixture (`train --write-fixture`) on the CPU and, in builds with
    /// the feature `cuda` where a driver answers, on CUDA: same seed, same batches; the loss
    /// curves' largest relative difference and the throughput ratio, as JSON. Needs neither the
    /// model files nor ONNX Runtime.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// The fixture file.
    #[arg(long)]
    fixture: PathBuf,
    /// Steps on each device.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Also write the JSON here (an existing file is replaced only if it is a bench report).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Replace an existing --json file even if it is not a bench report.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// YAML configuration (every field optional; the flags below override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model directory to write, named (not `.`); an existing one is replaced only if
    /// ovseg-train wrote it (see --force), never the default model or a folder holding an input.
    /// The checkpoint goes beside it: `<out>.checkpoint.safetensors`.
    #[arg(long)]
    out: PathBuf,
    /// Replace existing outputs that ovseg-train did not write: a model directory at --out,
    /// files at --json, --write-fixture and the checkpoint path (inputs never are).
    #[arg(long)]
    force: bool,
    /// Folder data sets (labels.txt, images/, masks/; or ADE20K, Cityscapes, VOC roots, with
    /// `#split` to pick a split); repeat for several, each once.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Folder data sets for validation (default: every 5th image with a mask is held out).
    #[arg(long)]
    val_data: Vec<PathBuf>,
    /// Keep this label out of training and evaluate it zero-shot (repeat for several).
    #[arg(long)]
    holdout_label: Vec<String>,
    /// ZS3Net: generated cells per held-out label per step (0 = off, at most 4096) [default: 0].
    #[arg(long)]
    zs3_generated: Option<usize>,
    /// Tune this many of the backbone's last blocks (with its head conv) along with the head
    /// (0 = frozen backbone) [default: 0].
    #[arg(long)]
    tune_blocks: Option<usize>,
    /// Adam learning rate of the tuned backbone blocks [default: 0.0002].
    #[arg(long)]
    tune_learning_rate: Option<f64>,
    /// Weight of the depth head's loss where the data has depth; 0 = no depth head [default: 1].
    #[arg(long)]
    depth_weight: Option<f32>,
    /// Where to train: auto (CUDA where this build has the feature `cuda` and a driver answers,
    /// else the CPU), cpu, or cuda.
    #[arg(long, value_enum, default_value_t = trainer::train::TrainDevice::Auto)]
    device: trainer::train::TrainDevice,
    /// Optimiser steps [default: 300].
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of every random choice (scenes, augmentation, batches, initial weights) [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Images per step (1..=1024; a batch larger than the training set's augmented images is
    /// cut to them, with a warning) [default: 8].
    #[arg(long)]
    batch: Option<usize>,
    /// Width of the head's hidden layer (1..=8192) [default: 128].
    #[arg(long)]
    hidden: Option<usize>,
    /// Adam learning rate [default: 0.002].
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Synthetic training scenes when no --data is given (at most 10000) [default: 64].
    #[arg(long)]
    synthetic_train: Option<usize>,
    /// Synthetic validation scenes when no --data is given (at most 10000) [default: 16].
    #[arg(long)]
    synthetic_val: Option<usize>,
    /// ONNX Runtime threads for the backbone features and evaluation [default: all cores].
    #[arg(long, value_parser = engine::runtime::parse_threads)]
    threads: Option<usize>,
    /// Write the report here instead of <out>/train_report.json (outside --out and the data
    /// sets; an existing file is replaced only if it is a training report).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Continue from a checkpoint (`<out>.checkpoint.safetensors` is written during training);
    /// the configuration must match except for --steps and --threads.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bars (on a terminal) or progress lines (elsewhere).
    #[arg(long)]
    quiet: bool,
    /// Also write the prepared training pool (features, targets, labels) here, for `bench`
    /// (outside --out and the data sets).
    #[arg(long)]
    write_fixture: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    /// The model directory to evaluate.
    #[arg(long)]
    model_dir: PathBuf,
    /// Folder data sets to evaluate on (default: synthetic scenes).
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Number of synthetic scenes (when no --data; at most 10000, and 2^28 pixels in all).
    #[arg(long, default_value_t = 16)]
    synthetic: usize,
    /// First synthetic seed (the trainer's validation scenes of seed s start at s * 2^20 + 2^19).
    #[arg(long, default_value_t = (1 << 20) + (1 << 19))]
    first_seed: u64,
    /// Size of the synthetic scenes (each side 1..=16384).
    #[arg(long, default_value_t = 256)]
    width: u32,
    #[arg(long, default_value_t = 192)]
    height: u32,
    /// ONNX Runtime threads (0 = all cores).
    #[arg(long, default_value_t = 0, value_parser = engine::runtime::parse_threads)]
    threads: usize,
    /// Labels the model was not trained on (repeat; each a label of the data): the report adds
    /// seen, unseen and harmonic mIoU.
    #[arg(long)]
    unseen: Vec<String>,
    /// Write the report as Markdown here (JSON goes to stdout); an existing file is replaced
    /// only if it is an evaluation report.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Replace an existing --markdown file even if it is not an evaluation report.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ExportArgs {
    /// A training checkpoint (`<out>.checkpoint.safetensors`) or an exported `head.safetensors`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Model directory to write, named (not `.`); an existing one is replaced only if
    /// ovseg-train wrote it (see --force), never the default model.
    #[arg(long)]
    out: PathBuf,
    /// Replace a model directory at --out that ovseg-train did not write.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = ["warn", "info", "debug"][usize::from(cli.verbose.min(2))];
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a terminal; they garble log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
    let result = match cli.command {
        Command::Train(args) => run_train(*args),
        Command::Eval(args) => run_eval(args).map(|()| ExitCode::SUCCESS),
        Command::Export(args) => run_export(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => run_bench(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of a run that Ctrl-C cut short (128 + SIGINT, as shells report it), so that
/// `ovseg-train train ... && deploy` does not deploy it; its model is exported all the same.
const INTERRUPTED: u8 = 130;

fn run_train(args: TrainArgs) -> Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => TrainConfig::read(path)?,
        None => TrainConfig::default(),
    };
    if !args.data.is_empty() {
        config.data = args.data;
    }
    if !args.val_data.is_empty() {
        config.val_data = args.val_data;
    }
    if !args.holdout_label.is_empty() {
        config.holdout_labels = args.holdout_label;
    }
    macro_rules! override_with {
        ($($field:ident),*) => { $(if let Some(v) = args.$field { config.$field = v; })* };
    }
    override_with!(steps, seed, batch, hidden, learning_rate, synthetic_train, synthetic_val, threads, zs3_generated, tune_blocks, tune_learning_rate, depth_weight);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let options = TrainOptions {
        progress: !args.quiet && terminal,
        progress_lines: !args.quiet && !terminal,
        resume: args.resume,
        device: args.device,
        write_fixture: args.write_fixture,
        force: args.force,
        config_file: args.config.clone(),
        report_json: args.json.clone(),
    };
    let report = train(&config, &args.out, &options)?;
    let json = serde_json::to_string_pretty(&report)?;
    let report_path = args.json.unwrap_or_else(|| args.out.join("train_report.json"));
    write_file(&report_path, json.as_bytes())?;
    let depth = report.depth.as_ref().map_or(String::new(), |d| format!("\n{}", d.markdown()));
    let markdown = format!("{}\n{}{depth}", report.untrained.markdown(), report.trained.markdown());
    write_file(&args.out.join("eval.md"), markdown.as_bytes())?;
    trainer::plot::write_curves(&args.out.join("curves.png"), &report.history)?;
    println!("{json}");
    eprintln!(
        "held-out mIoU: untrained {:.1}% -> trained {:.1}%; model in {}",
        100.0 * report.untrained.miou,
        100.0 * report.trained.miou,
        args.out.display(),
    );
    if !report.interrupted {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "interrupted after step {} of {}: to go on, run the same command with --resume {}",
        report.steps_done,
        config.steps,
        trainer::train::checkpoint_path(&args.out).display()
    );
    Ok(ExitCode::from(INTERRUPTED))
}

fn run_eval(args: EvalArgs) -> Result<()> {
    if args.data.is_empty() && args.synthetic == 0 {
        bail!("--synthetic 0: nothing to evaluate; give --data or at least one synthetic scene");
    }
    // Before any scene is drawn: a scene of a size the engine refuses would first be allocated,
    // and the scores keep every pixel of every scene.
    if args.data.is_empty() {
        let max = engine::frame::MAX_FRAME_SIDE;
        for (name, side) in [("--width", args.width), ("--height", args.height)] {
            if !(1..=max).contains(&side) {
                bail!("{name} {side}: synthetic scenes must be 1..={max} pixels on each side");
            }
        }
        if args.synthetic > MAX_SYNTHETIC {
            bail!("--synthetic {}: at most {MAX_SYNTHETIC} scenes", args.synthetic);
        }
        let pixels = args.synthetic as u64 * u64::from(args.width) * u64::from(args.height);
        // Scenes stay in memory while evaluated, at about 11 bytes a pixel (8.5 GB at the peak
        // for one 16384 x 16384 scene).
        if pixels > 1 << 28 {
            bail!("--synthetic {} scenes of {}x{} are {pixels} pixels; at most 2^28 in all (fewer or smaller scenes)", args.synthetic, args.width, args.height);
        }
    }
    let mut paths = Outputs::new(args.force);
    paths.open_input(&args.model_dir, "the model being evaluated");
    for spec in &args.data {
        paths.input(&trainer::layouts::split_spec(spec).0, "a data set being evaluated on");
    }
    if let Some(path) = &args.markdown {
        paths.file(path, "--markdown", Kind::EvalMarkdown)?;
    }
    let split = if args.data.is_empty() {
        Split::synthetic(args.first_seed, args.synthetic, (args.width, args.height))
    } else {
        let (split, dropped) = Split::folders(&args.data)?.without_unannotated()?;
        if split.is_empty() {
            bail!("no image of the data has an annotated pixel (every mask is 255 everywhere, or the set has image tags only); there is nothing to evaluate");
        }
        if !dropped.is_empty() {
            tracing::warn!("{} images have no annotated pixel and are left out: {}", dropped.len(), trainer::data::some_names(&dropped));
        }
        split
    };
    let report: EvalReport = evaluate(&args.model_dir, &split, engine::runtime::resolve_threads(args.threads), &args.unseen)?;
    if let Some(path) = &args.markdown {
        write_file(path, report.markdown().as_bytes())?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn run_export(args: ExportArgs) -> Result<()> {
    let mut paths = Outputs::new(args.force);
    paths.input(&engine::paths::default_model_dir(), BASE_MODEL).input(&args.checkpoint, "the checkpoint being exported");
    model_dir(&mut paths, &args.out, "--out")?;
    let checkpoint = load_checkpoint(&args.checkpoint)?;
    let quiet = |_: usize, _: usize, _: &str| {};
    let (dir, state, class_text) = engine::zoo::build::default_backbone(&quiet).context("loading the default model's backbone")?;
    let base = BaseModel { dir, weights: state, class_text };
    export_model(&args.out, &base, &checkpoint, args.force)?;
    let meta = &checkpoint.meta;
    eprintln!("exported step {} ({} labels) to {}", meta.step, meta.labels.len(), args.out.display());
    Ok(())
}

fn run_bench(args: BenchArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut paths = Outputs::new(args.force);
    paths.input(&args.fixture, "the fixture");
    if let Some(path) = &args.json {
        paths.file(path, "--json", Kind::BenchReport)?;
    }
    let fixture = trainer::fixture::read(&args.fixture)?;
    let report = trainer::fixture::compare(&fixture, args.steps)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        write_file(path, json.as_bytes())?;
    }
    println!("{json}");
    Ok(())
}

/// Writes a report through a temporary file, making its folder first (as `--out` folders are).
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    engine::labels::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}
