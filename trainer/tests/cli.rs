//! The `ovseg-train` binary end to end: train writes the model and its reports, eval and
//! export work on what it wrote, and errors exit non-zero with the reason.
use std::process::Command;

fn ovseg_train(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ovseg-train")).args(args).output().unwrap()
}

#[test]
fn train_eval_and_export_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let out_s = out.to_str().unwrap();
    let run = ovseg_train(&["train", "--out", out_s, "--steps", "4", "--synthetic-train", "3", "--synthetic-val", "2", "--threads", "2", "--quiet"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["steps_done"], 4);
    for file in ["train_report.json", "eval.md", "curves.png", "manifest.yaml", "head.safetensors"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    assert!(std::fs::read_to_string(out.join("eval.md")).unwrap().contains("| gravel path |"));

    let eval = ovseg_train(&["eval", "--model-dir", out_s, "--synthetic", "2", "--unseen", "brick wall"]);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(eval["images"], 2);
    assert!(eval["harmonic_miou"].is_number(), "{eval}");

    let again = dir.path().join("again");
    let checkpoint = dir.path().join("model.checkpoint.safetensors");
    let export = ovseg_train(&["export", "--checkpoint", checkpoint.to_str().unwrap(), "--out", again.to_str().unwrap()]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert_eq!(std::fs::read(again.join("image_encoder.onnx")).unwrap(), std::fs::read(out.join("image_encoder.onnx")).unwrap());

    let bad = ovseg_train(&["train", "--out", out_s, "--batch", "0"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("batch is 0"), "{stderr}");
}

#[test]
fn ctrl_c_stops_after_the_step_saves_a_checkpoint_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let checkpoint = dir.path().join("model.checkpoint.safetensors");
    let config = dir.path().join("long.yaml");
    std::fs::write(&config, "steps: 1000000\neval_every: 3\nsynthetic_train: 3\nsynthetic_val: 1\nthreads: 2\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovseg-train"))
        .args(["train", "--quiet", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Training has begun once the first periodic checkpoint exists (bounded wait).
    let started = std::time::Instant::now();
    while !checkpoint.exists() {
        assert!(started.elapsed().as_secs() < 180, "no checkpoint after 180 s");
        assert!(child.try_wait().unwrap().is_none(), "trainer exited early");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0, "kill(SIGINT) failed");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "an interrupted run says so in its exit status: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["interrupted"], true);
    let steps = report["steps_done"].as_u64().unwrap();
    assert!((3..1_000_000).contains(&steps), "{steps}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("interrupted after step {steps}")) && stderr.contains("--resume") && stderr.contains("model.checkpoint.safetensors"), "{stderr}");
    let saved = trainer::checkpoint::load_checkpoint(&checkpoint).unwrap();
    assert_eq!(saved.meta.step as u64, steps, "the checkpoint holds the last step done");
    assert!(saved.state.is_some(), "and can be resumed");
    assert!(out.join("manifest.yaml").is_file(), "the model is exported");
}

/// A folder data set of `masks.len()` 96x64 images; each mask is all `value` (255 = not annotated).
fn small_set(dir: &std::path::Path, masks: &[u8]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    std::fs::write(dir.join("labels.txt"), "sky\ngrass\n").unwrap();
    for (i, &value) in masks.iter().enumerate() {
        image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([(x * 2) as u8, (y * 3) as u8, (i * 40) as u8])).save(dir.join(format!("images/{i}.png"))).unwrap();
        image::GrayImage::from_fn(96, 64, |_, y| image::Luma([if value == 255 { 255 } else { u8::from(y >= 32) }])).save(dir.join(format!("masks/{i}.png"))).unwrap();
    }
    dir.to_path_buf()
}

fn refused(output: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}

#[test]
fn outputs_never_replace_inputs_the_default_model_or_files_of_another_kind() {
    let dir = tempfile::tempdir().unwrap();
    let set = small_set(&dir.path().join("good"), &[0; 5]);
    let set_s = set.to_str().unwrap();
    let labels = set.join("labels.txt");
    let out = dir.path().join("m");
    let out_s = out.to_str().unwrap();

    // The cached default model is what training starts from: never an --out, --force or not.
    let cache = dir.path().join("cache");
    let default_model = cache.join("models").join(engine::zoo::DEFAULT_MODEL_NAME);
    std::fs::create_dir_all(&default_model).unwrap();
    engine::zoo::build::default_manifest().write(&default_model).unwrap();
    let before = std::fs::read(default_model.join("manifest.yaml")).unwrap();
    for force in [false, true] {
        let mut args = vec!["train", "--data", set_s, "--steps", "2", "--out", default_model.to_str().unwrap()];
        args.extend(force.then_some("--force"));
        let run = Command::new(env!("CARGO_BIN_EXE_ovseg-train")).args(&args).env("OVSEG_CACHE_DIR", &cache).output().unwrap();
        refused(&run, &["is the default model"]);
    }
    assert_eq!(std::fs::read(default_model.join("manifest.yaml")).unwrap(), before);
    // Nor any model directory ovseg-train did not write, unless --force.
    refused(&ovseg_train(&["train", "--data", set_s, "--out", default_model.to_str().unwrap()]), &["did not write", "--force"]);

    // Outputs that are, or lie in, the inputs.
    let config = dir.path().join("train.yaml");
    std::fs::write(&config, "steps: 2\n").unwrap();
    let config_s = config.to_str().unwrap();
    for (flag, path, needle) in [
        ("--json", labels.to_str().unwrap(), "inside a training data set"),
        ("--write-fixture", labels.to_str().unwrap(), "inside a training data set"),
        ("--json", config_s, "is the configuration file"),
        ("--write-fixture", set_s, "is a directory"),
    ] {
        refused(&ovseg_train(&["train", "--data", set_s, "--config", config_s, "--out", out_s, flag, path]), &[flag, needle]);
    }
    refused(&ovseg_train(&["train", "--data", set_s, "--out", set.join("model").to_str().unwrap()]), &["inside a training data set"]);
    // A file of another kind is replaced only with --force.
    let notes = dir.path().join("notes.json");
    std::fs::write(&notes, "{\"mine\": 1}").unwrap();
    refused(&ovseg_train(&["train", "--data", set_s, "--out", out_s, "--json", notes.to_str().unwrap()]), &["notes.json exists and is not a training report", "--force"]);
    refused(&ovseg_train(&["eval", "--model-dir", out_s, "--synthetic", "1", "--markdown", notes.to_str().unwrap()]), &["not an evaluation report"]);
    refused(&ovseg_train(&["eval", "--model-dir", out_s, "--data", set_s, "--markdown", labels.to_str().unwrap()]), &["inside a data set"]);
    assert_eq!(std::fs::read_to_string(&labels).unwrap(), "sky\ngrass\n");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "{\"mine\": 1}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "steps: 2\n");
    assert!(!out.exists(), "nothing was trained");

    // `--out .` names no directory the model could be moved into: refused before anything is written.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for here in [".", empty.to_str().unwrap()] {
        let run = Command::new(env!("CARGO_BIN_EXE_ovseg-train")).args(["train", "--steps", "2", "--out", here]).current_dir(&empty).output().unwrap();
        refused(&run, &["--out"]);
    }
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert!(!dir.path().join("empty.checkpoint.safetensors").exists());
}

#[test]
fn impossible_sizes_and_data_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_set(&dir.path().join("good"), &[0; 5]);
    let blank = small_set(&dir.path().join("blank"), &[255; 5]);
    let (good_s, blank_s) = (good.to_str().unwrap(), blank.to_str().unwrap());
    let out = dir.path().join("m");
    let out_s = out.to_str().unwrap();
    refused(&ovseg_train(&["train", "--out", out_s, "--hidden", "100000000"]), &["hidden is 100000000; it must be at most 8192"]);
    refused(&ovseg_train(&["train", "--out", out_s, "--batch", "100000"]), &["batch is 100000; it must be at most 1024"]);
    let started = std::time::Instant::now();
    let eval = ovseg_train(&["eval", "--model-dir", out_s, "--synthetic", "1", "--width", "100000", "--height", "100000"]);
    refused(&eval, &["--width 100000", "1..=16384"]);
    assert!(started.elapsed().as_secs() < 10, "refused before drawing the scene");
    refused(&ovseg_train(&["eval", "--model-dir", out_s, "--synthetic", "1000000000000"]), &["--synthetic 1000000000000: at most 10000"]);
    refused(&ovseg_train(&["eval", "--model-dir", out_s, "--synthetic", "10", "--width", "16384", "--height", "16384"]), &["at most 2^28"]);
    refused(&ovseg_train(&["eval", "--model-dir", out_s, "--synthetic", "1", "--unseen", "nonexistent"]), &["--unseen: \"nonexistent\" is not a label"]);
    refused(&ovseg_train(&["train", "--out", out_s, "--data", blank_s]), &["has no labelled pixel", "blank"]);
    refused(&ovseg_train(&["train", "--out", out_s, "--data", good_s, "--val-data", blank_s]), &["no validation image has an annotated pixel"]);
    refused(&ovseg_train(&["train", "--out", out_s, "--data", good_s, "--data", &format!("{good_s}/")]), &["given twice"]);
    refused(&ovseg_train(&["train", "--out", out_s, "--data", good_s, "--val-data", good_s]), &["is also a training data set"]);
    let missing = dir.path().join("no-such-set");
    refused(&ovseg_train(&["train", "--out", out_s, "--data", missing.to_str().unwrap()]), &["no-such-set: no such folder"]);
    let file = good.join("labels.txt");
    refused(&ovseg_train(&["train", "--out", out_s, "--data", file.to_str().unwrap()]), &["labels.txt: is not a folder"]);
    let config = dir.path().join("aug.yaml");
    std::fs::write(&config, "augment: {scale_min: 0.9, scale_max: 1.1}\nhidden: 0\n").unwrap();
    refused(&ovseg_train(&["train", "--out", out_s, "--config", config.to_str().unwrap()]), &["hidden is 0"]);
    assert!(!out.exists());
    let help = String::from_utf8_lossy(&ovseg_train(&["train", "--help"]).stdout).into_owned();
    assert!(help.contains("1..=8192") && help.contains("1..=1024") && help.contains("--force"), "{help}");
}

#[test]
fn unannotated_validation_images_are_left_out_and_a_large_batch_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_set(&dir.path().join("good"), &[0; 5]);
    let val = small_set(&dir.path().join("val"), &[0, 255]);
    let out = dir.path().join("m");
    let run = ovseg_train(&[
        "train", "--quiet", "--threads", "2", "--steps", "2", "--batch", "500", "--out", out.to_str().unwrap(),
        "--data", good.to_str().unwrap(), "--val-data", val.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("1 of 2 validation images have no annotated pixel") && stderr.contains("1.png"), "{stderr}");
    assert!(stderr.contains("batch 500 is larger than the training set (5 images x 2 copies = 10)"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["val_images"], 1);
    assert_eq!(report["untrained"]["images"], 1);
    // The output is ovseg-train's own: a second run replaces it and its report.
    let json = dir.path().join("report.json");
    let again = ovseg_train(&[
        "train", "--quiet", "--threads", "2", "--steps", "1", "--out", out.to_str().unwrap(), "--json", json.to_str().unwrap(),
        "--data", good.to_str().unwrap(), "--val-data", val.to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let rerun = ovseg_train(&[
        "train", "--quiet", "--threads", "2", "--steps", "1", "--out", out.to_str().unwrap(), "--json", json.to_str().unwrap(),
        "--data", good.to_str().unwrap(), "--val-data", val.to_str().unwrap(),
    ]);
    assert!(rerun.status.success(), "an earlier report is replaced: {}", String::from_utf8_lossy(&rerun.stderr));
}
