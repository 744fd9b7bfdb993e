//! `ovseg bench ros`: publish -> receive latency of the node over DDS on loopback, against an
//! rclpy pass-through node measured in the same run with the same peer and settings.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct RosBenchArgs {
    /// Python of a venv with tests/ros/requirements.txt (`cargo test` makes one under
    /// target/tmp/ros-venv-*).
    #[arg(long, env = "OVSEG_ROS_PYTHON")]
    pub python: PathBuf,
    /// The test peer script.
    #[arg(long, default_value = "tests/ros/peer.py")]
    pub peer: PathBuf,
    /// Frame rate of the publisher.
    #[arg(long, default_value_t = 30.0)]
    pub rate_hz: f64,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Frame size (rgb8), WxH.
    #[arg(long, default_value = "640x480")]
    pub size: String,
    #[arg(long, default_value = "tests/data/images/astronaut.jpg")]
    pub image: PathBuf,
    /// Fast DDS profile for the rclpy peers (large socket buffers).
    #[arg(long, default_value = "tests/ros/fastdds_large_buffers.xml")]
    pub fastdds_profile: PathBuf,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replace a --json file that is not an earlier report of this bench.
    #[arg(long)]
    pub force: bool,
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ros_env(cmd: &mut Command, domain: u16) -> &mut Command {
    cmd.env("ROS_DOMAIN_ID", domain.to_string()).env("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST").env_remove("ROS_LOCALHOST_ONLY")
}

/// Runs the peer's latency measurement against whatever node is up on `domain`.
fn measure(args: &RosBenchArgs, domain: u16) -> Result<Value> {
    let mut cmd = Command::new(&args.python);
    cmd.arg(&args.peer).args(["latency", "--depth-mm", "--topics", "mask", "depth"]);
    cmd.arg("--image").arg(&args.image).args(["--size", &args.size]);
    cmd.args(["--rate-hz", &args.rate_hz.to_string(), "--seconds", &args.seconds.to_string()]);
    cmd.arg("--fastdds-profile").arg(&args.fastdds_profile);
    let out = ros_env(&mut cmd, domain).stderr(Stdio::inherit()).output().context("running the latency peer")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("peer printed no JSON: {}", String::from_utf8_lossy(&out.stdout)))?;
    if v["ok"] != true {
        bail!("latency peer failed: {v}");
    }
    Ok(v)
}

fn wait_for(log: &Path, needle: &str, child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if std::fs::read_to_string(log).unwrap_or_default().contains(needle) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("{what} not ready after 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(args: RosBenchArgs) -> Result<()> {
    let mut outputs = crate::render::Outputs::new(args.force);
    for (what, path) in [("--python", &args.python), ("--peer", &args.peer), ("--image", &args.image)] {
        if !path.exists() {
            bail!("{what} {} does not exist", path.display());
        }
        outputs.input(path, format!("the {what} file"));
    }
    outputs.input(&args.fastdds_profile, "the --fastdds-profile file");
    crate::render::check_json_out(&mut outputs, args.json.as_deref(), "bench ros")?;
    let domain = 1 + (std::process::id() % 100) as u16;
    let dir = tempfile_dir()?;

    // Our node: rgbd depth so both mask and depth are produced from each frame.
    let log = dir.join("node.log");
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["node", "--ros-args", "-p", "depth_mode:=rgbd", "-p", "depth_sync_tolerance:=0.001"]);
    ros_env(&mut cmd, domain).stdout(Stdio::null()).stderr(std::fs::File::create(&log)?);
    let mut node = Guard(cmd.spawn().context("starting ovseg node")?);
    wait_for(&log, "running on ROS domain", &mut node.0, "ovseg node")?;
    let ours = measure(&args, domain)?;
    drop(node);

    // Baseline: rclpy forwarding each image unchanged on mask and depth.
    let seconds = args.seconds + 60.0;
    let mut cmd = Command::new(&args.python);
    cmd.arg(&args.peer).args(["passthrough", "--seconds", &seconds.to_string()]);
    cmd.arg("--fastdds-profile").arg(&args.fastdds_profile);
    let log = dir.join("passthrough.log");
    ros_env(&mut cmd, domain).stdout(Stdio::null()).stderr(std::fs::File::create(&log)?);
    let baseline = Guard(cmd.spawn().context("starting the rclpy pass-through")?);
    let baseline_result = measure(&args, domain);
    drop(baseline);
    let baseline = baseline_result?;

    let summary = |v: &Value, topic: &str| {
        let t = &v["topics"][topic];
        json!({"p50_ms": t["p50_ms"], "p99_ms": t["p99_ms"], "received": t["received"], "lost": t["lost"]})
    };
    let added = |topic: &str| {
        let (a, b) = (ours["topics"][topic]["p50_ms"].as_f64(), baseline["topics"][topic]["p50_ms"].as_f64());
        a.zip(b).map(|(a, b)| json!({"added_p50_ms": a - b, "ratio_p50": a / b}))
    };
    let mut report = json!({
        "bench": "ros_latency",
        "frame": args.size,
        "rate_hz": args.rate_hz,
        "seconds": args.seconds,
        "published": ours["published"],
        "transport": "DDS over loopback; rclpy peers with the given Fast DDS profile",
        "fastdds_profile": args.fastdds_profile.display().to_string(),
        "ovseg": {"mask": summary(&ours, "mask"), "depth": summary(&ours, "depth")},
        "rclpy_passthrough": {"mask": summary(&baseline, "mask"), "depth": summary(&baseline, "depth")},
        "ovseg_vs_passthrough": {"mask": added("mask"), "depth": added("depth")},
        "note": "frames the node had no time for are dropped by design (latest frame wins): `lost` counts them",
    });
    let _ = std::fs::remove_dir_all(&dir);
    crate::render::stamp(&mut report, "bench ros");
    crate::render::emit_json(&report, args.json.as_deref())
}

/// A scratch directory for the two processes' logs (removed at the end).
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ovseg-bench-ros-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
