//! Shared helpers for end-to-end tests.
//!
//! Everything here is per process (`OnceLock`), so the helpers work the same under `cargo test`
//! (many tests, one process) and `cargo nextest` (one process per test). The model is built into
//! whatever cache `OVSEG_CACHE_DIR` (or the user cache) points at, fetching it with pip when it is
//! missing; `ensure_default_model` holds a file lock, so parallel test processes build it once.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod cuda_emulator;

use engine::labels::LabelSpec;
use engine::{BackendKind, Frame, LabelBank, LabelSet, Model, Pipeline, SegmentOptions, Segmentation, UNKNOWN};

/// `tests/data`, or `OVSEG_TEST_DATA` for a test binary run from another checkout (the GPU
/// machine's copy of the tree sits elsewhere).
pub fn data_dir() -> PathBuf {
    std::env::var_os("OVSEG_TEST_DATA").map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data"), PathBuf::from)
}

/// `tests/data/images/<name>.jpg`.
pub fn image_path(name: &str) -> PathBuf {
    data_dir().join("images").join(format!("{name}.jpg"))
}

/// `tests/data/golden`.
pub fn golden_dir() -> PathBuf {
    data_dir().join("golden")
}

/// Threads for ONNX Runtime sessions: all cores (tests in one process share them).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The default model, built (fetched with pip) on first use in this process, with ONNX Runtime loaded.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = engine::zoo::build::ensure_default_model(false, &|_, _, _| {})
            .unwrap_or_else(|e| panic!("building the default model (cache {}): {e}", engine::paths::cache_root().display()));
        engine::runtime::init(None).unwrap_or_else(|e| panic!("loading ONNX Runtime: {e}"));
        Model::open(&dir).unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
    })
}

/// A fresh label bank of the default model with the model's templates; memory cache only
/// unless `disk` is given.
pub fn label_bank(disk: Option<&Path>) -> LabelBank {
    model().label_bank(threads(), disk.map(Path::to_path_buf)).expect("label bank")
}

/// A fresh CPU pipeline with the model's default options.
pub fn pipeline() -> Pipeline {
    let m = model();
    Pipeline::new(m, m.image_backend(BackendKind::Cpu, threads()).expect("CPU backend"))
}

/// Label specs without descriptions.
pub fn specs(names: &[&str]) -> Vec<LabelSpec> {
    names.iter().map(|n| LabelSpec::new(*n)).collect()
}

/// Encodes `names` with a fresh memory-only bank.
pub fn label_set(names: &[&str]) -> LabelSet {
    label_bank(None).build(&specs(names)).expect("encoding labels")
}

/// A test photo decoded to RGB8.
pub fn load_rgb(name: &str) -> image::RgbImage {
    let path = image_path(name);
    image::open(&path).unwrap_or_else(|e| panic!("decoding {}: {e}", path.display())).to_rgb8()
}

/// A test photo as an rgb8 frame.
pub fn frame(name: &str) -> Frame {
    Frame::from_rgb_image(&load_rgb(name))
}

/// Segments one test photo with `labels` and the given options (None: model defaults).
pub fn segment(name: &str, labels: &LabelSet, options: Option<SegmentOptions>) -> Segmentation {
    let mut p = pipeline();
    if let Some(o) = options {
        p.set_options(o).expect("options");
    }
    p.process(&frame(name), labels).expect("segmentation")
}

/// Pixel box `[x0, x1) x [y0, y1)` in a label map.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

/// Share of the pixels in `region` per label id (index = id), and the unknown share.
pub fn region_shares(map: &engine::LabelMap, num_labels: usize, r: Region) -> (Vec<f64>, f64) {
    assert!(r.x0 < r.x1 && r.y0 < r.y1 && r.x1 <= map.width && r.y1 <= map.height, "{r:?} outside {}x{}", map.width, map.height);
    let mut counts = vec![0usize; num_labels];
    let mut unknown = 0usize;
    for y in r.y0..r.y1 {
        for x in r.x0..r.x1 {
            match map.labels[(y * map.width + x) as usize] {
                UNKNOWN => unknown += 1,
                l => counts[l as usize] += 1,
            }
        }
    }
    let n = ((r.x1 - r.x0) * (r.y1 - r.y0)) as f64;
    (counts.iter().map(|&c| c as f64 / n).collect(), unknown as f64 / n)
}

/// The most frequent label in `region` and its share.
pub fn region_majority(map: &engine::LabelMap, labels: &LabelSet, r: Region) -> (String, f64) {
    let (shares, _) = region_shares(map, labels.len(), r);
    let (k, s) = shares.iter().copied().enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).expect("labels");
    (labels.names[k].clone(), s)
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Euclidean norm.
pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Share of positions where two label maps agree (sizes must match).
pub fn agreement(a: &[u16], b: &[u16]) -> f64 {
    assert_eq!(a.len(), b.len(), "maps of different size");
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}
