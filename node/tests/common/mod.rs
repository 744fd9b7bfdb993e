//! Helpers shared by the stereo, ROS and CLI tests.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]
use std::path::Path;

/// A PFM image: width, height, values top row first.
pub struct Pfm {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// Reads a one-channel PFM ("Pf", width height, scale: negative = little-endian; rows stored
/// bottom to top).
pub fn read_pfm(path: &Path) -> Pfm {
    let bytes = std::fs::read(path).unwrap();
    let mut fields = Vec::new();
    let mut pos = 0;
    // Header: four whitespace-separated tokens, then exactly one whitespace byte.
    while fields.len() < 4 {
        while bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let start = pos;
        while !bytes[pos].is_ascii_whitespace() {
            pos += 1;
        }
        fields.push(std::str::from_utf8(&bytes[start..pos]).unwrap().to_string());
    }
    pos += 1;
    assert_eq!(fields[0], "Pf", "one-channel PFM");
    let (width, height): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let scale: f32 = fields[3].parse().unwrap();
    let body = &bytes[pos..];
    assert_eq!(body.len(), width * height * 4, "PFM body size");
    let value = |c: &[u8]| {
        let b = [c[0], c[1], c[2], c[3]];
        if scale < 0.0 { f32::from_le_bytes(b) } else { f32::from_be_bytes(b) }
    };
    let rows: Vec<Vec<f32>> = body.chunks_exact(width * 4).map(|r| r.chunks_exact(4).map(value).collect()).collect();
    Pfm { width, height, data: rows.into_iter().rev().flatten().collect() }
}

/// camera_info YAML of one camera of a rectified pair: no distortion, R = I, and the right
/// camera's P carrying the baseline (P[0][3] = -f * baseline).
pub fn pair_yaml(path: &Path, size: (u32, u32), f: f64, cx: f64, baseline: f64) {
    let (w, h) = size;
    let cy = (h as f64 - 1.0) / 2.0;
    calibration::CameraInfoYaml {
        image_width: w,
        image_height: h,
        camera_name: "cam".into(),
        camera_matrix: [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0],
        distortion_model: "plumb_bob".into(),
        distortion_coefficients: vec![0.0; 5],
        rectification_matrix: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        projection_matrix: [f, 0.0, cx, -f * baseline, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    }
    .save(path)
    .unwrap();
}

/// A model directory whose image encoder is the default model's with a depth head that says
/// `metres` everywhere (zero hidden weights, bias ln metres), built as the trainer exports.
pub fn model_with_constant_depth(dir: &Path, metres: f32) -> std::path::PathBuf {
    use engine::zoo::trained::{DepthWeights, FEATURE_CHANNELS, HeadWeights, build_trained_encoder};
    let (default_dir, weights, class_text) = engine::zoo::build::default_backbone(&|_, _, _| {}).unwrap();
    let mut manifest = engine::Model::open(&default_dir).unwrap().manifest;
    let dim = manifest.embedding_dim;
    let head = HeadWeights { hidden: 1, dim, w1: vec![0.0; FEATURE_CHANNELS], b1: vec![0.0], w2: vec![0.0; dim], b2: vec![0.0; dim] };
    let depth = DepthWeights { hidden: 1, dim, w1: vec![0.0; FEATURE_CHANNELS + dim], b1: vec![0.0], w2: vec![0.0], b2: metres.ln() };
    let model = dir.join("depth_model");
    std::fs::create_dir_all(&model).unwrap();
    for file in [&manifest.text_encoder.file, &manifest.text_encoder.tokenizer, &engine::zoo::build::ANCHORS_FILE.to_string()] {
        std::fs::copy(default_dir.join(file), model.join(file)).unwrap();
    }
    build_trained_encoder(&weights, &class_text, &head, Some(&depth)).unwrap().write(&model.join(&manifest.image_encoder.file)).unwrap();
    let fine = manifest.levels_coarse_to_fine().pop().unwrap();
    manifest.image_encoder.depth = Some(engine::manifest::EmbeddingOutput { name: engine::zoo::trained::DEPTH_OUTPUT.into(), ..fine });
    manifest.write(&model).unwrap();
    model
}
