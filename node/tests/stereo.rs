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
    // Named by the flag, not by the backend or the engine's field name.
    let e = run(&[l, r, "--max-disp", "12", "--out", o]);
    assert!(e.contains("error: --max-disp 12: must be a multiple of 8") && !e.contains("--backend"), "{e}");
    assert!(run(&[l, r, "--max-disp", "50", "--out", o]).contains("--max-disp 50"));
    assert!(run(&[l, r, "--max-disp", "48", "--p1", "300", "--out", o]).contains("--p2 120: must be >= p1 (300)"));
    for backend in ["foo", "tensorrt"] {
        let e = run(&[l, r, "--max-disp", "48", "--out", o, "--backend", backend]);
        assert!(e.contains(&format!("--backend {backend}: stereo matching runs on auto, cpu or cuda")) && !e.contains("ONNX Runtime"), "{e}");
    }
    let huge = out.path().join("huge.png");
    image::GrayImage::new(16385, 2).save(&huge).unwrap();
    let e = run(&[huge.to_str().unwrap(), r, "--max-disp", "48", "--out", o]);
    assert!(e.contains("huge.png") && e.contains("16385x2 pixels") && e.contains("16384"), "{e}");
    std::fs::remove_file(&huge).unwrap();
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/images/chelsea.jpg");
    assert!(run(&[l, other.to_str().unwrap(), "--max-disp", "48", "--out", o]).contains("differs from the left image's 370x250"));
    assert!(run(&[l, "/nonexistent.png", "--max-disp", "48", "--out", o]).contains("/nonexistent.png"));
    // Refused by the argument parser (exit 2), with the values it takes.
    let res = stereo(&[l, r, "--max-disp", "48", "--paths", "6", "--out", o]);
    let e = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.code() == Some(2) && e.contains("--paths") && e.contains("\"6\": must be 3, 4, 5 or 8"), "{e}");
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

    // Into one folder with and without --calib in turn: the run without drops the depth of the
    // run before (it no longer matches), and the next --calib run replaces its own files. A
    // byte order mark before the YAML is not an error.
    let yaml = std::fs::read_to_string(&ly).unwrap();
    std::fs::write(&ly, format!("\u{feff}{yaml}")).unwrap();
    let calibrated = calibrated.to_str().unwrap();
    let with_calib = [l, r, "--max-disp", "48", "--out", calibrated, "--calib", ly.to_str().unwrap(), ry.to_str().unwrap()];
    for args in [&with_calib[..], &with_calib[..6], &with_calib[..]] {
        let o = stereo(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        let depth = Path::new(calibrated).join("motorcycle_left.depth.pfm");
        assert_eq!(depth.exists(), args.len() > 6, "{args:?}");
    }
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
    // A pair from two different calibrations: the rectified projections must share fy and cy.
    pair_yaml(&ry, (370, 250), 500.0, 184.5, 0.1);
    let mut text = std::fs::read_to_string(&ry).unwrap();
    let p = calibration::CameraInfoYaml::parse(&text).unwrap().projection_matrix;
    let mut other = calibration::CameraInfoYaml::parse(&text).unwrap();
    other.projection_matrix[5] = p[5] + 3.0;
    other.save(&ry).unwrap();
    let e = run(&ly, &ry);
    assert!(e.contains("left.yaml") && e.contains("right.yaml") && e.contains("P[5] (fy)") && e.contains("503"), "{e}");
    // A principal-point offset of a whole image width.
    other.projection_matrix = p;
    other.projection_matrix[2] = 184.5 + 400.0;
    other.save(&ry).unwrap();
    let e = run(&ly, &ry);
    assert!(e.contains("P[2] (cx)") && e.contains("400") && e.contains("370"), "{e}");
    text = "image_width: 370\n".into();
    std::fs::write(&ry, &text).unwrap();
    let e = run(&ly, &ry);
    assert!(e.contains("right.yaml"), "{e}");
    // The loader names the file; it is not named twice.
    let missing = tmp.path().join("missing.yaml");
    let e = run(&ly, &missing);
    assert_eq!(e.matches("missing.yaml").count(), 1, "{e}");
}

#[test]
fn outputs_replace_earlier_ones_but_not_files_ovseg_did_not_write() {
    let out = tempfile::tempdir().unwrap();
    let (left, right) = (data("motorcycle_left.png"), data("motorcycle_right.png"));
    let (l, r, o) = (left.to_str().unwrap(), right.to_str().unwrap(), out.path().to_str().unwrap());
    let args = [l, r, "--max-disp", "16", "--out", o, "--backend", "cpu"];
    for _ in 0..2 {
        let res = stereo(&args);
        assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    }
    // Someone's ground truth where the disparity would go.
    let pfm = out.path().join("motorcycle_left.disparity.pfm");
    std::fs::copy(data("motorcycle_disp.pfm"), &pfm).unwrap();
    let before = std::fs::read(&pfm).unwrap();
    let res = stereo(&args);
    assert_eq!(res.status.code(), Some(1));
    let e = String::from_utf8_lossy(&res.stderr);
    assert!(e.contains("motorcycle_left.disparity.pfm") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&pfm).unwrap(), before);
    let res = stereo(&[&args[..], &["--force"]].concat());
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert_ne!(std::fs::read(&pfm).unwrap(), before);
    // Never over an input, even with --force: here the right image has the left's output name.
    let (a, b) = (out.path().join("a.png"), out.path().join("a.disparity.png"));
    std::fs::copy(&left, &a).unwrap();
    std::fs::copy(&right, &b).unwrap();
    let res = stereo(&[a.to_str().unwrap(), b.to_str().unwrap(), "--max-disp", "16", "--out", o, "--force"]);
    assert_eq!(res.status.code(), Some(1));
    let e = String::from_utf8_lossy(&res.stderr);
    assert!(e.contains("own input") && e.contains("a.disparity.png"), "{e}");
    assert_eq!(std::fs::read(&b).unwrap(), std::fs::read(&right).unwrap());
}
