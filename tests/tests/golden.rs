//! Golden masks: the label map of three photos with a fixed label list and the model's default
//! options, compared with the masks in tests/data/golden/ (see the README there).
//!
//! At least 99% of pixels must carry the same label id: ONNX Runtime may differ in the last bits
//! across CPUs (different kernels), which flips a few border pixels, nothing more.
//!
//! To regenerate after an intended change of the model or the pipeline:
//!
//! ```sh
//! OVSEG_UPDATE_GOLDEN=1 cargo test -p ovseg-tests --test golden
//! ```
//!
//! which writes tests/data/golden/<name>.mask.png (the tests still pass). Review the new masks
//! before committing them.
use std::path::PathBuf;

use engine::UNKNOWN;
use image::{GrayImage, Luma};
use ovseg_tests::{golden_dir, label_set, segment};

/// The fixed label list (index = pixel value in the golden masks; 255 = unknown). More than the
/// default early-rejection top_k (8), so rejection is part of what is pinned.
pub const GOLDEN_LABELS: &[&str] =
    &["cat", "sofa", "coffee cup", "table", "sky", "water", "tree", "building", "grass", "wall", "road"];

/// Share of identical pixels required.
const MIN_AGREEMENT: f64 = 0.99;

fn update_requested() -> bool {
    std::env::var("OVSEG_UPDATE_GOLDEN").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn check_golden(name: &str) {
    let labels = label_set(GOLDEN_LABELS);
    let seg = segment(name, &labels, None);
    let (w, h) = (seg.map.width, seg.map.height);
    let pixels: Vec<u8> = seg.map.labels.iter().map(|&l| if l == UNKNOWN { 255 } else { u8::try_from(l).unwrap() }).collect();
    let current = GrayImage::from_raw(w, h, pixels).unwrap();
    let path = golden_dir().join(format!("{name}.mask.png"));

    if update_requested() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        current.save(&path).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        eprintln!("updated {}", path.display());
        return;
    }

    let golden = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with OVSEG_UPDATE_GOLDEN=1 (see tests/data/golden/README.md)", path.display()));
    let golden = match golden {
        image::DynamicImage::ImageLuma8(g) => g,
        other => panic!("{} is {:?}, expected an 8-bit grey mask", path.display(), other.color()),
    };
    assert_eq!(golden.dimensions(), (w, h), "{name}: golden mask size differs from the image");
    let same = golden.pixels().zip(current.pixels()).filter(|(a, b)| a == b).count();
    let agreement = same as f64 / (w * h) as f64;
    eprintln!("{name}: {:.3}% of pixels match the golden mask", agreement * 100.0);
    if agreement < MIN_AGREEMENT {
        let dump = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("golden-actual");
        std::fs::create_dir_all(&dump).unwrap();
        let actual = dump.join(format!("{name}.mask.png"));
        current.save(&actual).unwrap();
        panic!(
            "{name}: only {:.3}% of pixels match {} (need {:.0}%); the current mask is in {}. \
             If the change is intended, regenerate with OVSEG_UPDATE_GOLDEN=1.",
            agreement * 100.0,
            path.display(),
            MIN_AGREEMENT * 100.0,
            actual.display()
        );
    }
    // The golden masks only hold label ids of this list or unknown.
    assert!(golden.pixels().all(|&Luma([v])| v == 255 || (v as usize) < GOLDEN_LABELS.len()));
}

#[test]
fn golden_chelsea() {
    check_golden("chelsea");
}

#[test]
fn golden_coffee() {
    check_golden("coffee");
}

#[test]
fn golden_china() {
    check_golden("china");
}
