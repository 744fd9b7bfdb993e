//! The model directory contract on real model files: every broken model is refused at load
//! time with an error naming the file and what is wrong, never at the first frame.
use std::path::Path;

use engine::{BackendKind, Model};
use ovseg_tests::{model, threads};

/// A copy of the default model directory.
fn copy_model(dir: &Path) {
    for entry in std::fs::read_dir(&model().dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
}

/// A copy of the default model directory whose manifest has `from` replaced by `to`.
fn altered(dir: &Path, from: &str, to: &str) {
    copy_model(dir);
    let manifest = std::fs::read_to_string(dir.join("manifest.yaml")).unwrap();
    assert!(manifest.contains(from), "test setup: {from:?} not in the manifest");
    std::fs::write(dir.join("manifest.yaml"), manifest.replacen(from, to, 1)).unwrap();
}

/// Opens the model and both encoders, returning the first error.
fn load_error(dir: &Path) -> String {
    let result = Model::open(dir).and_then(|m| {
        m.image_backend(BackendKind::Cpu, threads())?;
        m.label_bank(threads(), None).map(|_| ())
    });
    match result {
        Ok(()) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The load error of a default-model copy whose manifest has `from` replaced by `to`.
fn error_with(from: &str, to: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    altered(dir.path(), from, to);
    load_error(dir.path())
}

#[test]
fn the_default_model_loads() {
    let m = model();
    m.image_backend(BackendKind::Cpu, threads()).unwrap();
    m.label_bank(threads(), None).unwrap();
}

#[test]
fn wrong_embedding_dim_names_the_image_encoder_and_output() {
    let e = error_with("embedding_dim: 384", "embedding_dim: 512");
    assert!(e.contains("image_encoder.onnx") && e.contains("embed_s32") && e.contains("512"), "{e}");
}

#[test]
fn wrong_input_layout_names_the_input() {
    let e = error_with("layout: NCHW", "layout: NHWC");
    assert!(e.contains("image_encoder.onnx") && e.contains("\"image\"") && e.contains("3 channels on axis 3"), "{e}");
}

#[test]
fn unknown_tensor_names_are_listed() {
    let e = error_with("output: last_hidden_state", "output: pooled_output");
    assert!(e.contains("text_encoder.onnx") && e.contains("pooled_output") && e.contains("last_hidden_state"), "{e}");
}

#[test]
fn missing_files_name_the_field_and_path() {
    let e = error_with("tokenizer: tokenizer.json", "tokenizer: vocab.json");
    assert!(e.contains("text_encoder.tokenizer") && e.contains("vocab.json"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::remove_file(dir.path().join("image_encoder.onnx")).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("image_encoder.file") && e.contains("image_encoder.onnx"), "{e}");
}

#[test]
fn corrupt_files_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::write(dir.path().join("image_encoder.onnx"), b"not a model").unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("image_encoder.onnx"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::write(dir.path().join("tokenizer.json"), b"{\"broken\": ").unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("tokenizer.json") && e.contains("not a valid tokenizer.json"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::write(dir.path().join("class_text_anchors.f32"), [0u8; 10]).unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("class_text_anchors.f32") && e.contains("10 bytes"), "{e}");
}
