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
