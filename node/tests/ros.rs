//! The ROS 2 node against real peers: rclpy (ROS 2 Jazzy wheels) and Cyclone DDS publish and
//! subscribe over DDS on loopback, each test on its own random domain id. Replay bags are
//! checked with the Python `mcap-ros2-support` reader.
//!
//! The Python side (`tests/ros/peer.py`) runs in a virtual environment made from
//! `tests/ros/requirements.txt`, created on first use under the cargo target directory
//! (about 35 s, 340 MB) and shared by later runs.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{model_with_constant_depth, pair_yaml, read_pfm};
use serde_json::Value;

mod common;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's python, creating the venv once (file-locked: test processes may run in parallel).
fn python() -> PathBuf {
    let requirements = repo().join("tests/ros/requirements.txt");
    let text = std::fs::read_to_string(&requirements).expect("reading tests/ros/requirements.txt");
    // A changed requirements file gets a fresh venv.
    let tag = format!("{:016x}", text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3)));
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ros-venv-{tag}"));
    let python = root.join("bin/python");
    let ready = root.join(".ready");
    std::fs::create_dir_all(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    let lock = File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ros-venv-{tag}.lock"))).unwrap();
    lock.lock().expect("locking the venv");
    if !ready.exists() {
        let _ = std::fs::remove_dir_all(&root);
        let status = Command::new("python3").args(["-m", "venv"]).arg(&root).status().expect("running python3 -m venv");
        assert!(status.success(), "python3 -m venv {} failed", root.display());
        let out = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "-r"])
            .arg(&requirements)
            .output()
            .expect("running pip");
        assert!(out.status.success(), "pip install -r tests/ros/requirements.txt failed:\n{}", String::from_utf8_lossy(&out.stderr));
        File::create(&ready).unwrap();
    }
    python
}

/// A domain id no other test of this run uses (0..=101 are safe on Linux).
fn domain_id() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let seed = (std::process::id() as u64 ^ clock) % 60;
    1 + ((seed as u16 + NEXT.fetch_add(7, std::sync::atomic::Ordering::Relaxed)) % 100)
}

