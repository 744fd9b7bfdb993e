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
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["interrupted"], true);
    let steps = report["steps_done"].as_u64().unwrap();
    assert!((3..1_000_000).contains(&steps), "{steps}");
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("interrupted after step {steps}")));
    let saved = trainer::checkpoint::load_checkpoint(&checkpoint).unwrap();
    assert_eq!(saved.meta.step as u64, steps, "the checkpoint holds the last step done");
    assert!(saved.state.is_some(), "and can be resumed");
    assert!(out.join("manifest.yaml").is_file(), "the model is exported");
}
