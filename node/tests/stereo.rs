//! `ovseg stereo` end to end on the committed Middlebury "Motorcycle" pair (370x250, ground
//! truth in tests/data/stereo; see tests/data/ATTRIBUTION.md). Needs no model and no Python.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{pair_yaml, read_pfm};
use serde_json::Value;

mod common;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/stereo").join(name)
}

fn stereo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ovseg")).arg("stereo").args(args).output().expect("running ovseg")
}

#[test]
fn motorcycle_disparity_is_accurate_and_the_pfm_reads_back() {
    let out = tempfile::tempdir().unwrap();
    let (left, right) = (data("motorcycle_left.png"), data("motorcycle_right.png"));
    let o = stereo(&[left.to_str().unwrap(), right.to_str().unwrap(), "--max-disp", "48", "--out", out.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(o.stdout.trim_ascii()).expect("one JSON line");
    assert_eq!((report["width"].as_u64(), report["height"].as_u64()), (Some(370), Some(250)));
    assert!(report["ms"]["total_ms"].as_f64().unwrap() > 0.0);

    let disp = read_pfm(&out.path().join("motorcycle_left.disparity.pfm"));
    let gt = read_pfm(&data("motorcycle_disp.pfm"));
    assert_eq!((disp.width, disp.height), (gt.width, gt.height));
    let valid = disp.data.iter().filter(|d| d.is_finite()).count() as f64 / disp.data.len() as f64;
    assert!((valid - report["valid_fraction"].as_f64().unwrap()).abs() < 1e-9, "PFM and JSON disagree on validity");
    assert!(disp.data.iter().all(|d| d.is_finite() && (0.0..48.0).contains(d) || *d == f32::INFINITY));

    // Bad-2px on pixels with ground truth, invalid counted as bad. Measured 0.1407 (density
    // 0.916) with the defaults; integer maths up to the subpixel step keeps it reproducible.
    let (mut n, mut bad) = (0usize, 0usize);
    for (d, g) in disp.data.iter().zip(&gt.data) {
        if g.is_finite() {
            n += 1;
            bad += usize::from(!d.is_finite() || (d - g).abs() > 2.0);
        }
    }
    let bad2 = bad as f64 / n as f64;
    assert!(bad2 < 0.16, "bad-2px {bad2}");
    assert!(valid > 0.88, "density {valid}");

    let png = image::open(out.path().join("motorcycle_left.disparity.png")).unwrap();
    assert_eq!((png.width(), png.height()), (370, 250));
}

#[test]
fn bad_arguments_are_named() {
    let out = tempfile::tempdir().unwrap();
    let (left, right) = (data("motorcycle_left.png"), data("motorcycle_right.png"));
    let (l, r, o) = (left.to_str().unwrap(), right.to_str().unwrap(), out.path().to_str().unwrap());
    let run = |args: &[&str]| {
        let res = stereo(args);
        assert_eq!(res.status.code(), Some(1), "{args:?}");
        String::from_utf8_lossy(&res.stderr).into_owned()
    };
    assert!(run(&[l, r, "--max-disp", "50", "--out", o]).contains("`max_disp` = 50"));
    assert!(run(&[l, r, "--max-disp", "48", "--p1", "300", "--out", o]).contains("`p2` = 120"));
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/images/chelsea.jpg");
    assert!(run(&[l, other.to_str().unwrap(), "--max-disp", "48", "--out", o]).contains("differs from the left image's 370x250"));
    assert!(run(&[l, "/nonexistent.png", "--max-disp", "48", "--out", o]).contains("/nonexistent.png"));
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none(), "nothing written on errors");
}

#[test]
fn calibrated_pairs_are_rectified_and_give_depth_in_metres() {
    let tmp = tempfile::tempdir().unwrap();
    let (left, right) = (data("motorcycle_left.png"), data("motorcycle_right.png"));
    let (l, r) = (left.to_str().unwrap(), right.to_str().unwrap());
    // The pair is already rectified: identity rectification must leave the disparity as it is.
    // Focal length and baseline of this size from scikit-image; principal points 3 px apart.
    let (f, baseline, cx_l, cx_r) = (497.489, 0.193001, 184.5, 187.5);
    let (ly, ry) = (tmp.path().join("left.yaml"), tmp.path().join("right.yaml"));
    pair_yaml(&ly, (370, 250), f, cx_l, 0.0);
    pair_yaml(&ry, (370, 250), f, cx_r, baseline);
    let plain = tmp.path().join("plain");
    let calibrated = tmp.path().join("calibrated");
    let o = stereo(&[l, r, "--max-disp", "48", "--out", plain.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = stereo(&[l, r, "--max-disp", "48", "--out", calibrated.to_str().unwrap(), "--calib", ly.to_str().unwrap(), ry.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(o.stdout.trim_ascii()).unwrap();
    assert!((report["focal_baseline"].as_f64().unwrap() - f * baseline).abs() < 1e-9);
    let disp = read_pfm(&calibrated.join("motorcycle_left.disparity.pfm"));
    let same = read_pfm(&plain.join("motorcycle_left.disparity.pfm"));
    assert!(disp.data.iter().zip(&same.data).all(|(a, b)| a.to_bits() == b.to_bits()), "identity rectification changed the disparity");
    let depth = read_pfm(&calibrated.join("motorcycle_left.depth.pfm"));
    assert_eq!((depth.width, depth.height), (370, 250));
    let mut valid = 0;
    for (&d, &z) in disp.data.iter().zip(&depth.data) {
        if d.is_infinite() {
            assert!(z.is_infinite(), "invalid disparity must give +inf depth, got {z}");
            continue;
        }
        // Z = f B / (d + cx_r - cx_l)
        let want = f * baseline / (d as f64 + cx_r - cx_l);
        assert!(((z as f64 - want) / want).abs() < 1e-6, "disparity {d}: depth {z}, want {want}");
        valid += 1;
    }
    assert!(valid > 370 * 250 / 2, "{valid} valid pixels");
}

#[test]
fn bad_calibration_files_are_named_with_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (left, right) = (data("motorcycle_left.png"), data("motorcycle_right.png"));
    let (l, r) = (left.to_str().unwrap(), right.to_str().unwrap());
    let (ly, ry) = (tmp.path().join("left.yaml"), tmp.path().join("right.yaml"));
    let out = tmp.path().to_str().unwrap().to_string();
    let run = |ly: &Path, ry: &Path| {
        let o = stereo(&[l, r, "--max-disp", "48", "--out", &out, "--calib", ly.to_str().unwrap(), ry.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    pair_yaml(&ly, (640, 480), 500.0, 320.0, 0.0);
    pair_yaml(&ry, (640, 480), 500.0, 320.0, 0.1);
    let e = run(&ly, &ry);
    assert!(e.contains("left.yaml") && e.contains("640x480") && e.contains("370x250"), "{e}");
    pair_yaml(&ly, (370, 250), 500.0, 184.5, 0.0);
    pair_yaml(&ry, (370, 250), 500.0, 184.5, 0.0);
    let e = run(&ly, &ry);
    assert!(e.contains("right.yaml") && e.contains("projection_matrix[3]"), "{e}");
    std::fs::write(&ry, "image_width: 370\n").unwrap();
    let e = run(&ly, &ry);
    assert!(e.contains("right.yaml"), "{e}");
}