fn ros_env(cmd: &mut Command, domain: u16) -> &mut Command {
    cmd.env("ROS_DOMAIN_ID", domain.to_string())
        .env("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        .env_remove("ROS_LOCALHOST_ONLY")
        .env_remove("RMW_IMPLEMENTATION")
}

/// Runs `peer.py ARGS`, returning its JSON (which says `ok`).
fn peer(domain: u16, args: &[&str]) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(repo().join("tests/ros/peer.py")).args(args);
    let out = ros_env(&mut cmd, domain).output().expect("running peer.py");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("peer.py printed no JSON ({e}):\n{text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

fn ok(v: Value) -> Value {
    assert_eq!(v["ok"], true, "peer.py failed: {v:#}");
    v
}

/// The node as a child process, stopped with SIGTERM when dropped.
struct NodeProcess {
    child: Child,
    log: PathBuf,
    /// One node at a time: on two cores, several nodes loading models and segmenting at once
    /// starve each other past the peers' timeouts.
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl NodeProcess {
    fn start(domain: u16, ros_args: &[&str], log_dir: &Path) -> NodeProcess {
        static ONE_NODE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = ONE_NODE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let log = log_dir.join("node.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovseg"));
        cmd.args(["node", "-v", "--ros-args"]).args(ros_args);
        ros_env(&mut cmd, domain).stdout(Stdio::null()).stderr(File::create(&log).unwrap());
        NodeProcess { child: cmd.spawn().expect("starting ovseg node"), log, _serial: serial }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the node exited:\n{}", self.log());
    }

    /// SIGTERM, then the exit status (within 20 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("the node did not stop within 20 s of SIGTERM:\n{}", self.log());
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Small copies of test photos (loopback-friendly sizes), written as PNG so the node (fed by
/// the peer) and `ovseg segment` see the very same pixels.
fn test_pngs(dir: &Path, names: &[&str], size: (u32, u32)) -> Vec<PathBuf> {
    names
        .iter()
        .map(|name| {
            let img = image::open(repo().join("tests/data/images").join(name)).unwrap().to_rgb8();
            let small = image::imageops::resize(&img, size.0, size.1, image::imageops::FilterType::Triangle);
            let path = dir.join(name.replace(".jpg", ".png"));
            small.save(&path).unwrap();
            path
        })
        .collect()
}

/// Masks `ovseg segment` writes for `images` with `labels`, by file stem.
fn segment_masks(images: &[PathBuf], labels: &str, out: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovseg"));
    cmd.arg("segment").args(images).args(["--labels", labels, "--out"]).arg(out);
    let o: Output = cmd.output().unwrap();
    assert!(o.status.success(), "ovseg segment failed:\n{}", String::from_utf8_lossy(&o.stderr));
    images
        .iter()
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let mask = image::open(out.join(format!("{stem}.mask.png"))).unwrap().to_luma8().into_raw();
            (stem, mask)
        })
        .collect()
}

/// The image file each published stamp carried: `(sec) -> stem`.
fn published_stems(result: &Value) -> BTreeMap<i64, String> {
    result["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["sec"].as_i64().unwrap(), Path::new(p["image"].as_str().unwrap()).file_stem().unwrap().to_string_lossy().into_owned()))
        .collect()
}

/// The depth (32FC1) and mask the peer received for the first published stamp that has both.
fn depth_and_mask(out: &Path, result: &Value, node_log: &str) -> (Vec<f32>, Vec<u8>) {
    depth_and_mask_of(out, result, node_log, false)
}

/// [`depth_and_mask`] for the first or the last stamp that has both.
fn depth_and_mask_of(out: &Path, result: &Value, node_log: &str, last: bool) -> (Vec<f32>, Vec<u8>) {
    let both = |sec: &i64| out.join(format!("depth_{sec}_0.bin")).exists() && out.join(format!("mask_{sec}_0.bin")).exists();
    let mut secs = published_stems(result).into_keys();
    let sec = if last { secs.rfind(both) } else { secs.find(both) }.unwrap_or_else(|| panic!("no depth received: {result}\n{node_log}"));
    let depth = std::fs::read(out.join(format!("depth_{sec}_0.bin"))).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (depth, std::fs::read(out.join(format!("mask_{sec}_0.bin"))).unwrap())
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

const SIZE: (u32, u32) = (160, 120);

#[test]
fn masks_depth_and_label_info_over_dds_match_segment_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let domain = domain_id();
    let pngs = test_pngs(tmp.path(), &["astronaut.jpg", "coffee.jpg"], SIZE);
    let labels = "person,sky,cup,table,wall";
    let label_list = format!("labels:={:?}", labels.split(',').collect::<Vec<_>>());
    // Filtering and hole filling off, so depth can be checked value for value; "table" (in
    // both photos) is declared a label without depth.
    let depth_args =
        ["-p", "depth_mode:=rgbd", "-p", "depth_filter_radius:=0", "-p", "depth_fill_radius:=0", "-p", "depth_invalid_labels:=[table]"];
    let mut node = NodeProcess::start(domain, &[&["-p", &label_list, "-p", "points_stride:=8"][..], &depth_args].concat(), tmp.path());

    let out = tmp.path().join("received");
    let mut args = vec!["pubsub", "--images"];
    let png_args: Vec<String> = pngs.iter().map(|p| p.display().to_string()).collect();
    args.extend(png_args.iter().map(String::as_str));
    // Up to six rounds for four frames (the peer stops once it has them): a best-effort reader
    // may miss the first samples while its side of discovery is still matching the writer, and
    // a loaded machine makes that take longer.
    args.extend(["--camera-info", "--depth-mm", "--repeat", "6", "--rate-hz", "4", "--expect", "4", "--timeout", "90"]);
    args.extend(["--collect", "mask", "depth", "confidence", "points", "label_info", "mask_color", "overlay", "--out", out.to_str().unwrap()]);
    let result = ok(peer(domain, &args));
    node.assert_running();

    let expected = segment_masks(&pngs, labels, &tmp.path().join("segment"));
    let stems = published_stems(&result);
    let (w, h) = SIZE;
    let mut compared = 0;
    let received = |sec: &i64| ["mask", "depth", "confidence", "points", "mask_color", "overlay"].iter().all(|t| out.join(format!("{t}_{sec}_0.json")).exists());
    let label_names: Vec<&str> = labels.split(',').collect();
    for (sec, stem) in stems.iter().filter(|(sec, _)| received(sec)) {
        let meta = read_json(&out.join(format!("mask_{sec}_0.json")));
        assert_eq!((meta["width"].as_u64(), meta["height"].as_u64()), (Some(w as u64), Some(h as u64)));
        assert_eq!(meta["encoding"], "mono8");
        assert_eq!(meta["step"], w);
        assert_eq!(meta["frame_id"], "camera");
        let mask = std::fs::read(out.join(format!("mask_{sec}_0.bin"))).unwrap();
        assert!(mask == expected[stem], "mask of {stem} (stamp {sec}) differs from `ovseg segment`");
        compared += 1;

        // Label colours, and colours blended half over the frame the peer sent (overlay_alpha
        // 0.5); unknown pixels are black, and keep the frame in the overlay.
        let frame = image::open(tmp.path().join(format!("{stem}.png"))).unwrap().to_rgb8().into_raw();
        let color = std::fs::read(out.join(format!("mask_color_{sec}_0.bin"))).unwrap();
        let overlay = std::fs::read(out.join(format!("overlay_{sec}_0.bin"))).unwrap();
        assert_eq!((color.len(), overlay.len()), (mask.len() * 3, mask.len() * 3));
        for (i, &m) in mask.iter().enumerate() {
            let c = label_names.get(m as usize).map_or([0; 3], |n| engine::colors::label_color(n));
            assert_eq!(color[3 * i..3 * i + 3], c, "mask_color of {stem} at pixel {i}");
            for k in 0..3 {
                let want = if m == 255 { frame[3 * i + k] } else { (frame[3 * i + k] as f32 * 0.5 + c[k] as f32 * 0.5).round() as u8 };
                assert_eq!(overlay[3 * i + k], want, "overlay of {stem} at pixel {i}");
            }
        }

        let meta = read_json(&out.join(format!("depth_{sec}_0.json")));
        assert_eq!((meta["encoding"].as_str(), meta["step"].as_u64()), (Some("32FC1"), Some(4 * w as u64)));
        let depth = std::fs::read(out.join(format!("depth_{sec}_0.bin"))).unwrap();
        let table = 3;
        assert!(mask.contains(&table), "{stem}: the test needs some 'table' to check that it gets no depth");
        for (i, px) in depth.chunks(4).enumerate() {
            let (row, col) = (i / w as usize, i % w as usize);
            let m = f32::from_le_bytes(px.try_into().unwrap());
            // The peer's synthetic depth: 0 (no measurement) on every 17th column.
            if col % 17 == 0 || mask[i] == table {
                assert!(m.is_nan(), "pixel ({col},{row}) has no measurement or is 'table' but depth {m}");
            } else {
                let mm = 1000 + 4 * row + col % 7;
                assert_eq!(m, mm as f32 / 1000.0, "depth at ({col},{row})");
            }
        }
        let conf = std::fs::read(out.join(format!("confidence_{sec}_0.bin"))).unwrap();
        assert_eq!(conf.len(), (w * h * 4) as usize);
        assert!(conf.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).all(|p| (0.0..=1.0).contains(&p)));
        let points = read_json(&out.join(format!("points_{sec}_0.json")));
        let fields: Vec<&str> = points["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(fields, ["x", "y", "z", "label", "confidence"]);
        assert!(points["width"].as_u64().unwrap() > 100, "{points}");
    }
    assert!(compared >= 4, "{compared} frames compared");

    let info = &result["label_info"];
    let names: Vec<&str> = info["class_map"].as_array().unwrap().iter().map(|c| c["class_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["person", "sky", "cup", "table", "wall", "unknown"]);
    assert_eq!(info["class_map"][5]["class_id"], 255);

    let status = node.terminate();
    assert!(status.success(), "SIGTERM should stop the node cleanly, got {status}:\n{}", node.log());
    assert!(node.log().contains("stopped"), "{}", node.log());
}

#[test]
fn compressed_frames_over_dds_give_the_masks_segment_gives_for_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let domain = domain_id();
    let pngs = test_pngs(tmp.path(), &["astronaut.jpg", "coffee.jpg"], SIZE);
    // A JPEG (lossy: the node and `ovseg segment` decode the very same bytes) beside a PNG.
    let jpeg = tmp.path().join("astronaut_small.jpg");
    image::open(&pngs[0]).unwrap().save(&jpeg).unwrap();
    let files = [jpeg, pngs[1].clone()];
    let labels = "person,sky,cup,table,wall";
    let label_list = format!("labels:={:?}", labels.split(',').collect::<Vec<_>>());
    let mut node = NodeProcess::start(domain, &["-p", &label_list, "-p", "image_transport:=compressed"], tmp.path());
    let out = tmp.path().join("received");
    let mut args = vec!["pubsub".to_string(), "--compressed".into(), "--images".into()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    args.extend(["--repeat", "6", "--rate-hz", "4", "--expect", "2", "--timeout", "90", "--collect", "mask", "--out"].map(String::from));
    args.push(out.display().to_string());
    let result = ok(peer(domain, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    node.assert_running();

    let expected = segment_masks(&files, labels, &tmp.path().join("segment"));
    let mut compared = BTreeMap::new();
    for (sec, stem) in published_stems(&result).iter().filter(|(sec, _)| out.join(format!("mask_{sec}_0.bin")).exists()) {
        let meta = read_json(&out.join(format!("mask_{sec}_0.json")));
        assert_eq!((meta["width"].as_u64(), meta["height"].as_u64(), meta["frame_id"].as_str()), (Some(SIZE.0 as u64), Some(SIZE.1 as u64), Some("camera")));
        let mask = std::fs::read(out.join(format!("mask_{sec}_0.bin"))).unwrap();
        assert!(mask == expected[stem], "mask of {stem} (stamp {sec}) differs from `ovseg segment` on the same file");
        *compared.entry(stem.clone()).or_insert(0) += 1;
    }
    assert_eq!(compared.len(), 2, "both files, JPEG and PNG, compared: {compared:?}");
}

#[test]
fn compressed_depth_over_dds_is_the_millimetres_it_was_made_from() {
    let tmp = tempfile::tempdir().unwrap();
    let domain = domain_id();
    let pngs = test_pngs(tmp.path(), &["coffee.jpg"], SIZE);
    let args = [
        "-p", "labels:=[person, cup, table, wall]", "-p", "depth_mode:=rgbd", "-p", "depth_transport:=compressedDepth",
        "-p", "depth_filter_radius:=0", "-p", "depth_fill_radius:=0", "-p", "depth_invalid_labels:=[]",
    ];
    let mut node = NodeProcess::start(domain, &args, tmp.path());
    let out = tmp.path().join("received");
    let png = pngs[0].display().to_string();
    let peer_args = [
        "pubsub", "--images", &png, "--depth-mm", "--compressed-depth", "--repeat", "6", "--rate-hz", "4", "--expect", "1", "--timeout", "90",
        "--collect", "mask", "depth", "--out", out.to_str().unwrap(),
    ];
    let result = ok(peer(domain, &peer_args));
    node.assert_running();
    let (depth, mask) = depth_and_mask(&out, &result, &node.log());
    let w = SIZE.0 as usize;
    let mut valid = 0;
    for (i, &m) in depth.iter().enumerate() {
        let (row, col) = (i / w, i % w);
        // The peer's synthetic millimetres: 0 (no measurement) on every 17th column.
        if col % 17 == 0 || mask[i] == 255 {
            assert!(m.is_nan(), "({col},{row}): no measurement or unknown, but depth {m}");
        } else {
            assert_eq!(m, (1000 + 4 * row + col % 7) as f32 / 1000.0, "depth at ({col},{row})");
            valid += 1;
        }
    }
    assert!(valid > depth.len() / 2, "{valid} pixels with depth");
}

#[test]
fn stereo_mode_depth_over_dds_equals_ovseg_stereo_on_the_same_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let domain = domain_id();
    let stereo_dir = repo().join("tests/data/stereo");
    let (left, right) = (stereo_dir.join("motorcycle_left.png"), stereo_dir.join("motorcycle_right.png"));
    let (w, h, baseline) = (370usize, 250usize, 0.2f64);
    let args = [
        "-p", "labels:=[motorcycle, wall, floor]", "-p", "depth_mode:=stereo", "-p", "stereo_max_disp:=48",
        "-p", "stereo_label_penalties:=false", "-p", "depth_filter_radius:=0", "-p", "depth_fill_radius:=0",
        "-p", "depth_invalid_labels:=[]", "-p", "stereo_paths:=5",
    ];
    let mut node = NodeProcess::start(domain, &args, tmp.path());
    let out = tmp.path().join("received");
    let (l, r) = (left.display().to_string(), right.display().to_string());
    let baseline_arg = baseline.to_string();
    let peer_args = [
        "pubsub", "--images", &l, "--right-images", &r, "--baseline", &baseline_arg, "--encoding", "mono8", "--camera-info",
        "--repeat", "2", "--rate-hz", "2", "--expect", "1", "--timeout", "90", "--collect", "depth", "--out", out.to_str().unwrap(),
    ];
    let result = ok(peer(domain, &peer_args));
    node.assert_running();
    let sec = published_stems(&result)
        .into_keys()
        .find(|sec| out.join(format!("depth_{sec}_0.bin")).exists())
        .unwrap_or_else(|| panic!("no depth received: {result}"));
    let got: Vec<f32> = std::fs::read(out.join(format!("depth_{sec}_0.bin"))).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();

    // The same pair, calibration (the peer's camera_info: f = width, centred principal point)
    // and paths through `ovseg stereo --calib`.
    let (ly, ry) = (tmp.path().join("left.yaml"), tmp.path().join("right.yaml"));
    let (f, cx) = (w as f64, (w as f64 - 1.0) / 2.0);
    pair_yaml(&ly, (w as u32, h as u32), f, cx, 0.0);
    pair_yaml(&ry, (w as u32, h as u32), f, cx, baseline);
    let cli_out = tmp.path().join("cli");
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg"))
        .args(["stereo", &l, &r, "--max-disp", "48", "--paths", "5", "--out", cli_out.to_str().unwrap(), "--calib", ly.to_str().unwrap(), ry.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = read_pfm(&cli_out.join("motorcycle_left.depth.pfm"));
    assert_eq!((want.width, want.height), (w, h));
    let want = want.data;
    assert_eq!((got.len(), want.len()), (w * h, w * h));
    let mut valid = 0;
    for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
        if e.is_infinite() {
            assert!(g.is_nan(), "pixel {i}: ovseg stereo has no depth, the node {g}");
        } else {
            assert!(((g - e) / e).abs() < 1e-6, "pixel {i}: node {g} m, ovseg stereo {e} m");
            valid += 1;
        }
    }
    assert!(valid > w * h / 2, "{valid} pixels with depth");
}

#[test]
fn ground_mode_depth_over_dds_is_the_ray_plane_intersection_on_ground_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let pngs = test_pngs(tmp.path(), &["coffee.jpg"], SIZE);
    let labels = "person,sky,cup,table,wall";
    let label_list = format!("labels:={:?}", labels.split(',').collect::<Vec<_>>());
    let (height, pitch) = (0.8f64, 0.6f64);
    // Height and pitch given directly, or as the pose of the camera's optical frame in
    // base_footprint (URDF rpy: pitched down about the body's y axis, then the optical frame).
    let pose = calibration::Extrinsics {
        isometry: nalgebra::Isometry3::from_parts(
            nalgebra::Translation3::new(0.2, 0.0, height),
            nalgebra::UnitQuaternion::from_axis_angle(&nalgebra::Vector3::y_axis(), pitch)
                * nalgebra::UnitQuaternion::from_euler_angles(-std::f64::consts::FRAC_PI_2, 0.0, -std::f64::consts::FRAC_PI_2),
        ),
    };
    let [roll_p, pitch_p, yaw_p] = pose.rpy();
    // The same pose from /tf_static, in two steps: base_footprint -> base_link (turned and
    // raised; the ground stays z = 0) -> camera, the peer's frame_id.
    let base_link = nalgebra::Isometry3::from_parts(nalgebra::Translation3::new(0.05, -0.1, 0.3), nalgebra::UnitQuaternion::from_euler_angles(0.0, 0.0, 0.2));
    let tf_arg = |parent: &str, child: &str, iso: &nalgebra::Isometry3<f64>| {
        let (t, q) = (iso.translation.vector, iso.rotation.coords);
        [parent.to_string(), child.to_string()].into_iter().chain([t.x, t.y, t.z, q.x, q.y, q.z, q.w].map(|v| format!("{v:?}"))).collect::<Vec<_>>()
    };
    let tf_static: Vec<String> = [tf_arg("base_footprint", "base_link", &base_link), tf_arg("base_link", "camera", &(base_link.inverse() * pose.isometry))]
        .into_iter()
        .flat_map(|t| std::iter::once("--tf-static".to_string()).chain(t))
        .collect();
    // With camera_pose or ground_frame set, camera_height is ignored (5 m would give other depths).
    let mountings: [(Vec<String>, Vec<String>); 4] = [
        (vec![format!("camera_height:={height}"), format!("camera_pitch:={pitch}")], vec![]),
        (vec![format!("camera_pose:=[0.2, 0.0, {height:?}, {roll_p:?}, {pitch_p:?}, {yaw_p:?}]"), "camera_height:=5.0".into()], vec![]),
        // A transform that is no rotation (refused, logged) beside the good ones.
        (vec!["ground_frame:=/base_footprint".into(), "camera_height:=5.0".into()], [tf_static.clone(), "--tf-static base_link lidar 0 0 0 0 0 0 0".split(' ').map(String::from).collect()].concat()),
        // The same chain on /tf, stamped with each frame.
        (vec!["ground_frame:=base_footprint".into(), "camera_height:=5.0".into()], tf_static.iter().map(|a| if a == "--tf-static" { "--tf".into() } else { a.clone() }).collect()),
    ];
    for (round, (params, peer_extra)) in mountings.iter().enumerate() {
        let domain = domain_id();
        let mut args: Vec<&str> = vec!["-p", &label_list, "-p", "depth_mode:=ground", "-p", "ground_labels:=[table, wall]", "-p", "depth_invalid_labels:=[sky]"];
        args.extend(params.iter().flat_map(|p| ["-p", p.as_str()]));
        let mut node = NodeProcess::start(domain, &args, tmp.path());
        let out = tmp.path().join(format!("received{round}"));
        let png = pngs[0].display().to_string();
        let peer_args = ["pubsub", "--images", &png, "--camera-info", "--repeat", "3", "--rate-hz", "4", "--expect", "1", "--timeout", "90"];
        let collect = ["--collect", "mask", "depth", "--out", out.to_str().unwrap()];
        let result = ok(peer(domain, &[&peer_args[..], &collect, &peer_extra.iter().map(String::as_str).collect::<Vec<_>>()].concat()));
        node.assert_running();
        if round == 2 {
            let log = node.log();
            assert!(log.contains("/tf_static: transform 'base_link' -> 'lidar'") && log.contains("rotation_quaternion"), "{log}");
        }

        let (w, h) = (SIZE.0 as usize, SIZE.1 as usize);
        let sec = published_stems(&result)
            .into_keys()
            .find(|sec| out.join(format!("depth_{sec}_0.bin")).exists())
            .unwrap_or_else(|| panic!("no depth received: {result}"));
        let mask = std::fs::read(out.join(format!("mask_{sec}_0.bin"))).unwrap();
        let depth: Vec<f32> = std::fs::read(out.join(format!("depth_{sec}_0.bin"))).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(depth.len(), w * h);
        // The peer's camera: f = width, principal point at the centre. Level roll, pitched down:
        // the ray (.., (y - cy) / f, 1) meets the ground at z = height / (cos(pitch) dy + sin(pitch)).
        let (f, cy) = (w as f64, (h as f64 - 1.0) / 2.0);
        let ground_z = |y: usize| {
            let dy = (y as f64 - cy) / f;
            let along = pitch.cos() * dy + pitch.sin();
            (along > 1e-12).then(|| height / along)
        };
        let (table, wall, sky, unknown) = (3u8, 4u8, 1u8, 255u8);
        let mut ground_pixels = 0;
        for x in 0..w {
            let mut contact: Option<f64> = None;
            for y in (0..h).rev() {
                let (label, got) = (mask[y * w + x], depth[y * w + x]);
                let want = match label {
                    l if l == table || l == wall => {
                        contact = ground_z(y);
                        ground_pixels += contact.is_some() as usize;
                        contact
                    }
                    l if l == sky => {
                        contact = None;
                        None
                    }
                    l if l == unknown => None,
                    _ => contact,
                };
                match want {
                    Some(z) => assert!(((got as f64 - z) / z).abs() < 1e-5, "({x},{y}) label {label}: {got} vs {z}"),
                    None => assert!(got.is_nan(), "({x},{y}) label {label} must have no depth, got {got}"),
                }
            }
        }
        assert!(ground_pixels > 500, "the photo needs table or wall pixels below the horizon ({ground_pixels})");
    }
}

#[test]
fn model_mode_depth_over_dds_is_the_depth_head_conditioned_on_the_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let pngs = test_pngs(tmp.path(), &["coffee.jpg"], SIZE);
    let label_list = format!("labels:={:?}", ["person", "sky", "cup", "table", "wall"]);
    let model = model_with_constant_depth(tmp.path(), 4.0);
    let model_dir = format!("model_dir:={}", model.display());
    for (round, model_arg) in [Some(model_dir.as_str()), None].into_iter().enumerate() {
        let domain = domain_id();
        let mut args = vec!["-p", &label_list, "-p", "depth_mode:=model", "-p", "depth_invalid_labels:=[sky]"];
        if let Some(m) = model_arg {
            args.extend(["-p", m]);
        }
        let mut node = NodeProcess::start(domain, &args, tmp.path());
        let out = tmp.path().join(format!("received{round}"));
        let png = pngs[0].display().to_string();
        let peer_args = ["pubsub", "--images", &png, "--camera-info", "--repeat", "2", "--rate-hz", "4", "--expect", "1", "--timeout", "90"];
        let collect: &[&str] = if model_arg.is_some() { &["mask", "depth"] } else { &["mask"] };
        let result = ok(peer(domain, &[&peer_args[..], &["--collect"], collect, &["--out", out.to_str().unwrap()]].concat()));
        node.assert_running();
        let stems = published_stems(&result);
        if model_arg.is_none() {
            // The default model has no depth head: masks still flow, depth is skipped and said so.
            assert!(stems.keys().any(|sec| out.join(format!("mask_{sec}_0.bin")).exists()), "masks keep flowing: {result}");
            assert!(node.log().contains("the model has no depth head"), "{}", node.log());
            continue;
        }
        let sec = stems.keys().find(|sec| out.join(format!("depth_{sec}_0.bin")).exists()).unwrap_or_else(|| panic!("no depth received: {result}"));
        let mask = std::fs::read(out.join(format!("mask_{sec}_0.bin"))).unwrap();
        let depth: Vec<f32> = std::fs::read(out.join(format!("depth_{sec}_0.bin"))).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(depth.len(), (SIZE.0 * SIZE.1) as usize);
        let (sky, unknown) = (1u8, 255u8);
        let mut with_value = 0;
        for (i, (&label, &got)) in mask.iter().zip(&depth).enumerate() {
            if label == sky || label == unknown {
                assert!(got.is_nan(), "pixel {i} (label {label}) must have no depth, got {got}");
            } else {
                assert!((got - 4.0).abs() < 1e-4, "pixel {i} (label {label}): {got}");
                with_value += 1;
            }
        }
        assert!(with_value > 1000, "{with_value} pixels with depth");
    }
}

/// The peer's synthetic 16UC1 depth (see `synthetic_depth_mm` in peer.py), in metres.
fn synthetic_depth_m(w: usize, h: usize) -> Vec<f32> {
    (0..h).flat_map(|r| (0..w).map(move |c| if c % 17 == 0 { 0.0 } else { (1000 + 4 * r + c % 7) as f32 / 1000.0 })).collect()
}

/// The peer's camera_info camera (f = width, centred principal point) with plumb_bob `d`.
fn peer_camera(w: u32, h: u32, d: &[f64]) -> calibration::Camera {
    let (f, cx, cy) = (w as f64, (w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    calibration::Camera::from_camera_info("plumb_bob", d, &[f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0], w, h).unwrap()
}

#[test]
fn raw_depth_camera_images_are_registered_to_the_distorted_colour_camera() {
    let tmp = tempfile::tempdir().unwrap();
    let pngs = test_pngs(tmp.path(), &["coffee.jpg"], SIZE);
    let extrinsics = "translation: [0.04, -0.005, 0.01]\nrotation_rpy: [0.01, -0.02, 0.015]\n";
    let extrinsics_file = tmp.path().join("depth_to_color.yaml");
    std::fs::write(&extrinsics_file, extrinsics).unwrap();
    let file_arg = format!("depth_extrinsics_file:={}", extrinsics_file.display());
    // The same transform from /tf_static, between the two cameras' frames (the colour camera is
    // the peer's `camera`), as a quaternion; the node then uses exactly this one.
    let from_file = calibration::Extrinsics::from_yaml(extrinsics).unwrap().isometry;
    let (t, q) = (from_file.translation.vector, from_file.rotation.coords);
    let from_tf = calibration::Extrinsics::from_xyz_quaternion([t.x, t.y, t.z], [q.x, q.y, q.z, q.w]).unwrap();
    let tf_static: Vec<String> =
        ["--tf-static", "camera", "camera_depth"].into_iter().map(String::from).chain([t.x, t.y, t.z, q.x, q.y, q.z, q.w].map(|v| format!("{v:?}"))).collect();
    let rounds: [(&[&str], Vec<&str>, calibration::Extrinsics); 2] = [
        (&["depth_registration:=extrinsics", &file_arg], vec![], calibration::Extrinsics::from_yaml(extrinsics).unwrap()),
        (&["depth_registration:=tf"], [&["--depth-frame-id", "camera_depth"][..], &tf_static.iter().map(String::as_str).collect::<Vec<_>>()].concat(), from_tf),
    ];
    for (round, (params, peer_extra, transform)) in rounds.into_iter().enumerate() {
        let domain = domain_id();
        let mut args = vec![
            "-p", "labels:=[person, cup, table, wall]", "-p", "depth_mode:=rgbd", "-p", "image_rectified:=false", "-p", "depth_filter_radius:=0",
            "-p", "depth_fill_radius:=0", "-p", "depth_invalid_labels:=[]",
        ];
        args.extend(params.iter().flat_map(|p| ["-p", *p]));
        let mut node = NodeProcess::start(domain, &args, tmp.path());
        let out = tmp.path().join(format!("received{round}"));
        let png = pngs[0].display().to_string();
        let (dw, dh) = (SIZE.0 / 2 + 7, SIZE.1 / 2 + 3);
        let depth_size = format!("{dw}x{dh}");
        let d = [-0.12, 0.03, 1e-3, -5e-4, 0.0];
        // `=` form: a leading minus would read as an option.
        let distortion = format!("--distortion={}", d.map(|v| v.to_string()).join(","));
        let peer_args = [
            "pubsub", "--images", &png, "--camera-info", &distortion, "--depth-camera", &depth_size, "--repeat", "3", "--rate-hz", "4",
            "--expect", "1", "--timeout", "90", "--collect", "mask", "depth", "--out", out.to_str().unwrap(),
        ];
        let result = ok(peer(domain, &[&peer_args[..], &peer_extra].concat()));
        node.assert_running();
        let (got, mask) = depth_and_mask(&out, &result, &node.log());

        // The same registration through the calibration crate, whose geometry its own tests
        // check against ray-cast scenes.
        let (w, h) = SIZE;
        let registration = calibration::DepthRegistration::new(&peer_camera(dw, dh, &d), &peer_camera(w, h, &d), transform);
        let want = registration.register(&synthetic_depth_m(dw as usize, dh as usize)).unwrap();
        assert_eq!(got.len(), want.len());
        let mut valid = 0;
        for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
            if e.is_nan() || mask[i] == 255 {
                assert!(g.is_nan(), "round {round}, pixel {i}: nothing registered there (or unknown), but depth {g}");
            } else {
                assert_eq!(g, e, "round {round}, pixel {i}");
                valid += 1;
            }
        }
        // Upsampled about 2x with every 17th depth column missing: most pixels still get depth.
        assert!(valid > want.len() * 3 / 5, "round {round}: {valid} of {} pixels have depth", want.len());
    }
}

#[test]
fn ground_fit_recovers_the_mounting_and_fills_ground_holes_from_the_plane() {
    let tmp = tempfile::tempdir().unwrap();
    let domain = domain_id();
    let pngs = test_pngs(tmp.path(), &["coffee.jpg"], SIZE);
    // Every label is ground here, so every labelled pixel is checked against the plane.
    let labels = "labels:=[person, cup, table, wall, sky]";
    let args = [
        "-p", labels, "-p", "ground_labels:=[person, cup, table, wall, sky]", "-p", "depth_invalid_labels:=[]", "-p", "depth_mode:=rgbd",
        "-p", "ground_fit:=true", "-p", "ground_fit_tolerance:=0.01", "-p", "depth_filter_radius:=0", "-p", "depth_fill_radius:=0",
        "-p", "diagnostics_period:=0.2",
    ];
    let mut node = NodeProcess::start(domain, &args, tmp.path());
    let out = tmp.path().join("received");
    let png = pngs[0].display().to_string();
    let (height, pitch) = (1.3f64, 0.5f64);
    let plane = format!("{height},{pitch}");
    let peer_args = [
        "pubsub", "--images", &png, "--camera-info", "--depth-plane", &plane, "--repeat", "4", "--rate-hz", "4", "--expect", "2",
        "--timeout", "90", "--diagnostics", "--collect", "mask", "depth", "--out", out.to_str().unwrap(),
    ];
    let result = ok(peer(domain, &peer_args));
    node.assert_running();
    let diagnostics = &result["diagnostics"];
    let value = |key: &str| -> f64 {
        diagnostics[key].as_str().unwrap_or_else(|| panic!("no {key} in /diagnostics: {diagnostics}")).parse().unwrap()
    };
    assert!((value("ground_fit.camera_height") - height).abs() < 2e-3, "{diagnostics}");
    assert!((value("ground_fit.camera_pitch") - pitch).abs() < 2e-3, "{diagnostics}");
    assert!(value("ground_fit.camera_roll").abs() < 2e-3, "{diagnostics}");
    assert!(value("ground_fit.filled_pixels") > 100.0, "{diagnostics}");

    // The last frame: the first may come before camera_info has arrived (no rays, so no fit;
    // the node says so on /diagnostics and publishes the depth unfilled).
    let (depth, mask) = depth_and_mask_of(&out, &result, &node.log(), true);
    let (w, h) = (SIZE.0 as usize, SIZE.1 as usize);
    let (f, cy) = (w as f64, (h as f64 - 1.0) / 2.0);
    let mut filled = 0;
    for y in 0..h {
        let along = pitch.cos() * (y as f64 - cy) / f + pitch.sin();
        for x in (0..w).step_by(17) {
            let (label, got) = (mask[y * w + x], depth[y * w + x]);
            // Holes (every 17th column) below the horizon on labelled pixels take the plane's depth.
            if label == 255 || along <= 1e-9 {
                assert!(got.is_nan(), "({x},{y}) label {label}: {got}");
                continue;
            }
            let want = height / along;
            assert!(((got as f64 - want) / want).abs() < 5e-3, "({x},{y}): filled {got}, plane {want}");
            filled += 1;
        }
    }
    assert!(filled > 100, "{filled} hole pixels checked");
}

/// No machine here has TensorRT: the node asked for it must keep publishing what the CPU
/// backend publishes, and say why on /diagnostics.
#[test]
fn backend_tensorrt_without_tensorrt_falls_back_to_the_cpu_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let domain = domain_id();
    let pngs = test_pngs(tmp.path(), &["coffee.jpg"], SIZE);
    let labels = "person,cup,table,wall";
    let label_list = format!("labels:={:?}", labels.split(',').collect::<Vec<_>>());
    let args = ["-p", &label_list, "-p", "backend:=tensorrt", "-p", "tensorrt_precision:=fp16", "-p", "diagnostics_period:=0.2"];
    let mut node = NodeProcess::start(domain, &args, tmp.path());
    let out = tmp.path().join("received");
    let png = pngs[0].display().to_string();
    let peer_args = [
        "pubsub", "--images", &png, "--camera-info", "--repeat", "3", "--rate-hz", "4", "--expect", "1", "--timeout", "90", "--diagnostics",
        "--collect", "mask", "--out", out.to_str().unwrap(),
    ];
    let result = ok(peer(domain, &peer_args));
    node.assert_running();
    let diagnostics = &result["diagnostics"];
    let reason = diagnostics["backend_fallback"].as_str().unwrap_or_else(|| panic!("no backend_fallback: {diagnostics}"));
    assert!(reason.contains("running on cpu") && reason.contains("tensorrt unavailable"), "{reason}");
    assert_eq!(diagnostics["backend"], "cpu", "{diagnostics}");
    assert_eq!(diagnostics["frame_memory"], "host", "no GPU here: frames go through host memory; {diagnostics}");
    let expected = segment_masks(&pngs, labels, &tmp.path().join("segment"));
    let sec = published_stems(&result).into_keys().find(|sec| out.join(format!("mask_{sec}_0.bin")).exists()).expect("a mask");
    let mask = std::fs::read(out.join(format!("mask_{sec}_0.bin"))).unwrap();
    assert!(mask == expected.values().next().cloned().unwrap(), "the fallback mask differs from `ovseg segment` on the CPU");
}

#[test]
fn labels_are_retasked_through_parameters_and_bad_values_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let domain = domain_id();
    let pngs = test_pngs(tmp.path(), &["chelsea.jpg"], SIZE);
    let mut node = NodeProcess::start(domain, &[], tmp.path());

    let long = format!("labels=[\"cat\", \"{}\"]", "x".repeat(100_000));
    let result = ok(peer(
        domain,
        &[
            "params",
            "--timeout",
            "60",
            "--watch",
            "--set",
            "labels=[\"cat\", \"grass\", \"sky\"]",
            "labels=[]",
            "labels=[1, 2]",
            &long,
            "unknown_threshold=1.5",
            "queue_depth=5",
            "backend=\"gpu\"",
            "--get",
            "labels",
            "--describe",
            "labels",
            "unknown_threshold",
            "queue_depth",
        ],
    ));
    let sets = result["set"].as_array().unwrap_or_else(|| panic!("{result:#}"));
    assert_eq!(sets[0]["successful"], true, "{:#}", sets[0]);
    let refused = |i: usize, needle: &str| {
        assert_eq!(sets[i]["successful"], false, "{:#}", sets[i]);
        let reason = sets[i]["reason"].as_str().unwrap();
        assert!(reason.contains(needle), "reason {reason:?} should mention {needle:?}");
    };
    refused(1, "empty");
    refused(2, "string array");
    refused(3, "100000 bytes");
    refused(4, "0..=1");
    refused(5, "read-only");
    refused(6, "auto, cpu");
    assert_eq!(result["get"]["labels"], serde_json::json!(["cat", "grass", "sky"]), "{result:#}");
    let describe = &result["describe"];
    assert!(describe["labels"]["description"].as_str().unwrap().contains("Free-text labels"), "{describe:#}");
    assert_eq!(describe["queue_depth"]["read_only"], true, "{describe:#}");
    // As an rcl node: the change on /parameter_events, the refusals on /rosout.
    let events = result["parameter_events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["node"] == "/segmenter" && e["changed"] == serde_json::json!(["labels"])), "{events:?}");
    let records = result["rosout"].as_array().unwrap();
    let refusal = records.iter().find(|r| r["msg"].as_str().unwrap().contains("unknown_threshold refused"));
    assert!(refusal.is_some_and(|r| r["name"] == "segmenter" && r["level"] == 30), "{records:?}");
    node.assert_running();

    // The next frames use the new label ids: the same mask as `segment` with these labels.
    let out = tmp.path().join("received");
    let png = pngs[0].display().to_string();
    let args = ["pubsub", "--images", &png, "--expect", "1", "--repeat", "3", "--rate-hz", "3", "--timeout", "60"];
    let result = ok(peer(domain, &[&args[..], &["--collect", "mask", "label_info", "--out", out.to_str().unwrap()]].concat()));
    let expected = segment_masks(&pngs, "cat,grass,sky", &tmp.path().join("segment"));
    let sec = result["topics"]["mask"]["stamps"][0][0].as_i64().unwrap();
    let mask = std::fs::read(out.join(format!("mask_{sec}_0.bin"))).unwrap();
    assert!(mask == expected["chelsea"], "mask after the labels change differs from `ovseg segment --labels cat,grass,sky`");
    let names: Vec<&str> =
        result["label_info"]["class_map"].as_array().unwrap().iter().map(|c| c["class_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cat", "grass", "sky", "unknown"]);

    // Switching the backend at run time reloads the model and keeps the labels.
    let result = ok(peer(domain, &["params", "--timeout", "60", "--set", "backend=\"cpu\"", "--get", "backend", "labels"]));
    assert_eq!(result["set"][0]["successful"], true, "{result:#}");
    assert_eq!(result["get"]["labels"], serde_json::json!(["cat", "grass", "sky"]), "{result:#}");
    let out = tmp.path().join("after-reload");
    let result = ok(peer(domain, &[&args[..], &["--collect", "mask", "--out", out.to_str().unwrap()]].concat()));
    let sec = result["topics"]["mask"]["stamps"][0][0].as_i64().unwrap();
    assert!(std::fs::read(out.join(format!("mask_{sec}_0.bin"))).unwrap() == expected["chelsea"]);
    node.assert_running();
}

#[test]
fn bad_frames_are_counted_logged_once_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let domain = domain_id();
    let pngs = test_pngs(tmp.path(), &["coffee.jpg"], SIZE);
    // With simulated time (a rosgraph_msgs/Clock writer, as simulators and bag players have).
    let params = ["-p", "diagnostics_period:=0.2", "-p", "image_qos:=reliable", "-p", "use_sim_time:=true", "-p", "threads:=1"];
    let mut node = NodeProcess::start(domain, &params, tmp.path());
    let png = pngs[0].display().to_string();
    // The good frames go as YUYV, which the node converts (BT.601).
    let args = ["pubsub", "--images", &png, "--encoding", "yuyv", "--camera-info", "--bad-frames", "--diagnostics", "--repeat", "4", "--rate-hz", "4"];
    let result = ok(peer(domain, &[&args[..], &["--expect", "1", "--timeout", "60", "--collect", "mask", "--sim-clock", "5000"]].concat()));
    let diagnostics = &result["diagnostics"];
    for kind in ["step", "encoding", "zero_size", "size_mismatch"] {
        assert_eq!(diagnostics[format!("rejected.{kind}")], "1", "{diagnostics:#}");
    }
    // Three frames had nothing to show; the one whose camera_info has another size still has
    // its mask (stamp 503), since only depth and points need camera_info.
    assert_eq!(diagnostics["frames_rejected"], "3", "{diagnostics:#}");
    let mask_stamps = result["topics"]["mask"]["stamps"].as_array().unwrap();
    assert!(mask_stamps.contains(&serde_json::json!([503, 0])), "{mask_stamps:?}");
    let stamp = result["diagnostics_stamp"][0].as_i64().unwrap();
    assert!((5000..5300).contains(&stamp), "/diagnostics is stamped with /clock time: {}", result["diagnostics_stamp"]);
    assert_eq!(diagnostics["backend"], "cpu");
    assert_eq!(diagnostics["threads"], "1", "the `threads` parameter sizes the pixel loops' pool: {diagnostics:#}");
    assert!(diagnostics["latency_ms.total.p50"].as_str().is_some(), "{diagnostics:#}");
    node.assert_running();
    let log = node.log();
    assert!(log.contains("`step` = 479"), "the step rejection should name field and value:\n{log}");
    assert!(log.contains("bayer_rggb8"), "{log}");
    assert!(log.contains("camera_info `width` x `height` = 320x240"), "{log}");
    assert_eq!(log.matches("bayer_rggb8").count(), 1, "each kind is logged once:\n{log}");
}

#[test]
fn replay_writes_a_bag_python_decodes_and_reads_a_bag_python_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let pngs = test_pngs(tmp.path(), &["astronaut.jpg", "rocket.jpg", "coffee.jpg"], SIZE);
    let bag = tmp.path().join("in.mcap");
    let mut args = vec!["mcap-make".to_string(), "--out".into(), bag.display().to_string(), "--camera-info".into(), "--depth-mm".into()];
    args.push("--images".into());
    args.extend(pngs.iter().map(|p| p.display().to_string()));
    ok(peer(0, &args.iter().map(String::as_str).collect::<Vec<_>>()));

    let out_bag = tmp.path().join("out.mcap");
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg"))
        .args(["replay", bag.to_str().unwrap(), "--out", out_bag.to_str().unwrap(), "--ros-args", "-p", "depth_mode:=rgbd"])
        .args(["-p", "labels:=[person, rocket, cup, sky]"])
        .output()
        .unwrap();
    assert!(o.status.success(), "replay failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["frames_processed"], 3, "{report:#}");

    let check = ok(peer(0, &["mcap-check", "--file", out_bag.to_str().unwrap()]));
    let topics = &check["topics"];
    for topic in ["/mask", "/mask_color", "/overlay", "/confidence", "/depth", "/points", "/image"] {
        assert_eq!(topics[topic]["count"], 3, "{topic}: {topics:#}");
    }
    assert_eq!(topics["/label_info"]["count"], 1, "{topics:#}");
    assert_eq!(topics["/mask"]["schema"], "sensor_msgs/msg/Image");
    assert_eq!(topics["/points"]["schema"], "sensor_msgs/msg/PointCloud2");
    assert_eq!(check["errors"].as_array().map(Vec::len), Some(0), "{check:#}");

    // A stereo bag (left, right and both camera_infos) replays with depth_mode stereo.
    let stereo_dir = repo().join("tests/data/stereo");
    let stereo_bag = tmp.path().join("stereo.mcap");
    let (l, r) = (stereo_dir.join("motorcycle_left.png"), stereo_dir.join("motorcycle_right.png"));
    let (l, r) = (l.to_str().unwrap(), r.to_str().unwrap());
    let args = ["mcap-make", "--out", stereo_bag.to_str().unwrap(), "--camera-info", "--encoding", "mono8", "--images", l, l, "--right-images", r, r];
    ok(peer(0, &args));
    let stereo_out = tmp.path().join("stereo-out.mcap");
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg"))
        .args(["replay", stereo_bag.to_str().unwrap(), "--out", stereo_out.to_str().unwrap(), "--outputs-only", "--ros-args"])
        .args(["-p", "depth_mode:=stereo", "-p", "stereo_max_disp:=48", "-p", "labels:=[motorcycle, wall, floor]"])
        .output()
        .unwrap();
    assert!(o.status.success(), "stereo replay failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains("no_right_image") && !log.contains("skipped"), "{log}");
    let topics = ok(peer(0, &["mcap-check", "--file", stereo_out.to_str().unwrap()]))["topics"].clone();
    assert_eq!(topics["/depth"]["count"], 2, "{topics:#}");

    // Refuses to overwrite without --force, and leaves the existing bag alone.
    let before = std::fs::read(&out_bag).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg")).args(["replay", bag.to_str().unwrap(), "--out", out_bag.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert!(std::fs::read(&out_bag).unwrap() == before);
}

/// The data of every message on `topic` in an mcap, in order.
fn bag_messages(bag: &Path, topic: &str) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(bag).unwrap();
    mcap::MessageStream::new(&bytes).unwrap().map(Result::unwrap).filter(|m| m.channel.topic == topic).map(|m| m.data.to_vec()).collect()
}

#[test]
fn replay_takes_the_camera_pose_from_the_bags_tf_static() {
    let tmp = tempfile::tempdir().unwrap();
    let pngs = test_pngs(tmp.path(), &["coffee.jpg"], SIZE);
    // A camera 0.9 m up, pitched 0.5 rad down, its optical frame `camera` (the bag's frame_id).
    let pose = nalgebra::Isometry3::from_parts(
        nalgebra::Translation3::new(0.1, 0.0, 0.9),
        nalgebra::UnitQuaternion::from_axis_angle(&nalgebra::Vector3::y_axis(), 0.5)
            * nalgebra::UnitQuaternion::from_euler_angles(-std::f64::consts::FRAC_PI_2, 0.0, -std::f64::consts::FRAC_PI_2),
    );
    let (t, q) = (pose.translation.vector, pose.rotation.coords);
    let numbers = [t.x, t.y, t.z, q.x, q.y, q.z, q.w].map(|v| format!("{v:?}"));
    let bag = tmp.path().join("in.mcap");
    let mut args = vec!["mcap-make", "--out", bag.to_str().unwrap(), "--camera-info", "--images", pngs[0].to_str().unwrap(), pngs[0].to_str().unwrap()];
    args.extend(["--tf-static", "base_footprint", "camera"]);
    args.extend(numbers.iter().map(String::as_str));
    ok(peer(0, &args));
    // The same pose as a file, which the node reads into the very same transform.
    let pose_file = tmp.path().join("pose.yaml");
    std::fs::write(&pose_file, format!("translation: [{}, {}, {}]\nrotation_quaternion: [{}, {}, {}, {}]\n", numbers[0], numbers[1], numbers[2], numbers[3], numbers[4], numbers[5], numbers[6])).unwrap();

    let replay = |name: &str, mounting: &str| {
        let out = tmp.path().join(format!("{name}.mcap"));
        let o = Command::new(env!("CARGO_BIN_EXE_ovseg"))
            .args(["replay", bag.to_str().unwrap(), "--out", out.to_str().unwrap(), "--outputs-only", "--ros-args"])
            .args(["-p", "labels:=[person, sky, cup, table, wall]", "-p", "depth_mode:=ground", "-p", "ground_labels:=[table, wall]", "-p", mounting])
            .output()
            .unwrap();
        assert!(o.status.success(), "replay with {mounting} failed:\n{}", String::from_utf8_lossy(&o.stderr));
        (out, serde_json::from_slice::<Value>(&o.stdout).unwrap(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (from_tf, report, _) = replay("tf", "ground_frame:=base_footprint");
    assert_eq!(report["frames_processed"], 2, "{report:#}");
    let (from_file, _, _) = replay("file", &format!("camera_pose_file:={}", pose_file.display()));
    let (depth_tf, depth_file) = (bag_messages(&from_tf, "/depth"), bag_messages(&from_file, "/depth"));
    assert_eq!(depth_tf.len(), 2, "the first frame, too, has the transform written after it");
    assert!(depth_tf == depth_file, "depth from /tf_static differs from depth from the same pose in a file");
    // The same pose on /tf, stamped with each frame and written before it.
    let mut args = vec!["mcap-make", "--out", bag.to_str().unwrap(), "--camera-info", "--images", pngs[0].to_str().unwrap(), pngs[0].to_str().unwrap()];
    args.extend(["--tf", "base_footprint", "camera"]);
    args.extend(numbers.iter().map(String::as_str));
    ok(peer(0, &args));
    let (from_dynamic_tf, _, _) = replay("dynamic", "ground_frame:=base_footprint");
    assert!(bag_messages(&from_dynamic_tf, "/depth") == depth_file, "depth from /tf differs from depth from the same pose in a file");

    // The frames recorded compressed (the PNG file's bytes) give the same outputs as raw.
    let compressed_bag = tmp.path().join("compressed.mcap");
    ok(peer(0, &["mcap-make", "--out", compressed_bag.to_str().unwrap(), "--camera-info", "--compressed", "--images", pngs[0].to_str().unwrap()]));
    let compressed_out = tmp.path().join("compressed-out.mcap");
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg"))
        .args(["replay", compressed_bag.to_str().unwrap(), "--image-topic", "/image/compressed", "--out", compressed_out.to_str().unwrap(), "--outputs-only"])
        .args(["--ros-args", "-p", "labels:=[person, sky, cup, table, wall]", "-p", "depth_mode:=ground", "-p", "ground_labels:=[table, wall]"])
        .args(["-p", &format!("camera_pose_file:={}", pose_file.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "compressed replay failed:\n{}", String::from_utf8_lossy(&o.stderr));
    for topic in ["/mask", "/depth", "/overlay"] {
        let (compressed, raw) = (bag_messages(&compressed_out, topic), bag_messages(&from_file, topic));
        assert!(compressed.len() == 1 && compressed[0] == raw[0], "{topic} from the compressed frame differs from the raw one");
    }
    // Not a vacuous match: the image data (the message's tail) has ground depth.
    let pixels = (SIZE.0 * SIZE.1) as usize;
    let tail = &depth_tf[0][depth_tf[0].len() - 4 * pixels..];
    let with_depth = tail.chunks(4).filter(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()).count();
    assert!(with_depth > 500, "{with_depth} pixels with depth");

    // A frame tf does not know: each frame is counted, named, and skipped for depth only.
    let (unknown, report, log) = replay("unknown", "ground_frame:=odom");
    assert_eq!(report["frames_rejected"]["ground_depth"], 2, "{report:#}");
    assert!(log.contains("'odom' is not in the transform tree (known: base_footprint, camera)"), "{log}");
    assert_eq!(bag_messages(&unknown, "/mask").len(), 2);
    assert_eq!(bag_messages(&unknown, "/depth").len(), 0);
}

/// The node's GPU path on the CUDA emulator (tests/cuda-emulator, a stand-in libcuda that runs
/// the kernels on the CPU): with `backend:=cuda`, scoring, painting and stereo give the CPU's
/// outputs byte for byte; a device that fails mid-run (injected at the fifth stereo path
/// launch, in the second frame) costs that frame its depth, and the frames after it run on the
/// CPU with the same outputs, the reasons in the status.
#[cfg(feature = "cuda")]
#[test]
fn replay_on_the_cuda_emulator_equals_the_cpu_and_survives_a_device_failure() {
    use ovseg_tests::cuda_emulator::{CudaEmulator, DEVICE_NAME, FAIL_ENV, STEREO_CROP};
    let Some(emulator) = CudaEmulator::build(Path::new(env!("CARGO_TARGET_TMPDIR"))) else { return };
    let tmp = tempfile::tempdir().unwrap();
    // A crop of the pair: the emulator runs a block's threads one at a time.
    let crop = |name: &str| {
        let pair = image::open(repo().join("tests/data/stereo").join(name)).unwrap().to_luma8();
        let path = tmp.path().join(name);
        let (x, y, w, h) = STEREO_CROP;
        image::imageops::crop_imm(&pair, x, y, w, h).to_image().save(&path).unwrap();
        path.display().to_string()
    };
    let (l, r) = (crop("motorcycle_left.png"), crop("motorcycle_right.png"));
    let bag = tmp.path().join("stereo.mcap");
    let bag_arg = bag.display().to_string();
    ok(peer(0, &["mcap-make", "--out", &bag_arg, "--camera-info", "--encoding", "mono8", "--images", &l, &l, &l, "--right-images", &r, &r, &r]));
    let replay = |name: &str, backend: &str, fail: Option<&str>| {
        let out = tmp.path().join(format!("{name}.mcap"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovseg"));
        cmd.args(["replay", &bag_arg, "--out", out.to_str().unwrap(), "--outputs-only", "--ros-args"])
            .args(["-p", &format!("backend:={backend}"), "-p", "depth_mode:=stereo", "-p", "stereo_max_disp:=32", "-p", "stereo_paths:=4"])
            .args(["-p", "labels:=[motorcycle, wall, floor]"]);
        emulator.apply(&mut cmd, &tmp.path().join("kernels"));
        if let Some(fail) = fail {
            cmd.env(FAIL_ENV, fail);
        }
        let o = cmd.output().unwrap();
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "replay on {backend} failed:\n{log}");
        (out, serde_json::from_slice::<Value>(&o.stdout).unwrap(), log)
    };
    let (cpu, report, _) = replay("cpu", "cpu", None);
    assert_eq!(report["status"]["scorer"], "cpu", "{report:#}");
    let (gpu, report, log) = replay("cuda", "cuda", None);
    let status = &report["status"];
    assert_eq!(status["scorer"], "cuda", "{report:#}\n{log}");
    assert!(status["stereo"].as_str().is_some_and(|s| s.contains(DEVICE_NAME)), "{report:#}");
    assert!(status.get("scorer_fallback").is_none() && status.get("stereo_fallback").is_none(), "{report:#}");
    let topics = ["/mask", "/mask_color", "/overlay", "/confidence", "/depth", "/points"];
    for topic in topics {
        let (want, got) = (bag_messages(&cpu, topic), bag_messages(&gpu, topic));
        assert_eq!(want.len(), 3, "{topic}");
        assert!(got == want, "{topic} on the emulated GPU differs from the CPU's");
    }

    let (failed, report, log) = replay("failed", "cuda", Some("aggregate_path:5"));
    let status = &report["status"];
    assert_eq!(status["scorer"], "cpu", "{report:#}\n{log}");
    for key in ["scorer_fallback", "stereo_fallback"] {
        assert!(status[key].as_str().is_some_and(|s| s.contains("CUDA_ERROR_ILLEGAL_ADDRESS")), "{key}: {report:#}");
    }
    assert_eq!(report["frames_rejected"]["stereo"], 1, "{report:#}");
    for topic in topics {
        let (want, got) = (bag_messages(&cpu, topic), bag_messages(&failed, topic));
        if topic == "/depth" || topic == "/points" {
            // The frame whose matching failed goes without depth; the others have the CPU's.
            assert!(got.len() == 2 && got[0] == want[0] && got[1] == want[2], "{topic}: {} messages", got.len());
        } else {
            assert!(got == want, "{topic} after the device failed differs from the CPU's");
        }
    }
}

#[test]
fn launch_profiles_start_the_node_and_every_parameter_is_in_help() {
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg")).args(["node", "--help"]).output().unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    let tmp = tempfile::tempdir().unwrap();
    for profile in ["field_robot.yaml", "vehicle.yaml"] {
        let path = repo().join("launch").join(profile);
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let params = yaml["/**"]["ros__parameters"].as_mapping().unwrap_or_else(|| panic!("{profile}: no /**: ros__parameters"));
        let in_profile: Vec<&str> = params.keys().map(|k| k.as_str().unwrap()).collect();
        let in_help: Vec<&str> = help
            .lines()
            .skip_while(|l| !l.starts_with("ROS parameters"))
            .skip(1)
            .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
            .collect();
        assert!(in_help.len() >= 20, "{help}");
        for name in &in_profile {
            assert!(in_help.contains(name), "{profile}: parameter {name} is not in `ovseg node --help`:\n{help}");
        }
        for name in &in_help {
            assert!(in_profile.contains(name), "{profile} does not set parameter {name}");
        }
        // The profile is accepted as it ships: the node gets to the point of spinning.
        let mut node = NodeProcess::start(domain_id(), &["--params-file", path.to_str().unwrap()], tmp.path());
        let deadline = Instant::now() + Duration::from_secs(120);
        while !node.log().contains("running on ROS domain") {
            node.assert_running();
            assert!(Instant::now() < deadline, "{profile}: node not up after 120 s:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(node.terminate().success(), "{}", node.log());
    }
}
