//! The real `ovseg` binary end to end: `ovseg segment` on the test photos with the default model.
//!
//! The environment is passed through unchanged, so `OVSEG_CACHE_DIR` (or the user cache) decides
//! where the model lives; the binary builds it there with pip when it is missing (file-locked, so
//! parallel tests build it once).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::DynamicImage;
use serde_json::Value;

mod common;

fn images() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/images")
}

fn image(name: &str) -> PathBuf {
    images().join(name)
}

/// Runs `ovseg segment ARGS`.
fn segment(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovseg"));
    cmd.arg("segment").args(args);
    cmd.output().expect("running ovseg")
}

fn segment_paths(inputs: &[&Path], extra: &[&str], out: &Path) -> Output {
    let mut args: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--out".to_string(), out.display().to_string()]);
    segment(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, printing the binary's output when it differs.
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn outputs_for(stems: &[&str]) -> BTreeSet<String> {
    stems.iter().flat_map(|s| [format!("{s}.mask.png"), format!("{s}.overlay.png"), format!("{s}.json")]).collect()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn open(path: &Path) -> DynamicImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A small copy of chelsea.jpg as PNG (fast to segment), written into `dir`.
fn small_image(dir: &Path) -> PathBuf {
    let img = open(&image("chelsea.jpg")).to_rgb8();
    let small = image::imageops::resize(&img, 90, 60, image::imageops::FilterType::Triangle);
    let path = dir.join("small.png");
    small.save(&path).unwrap();
    path
}

#[test]
fn segment_writes_mask_overlay_and_report() {
    let out = tempfile::tempdir().unwrap();
    let o = segment_paths(&[&image("chelsea.jpg")], &["--labels", "cat,sofa"], out.path());
    assert_exit(&o, 0);
    assert_eq!(files_in(out.path()), outputs_for(&["chelsea"]));

    let mask = match open(&out.path().join("chelsea.mask.png")) {
        DynamicImage::ImageLuma8(m) => m,
        other => panic!("mask is {:?}, expected 8-bit grey", other.color()),
    };
    assert_eq!(mask.dimensions(), (451, 300));
    let overlay = open(&out.path().join("chelsea.overlay.png")).to_rgb8();
    // The overlay is the image with the legend below it.
    assert!(overlay.width() >= 451 && overlay.height() > 300, "overlay {:?}", overlay.dimensions());

    let report = read_json(&out.path().join("chelsea.json"));
    assert_eq!(report["labels"], serde_json::json!(["cat", "sofa"]));
    assert_eq!(report["mask_bits"], 8);
    assert_eq!(report["unknown_value"], 255);
    assert_eq!(report["mask"], "chelsea.mask.png");
    assert_eq!((report["width"].as_u64(), report["height"].as_u64()), (Some(451), Some(300)));
    assert_eq!(report["backend"], "cpu");
    assert!(report["image"].as_str().unwrap().ends_with("chelsea.jpg"), "{}", report["image"]);
    for stage in ["preprocess", "image_encoder", "cost_map", "post", "label_encoding"] {
        let ms = report["timings_ms"][stage].as_f64().unwrap_or_else(|| panic!("timings_ms.{stage} missing"));
        assert!(ms.is_finite() && ms >= 0.0, "timings_ms.{stage} = {ms}");
    }

    // Shares in the report: they sum to 1 with the unknown share and match the mask's pixels.
    let shares = report["pixel_share"].as_object().expect("pixel_share object");
    let unknown = report["unknown_share"].as_f64().unwrap();
    let total: f64 = shares.values().map(|v| v.as_f64().unwrap()).sum::<f64>() + unknown;
    assert!((total - 1.0).abs() < 1e-6, "shares sum to {total}");
    let n = mask.len() as f64;
    for (id, name) in ["cat", "sofa"].iter().enumerate() {
        let count = mask.pixels().filter(|p| p.0[0] == id as u8).count() as f64;
        let reported = shares[*name].as_f64().unwrap();
        assert!((count / n - reported).abs() < 1e-9, "{name}: mask share {} vs reported {reported}", count / n);
    }
    assert!(mask.pixels().all(|p| matches!(p.0[0], 0 | 1 | 255)), "mask holds ids beyond the two labels");
    // Measured: cat ~85% of the picture with these labels.
    assert!(shares["cat"].as_f64().unwrap() > 0.5, "cat share {}", shares["cat"]);
}

#[test]
fn a_directory_input_processes_every_image_in_it() {
    let input = tempfile::tempdir().unwrap();
    std::fs::copy(image("coffee.jpg"), input.path().join("a.jpg")).unwrap();
    std::fs::copy(image("china.jpg"), input.path().join("b.JPEG")).unwrap();
    small_image(input.path());
    std::fs::write(input.path().join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir(input.path().join("sub")).unwrap();
    std::fs::copy(image("chelsea.jpg"), input.path().join("sub/c.jpg")).unwrap(); // not recursive

    let out = tempfile::tempdir().unwrap();
    let o = segment_paths(&[input.path()], &["--labels", "cup,table,sky,tree"], out.path());
    assert_exit(&o, 0);
    assert_eq!(files_in(out.path()), outputs_for(&["a", "b", "small"]));
    assert_eq!(open(&out.path().join("a.mask.png")).to_luma8().dimensions(), (600, 400));
    assert_eq!(open(&out.path().join("b.mask.png")).to_luma8().dimensions(), (640, 427));
    assert_eq!(open(&out.path().join("small.mask.png")).to_luma8().dimensions(), (90, 60));
}

#[test]
fn a_corrupt_file_fails_alone_with_exit_code_3() {
    let out = tempfile::tempdir().unwrap();
    let corrupt = images().join("bad/corrupt.jpg");
    let text = images().join("bad/not_an_image.jpg");
    let o = segment_paths(&[&corrupt, &image("chelsea.jpg"), &text], &["--labels", "cat,sofa"], out.path());
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(err.contains(&corrupt.display().to_string()), "stderr does not name the corrupt file:\n{err}");
    assert!(err.contains(&text.display().to_string()), "stderr does not name the text file:\n{err}");
    assert!(err.contains("2 image(s) failed"), "{err}");
    // The decoder's message says its cause once (it is not chained to be printed again).
    let line = err.lines().find(|l| l.contains("corrupt.jpg")).unwrap();
    let cause = line.rsplit(": ").next().unwrap();
    assert_eq!(err.matches(cause).count(), 1, "{err}");
    // The good image in between was still written, and nothing for the bad ones.
    assert_eq!(files_in(out.path()), outputs_for(&["chelsea"]));
    assert_eq!(read_json(&out.path().join("chelsea.json"))["labels"], serde_json::json!(["cat", "sofa"]));
}

#[test]
fn a_missing_input_fails_with_exit_code_3_naming_it() {
    let out = tempfile::tempdir().unwrap();
    let missing = images().join("no_such_image.jpg");
    let o = segment_paths(&[&missing], &["--labels", "cat"], out.path());
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(err.contains(&missing.display().to_string()), "stderr does not name the missing file:\n{err}");
    assert!(err.contains("no image was written") && !err.contains("the other"), "{err}");
    assert!(files_in(out.path()).is_empty(), "{:?}", files_in(out.path()));
}

fn labels_file(dir: &Path, n: usize) -> PathBuf {
    let mut text = String::from("# generated labels\n\n");
    for i in 0..n {
        text.push_str(&format!("object kind {i}\n"));
    }
    let path = dir.join(format!("labels-{n}.txt"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn mask_depth_is_8_bit_up_to_255_labels_and_16_bit_beyond() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_image(dir.path());
    for (n, bits) in [(255usize, 8u64), (256, 16)] {
        let out = dir.path().join(format!("out-{n}"));
        let file = labels_file(dir.path(), n);
        let o = segment_paths(&[&input], &["--labels-file", file.to_str().unwrap()], &out);
        assert_exit(&o, 0);
        let report = read_json(&out.join("small.json"));
        assert_eq!(report["labels"].as_array().unwrap().len(), n, "comment and blank lines must be skipped");
        assert_eq!(report["mask_bits"], bits);
        let mask = open(&out.join("small.mask.png"));
        assert_eq!((mask.width(), mask.height()), (90, 60));
        match (bits, mask) {
            (8, DynamicImage::ImageLuma8(m)) => {
                assert_eq!(report["unknown_value"], 255);
                assert!(m.pixels().all(|p| (p.0[0] as usize) < n || p.0[0] == 255));
            }
            (16, DynamicImage::ImageLuma16(m)) => {
                assert_eq!(report["unknown_value"], 65535);
                assert!(m.pixels().all(|p| (p.0[0] as usize) < n || p.0[0] == 65535));
            }
            (_, other) => panic!("{n} labels: mask is {:?}, expected {bits}-bit grey", other.color()),
        }
    }
}

#[test]
fn threshold_one_makes_every_pixel_unknown() {
    // Unknown means "probability below the threshold"; measured on chelsea with cat,sofa no
    // pixel reaches exactly 1.0 (on coffee.jpg some saturate in f32 and rightly stay labelled).
    let out = tempfile::tempdir().unwrap();
    let o = segment_paths(&[&image("chelsea.jpg")], &["--labels", "cat,sofa", "--threshold", "1.0"], out.path());
    assert_exit(&o, 0);
    let mask = open(&out.path().join("chelsea.mask.png")).to_luma8();
    let labelled = mask.pixels().filter(|p| p.0[0] != 255).count();
    assert_eq!(labelled, 0, "{labelled} pixels are not unknown at --threshold 1.0");
    let report = read_json(&out.path().join("chelsea.json"));
    assert_eq!(report["unknown_share"], 1.0);
    assert_eq!(report["unknown_threshold"], 1.0);
}

#[test]
fn bad_labels_exit_1_and_write_nothing() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--labels", "cat,,dog"], &["empty", "#1 \"\""]),
        (&["--labels", "cat, ,dog"], &["empty", "#1 \"\""]),
        (&["--labels", "cat,dog,Cat"], &["duplicate", "\"Cat\" (#0 and #2)"]),
        (&["--labels", "cat", "--threshold", "1.5"], &["--threshold", "1.5"]),
    ];
    for (args, expected) in cases {
        let out = tempfile::tempdir().unwrap();
        let o = segment_paths(&[&image("chelsea.jpg")], args, out.path());
        assert_exit(&o, 1);
        let err = stderr(&o);
        for e in *expected {
            assert!(err.contains(e), "{args:?}: stderr lacks {e:?}:\n{err}");
        }
        assert!(files_in(out.path()).is_empty(), "{args:?} wrote {:?}", files_in(out.path()));
    }
}

#[test]
fn no_inputs_segments_the_built_in_samples() {
    let out = tempfile::tempdir().unwrap();
    let o = segment_paths(&[], &[], out.path());
    assert_exit(&o, 0);
    let stems = ["astronaut", "chelsea", "china", "coffee"];
    assert_eq!(files_in(out.path()), outputs_for(&stems));
    for stem in stems {
        let report = read_json(&out.path().join(format!("{stem}.json")));
        assert_eq!(report["image"], format!("sample:{stem}"));
        // The model's default labels (engine::zoo::build::DEFAULT_LABELS).
        let labels = report["labels"].as_array().unwrap();
        assert!(labels.len() >= 10 && labels.contains(&Value::from("cat")), "{labels:?}");
        let mask = open(&out.path().join(format!("{stem}.mask.png")));
        assert_eq!((mask.width() as u64, mask.height() as u64), (report["width"].as_u64().unwrap(), report["height"].as_u64().unwrap()));
    }
}

#[test]
fn segment_help_lists_the_main_options() {
    let o = segment(&["--help"]);
    assert_exit(&o, 0);
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in ["--labels", "--labels-file", "--threshold", "--out", "--top-k"] {
        assert!(help.contains(flag), "segment --help lacks {flag}:\n{help}");
    }
}

/// The suffix given to a repeated stem (`a` -> `a-2`) must not collide with another input's own
/// stem (`a-2.jpg`).
#[test]
fn repeated_stems_never_overwrite_each_other() {
    let input = tempfile::tempdir().unwrap();
    for (src, dst) in [("chelsea.jpg", "d1/a.jpg"), ("coffee.jpg", "d2/a.jpg"), ("china.jpg", "a-2.jpg")] {
        let dst = input.path().join(dst);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(image(src), dst).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let p = |s: &str| input.path().join(s);
    let o = segment_paths(&[&p("d1/a.jpg"), &p("d2/a.jpg"), &p("a-2.jpg")], &["--labels", "cat,cup"], out.path());
    assert_exit(&o, 0);
    let reports: BTreeSet<String> = files_in(out.path())
        .iter()
        .filter(|f| f.ends_with(".json"))
        .map(|f| read_json(&out.path().join(f))["image"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reports.len(), 3, "three inputs, reports for only {reports:?}");
}

fn bench_costmap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ovseg")).args(["bench", "costmap"]).args(args).output().expect("running ovseg")
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: stdout {}\nstderr {}", String::from_utf8_lossy(&o.stdout), stderr(o)))
}

#[test]
fn bench_costmap_reports_full_against_early_and_round_trips_its_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("one.fixture");
    let fixture_arg = fixture.to_str().unwrap();
    let o = bench_costmap(&["--frames", "1", "--labels", "40", "--top-k", "3", "--runs", "1", "--write-fixture", fixture_arg]);
    assert_exit(&o, 0);
    let r = json_of(&o);
    for key in ["device", "full_us", "early_us", "speedup", "agreement"] {
        assert!(!r[key].is_null(), "{key} missing: {r}");
    }
    assert_eq!(r["cells"], serde_json::json!([160, 120]));
    assert_eq!(r["labels"], 40);
    let agreement = r["agreement"].as_f64().unwrap();
    assert!((0.9..=1.0).contains(&agreement), "{agreement}");
    assert!(r["full_us"].as_f64().unwrap() > 0.0 && r["early_us"].as_f64().unwrap() > 0.0);
    let share = r["end_to_end"]["pre_post_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");

    // The fixture holds the same embeddings (as f16): with every label kept, early equals full.
    let o = bench_costmap(&["--fixture", fixture_arg, "--labels", "40", "--top-k", "40", "--runs", "1"]);
    assert_exit(&o, 0);
    let r = json_of(&o);
    assert_eq!(r["agreement"], 1.0, "{r}");
    assert_eq!(r["embeddings"], "fixture (f16)");
    assert_eq!(r["frames"].as_array().map(Vec::len), Some(1));
}

#[test]
fn bench_depth_times_every_depth_step_against_segmentation() {
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg")).args(["bench", "depth", "--frames", "1"]).output().expect("running ovseg");
    assert_exit(&o, 0);
    let r = json_of(&o);
    for key in ["register", "ground_fit", "condition"] {
        let ratio = r[format!("{key}_over_segment")].as_f64().unwrap_or_else(|| panic!("{key} missing: {r}"));
        assert!(ratio > 0.0 && ratio.is_finite(), "{key}: {ratio}");
    }
    // Every 11th depth pixel of the flat ground is missing and the fit fills them.
    assert!(r["ground_pixels_filled"].as_u64().unwrap() > 10_000, "{r}");
}

#[test]
fn engine_build_without_tensorrt_exits_1_and_names_what_is_missing() {
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg")).args(["engine", "build", "--precision", "fp16"]).output().expect("running ovseg");
    assert_exit(&o, 1);
    let err = String::from_utf8_lossy(&o.stderr);
    // This machine's ONNX Runtime is the CPU build: the first missing piece is its TensorRT provider.
    assert!(err.contains("TensorRT is needed to build an engine") && err.contains("without the TensorRT execution provider"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg")).args(["engine", "build", "--precision", "half"]).output().expect("running ovseg");
    assert_exit(&o, 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("precision \"half\": expected one of fp32, fp16, int8"));

    // The INT8 calibration cache needs no TensorRT: it is measured on the CPU.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("int8.cache");
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/images");
    let o = Command::new(env!("CARGO_BIN_EXE_ovseg"))
        .args(["engine", "calibrate", images.to_str().unwrap(), "--max-frames", "2", "--out", cache.to_str().unwrap()])
        .output()
        .expect("running ovseg");
    assert_exit(&o, 0);
    let r = json_of(&o);
    assert_eq!(r["frames"], 2);
    assert!(r["tensors"].as_u64().unwrap() > 50, "{r}");
    assert!(std::fs::read_to_string(&cache).unwrap().starts_with("TRT-"));
}

#[test]
fn bench_costmap_rejects_bad_fixtures_and_label_counts_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_fixture = dir.path().join("mask.png");
    std::fs::write(&not_a_fixture, b"\x89PNG not a fixture").unwrap();
    let o = bench_costmap(&["--fixture", not_a_fixture.to_str().unwrap()]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("not an ovseg cost-map fixture"), "{}", stderr(&o));

    let truncated = dir.path().join("truncated.fixture");
    let mut bytes = b"OVSEGCM1".to_vec();
    bytes.extend(2u64.to_le_bytes());
    bytes.extend(b"{}");
    std::fs::write(&truncated, bytes).unwrap();
    let o = bench_costmap(&["--fixture", truncated.to_str().unwrap()]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("truncated.fixture"), "{}", stderr(&o));

    // A hand-made fixture: 2 labels of dimension 8, one frame with 2x2 and 4x4 cells.
    let header = br#"{"model":"t","logit_scale":2.0,"fusion_weights":[1.0,1.0],"label_names":["a","b"],"dim":8,
        "frames":[{"name":"f","levels":[[32,31.5,2,2],[16,15.5,4,4]]}]}"#;
    let mut bytes = b"OVSEGCM1".to_vec();
    bytes.extend((header.len() as u64).to_le_bytes());
    bytes.extend(header);
    let floats: Vec<f32> = (0..16).map(|i| if i == 0 || i == 9 { 1.0 } else { 0.0 }).chain([1.0, 1.0, 0.0, 0.0]).collect();
    floats.iter().for_each(|f| bytes.extend(f.to_le_bytes()));
    for cell in 0..(4 + 16) {
        for d in 0..8u16 {
            // f16 1.0 = 0x3c00 on the label-a axis left, the label-b axis right.
            let x = if cell < 4 { cell % 2 } else { (cell - 4) % 4 / 2 };
            let v: u16 = if d as usize == x { 0x3c00 } else { 0 };
            bytes.extend(v.to_le_bytes());
        }
    }
    let tiny = dir.path().join("tiny.fixture");
    std::fs::write(&tiny, bytes).unwrap();
    let o = bench_costmap(&["--fixture", tiny.to_str().unwrap(), "--labels", "2", "--top-k", "1", "--runs", "1"]);
    assert_exit(&o, 0);
    let r = json_of(&o);
    assert_eq!(r["cells"], serde_json::json!([4, 4]));
    assert_eq!(r["agreement"], 1.0, "{r}");
    let o = bench_costmap(&["--fixture", tiny.to_str().unwrap(), "--labels", "3"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--labels 3 is outside 1..=2"), "{}", stderr(&o));
}

#[test]
fn bench_encoder_times_backends_side_by_side_from_the_encoder_file_alone() {
    // A model directory with only the manifest and the image encoder: no text encoder needed.
    let dir = tempfile::tempdir().unwrap();
    let default = Command::new(env!("CARGO_BIN_EXE_ovseg")).args(["models", "path"]).output().unwrap();
    assert_exit(&default, 0);
    let default = PathBuf::from(String::from_utf8_lossy(&default.stdout).trim());
    for file in ["manifest.yaml", "image_encoder.onnx"] {
        std::fs::copy(default.join(file), dir.path().join(file)).unwrap();
    }
    let bench = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ovseg")).args(["--model-dir", dir.path().to_str().unwrap(), "bench", "encoder"]).args(args).output().unwrap()
    };
    let o = bench(&["--backends", "cpu,cpu", "--sizes", "96x64", "--frames", "1"]);
    assert_exit(&o, 0);
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let backends = report["configs"][0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{report}");
    assert_eq!(report["configs"][0]["network_input"], serde_json::json!([96, 64]));
    for b in backends {
        assert_eq!(b["running"], "cpu");
        assert!(b["ms_median"].as_f64().unwrap() > 0.0, "{b}");
        assert_eq!(b["max_abs_diff_to_first"].as_f64(), Some(0.0), "the same backend twice gives the same output: {b}");
    }
    let o = bench(&["--sizes", "96by64"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("\"96by64\" is not WxH"), "{}", stderr(&o));
    let o = bench(&["--backends", "lidar"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--backends: \"lidar\""), "{}", stderr(&o));
}

#[test]
fn a_model_with_a_depth_head_also_writes_depth_conditioned_on_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::model_with_constant_depth(dir.path(), 4.0);
    let out = dir.path().join("out");
    let o = segment_paths(&[&image("coffee.jpg")], &["--model-dir", model.to_str().unwrap(), "--labels", "cup,sky,table"], &out);
    assert_exit(&o, 0);
    let report = read_json(&out.join("coffee.json"));
    assert_eq!(report["depth"], "coffee.depth.pfm");
    let depth = common::read_pfm(&out.join("coffee.depth.pfm"));
    let mask = open(&out.join("coffee.mask.png")).to_luma8();
    assert_eq!((depth.width, depth.height), (mask.width() as usize, mask.height() as usize));
    let (sky, unknown) = (1u8, 255u8);
    let mut with_depth = 0;
    for (i, (&m, &z)) in mask.as_raw().iter().zip(&depth.data).enumerate() {
        if m == sky || m == unknown {
            assert!(z.is_infinite(), "pixel {i} (label {m}): no depth is +inf in PFM, got {z}");
        } else {
            assert!((z - 4.0).abs() < 1e-4, "pixel {i} (label {m}): {z}");
            with_depth += 1;
        }
    }
    assert!(with_depth > 10_000, "{with_depth} pixels with depth");
    assert_eq!(open(&out.join("coffee.depth.png")).to_rgb8().dimensions(), mask.dimensions());
    // The default model has no depth head: no depth files, and the report says so.
    let plain = dir.path().join("plain");
    assert_exit(&segment_paths(&[&image("coffee.jpg")], &[], &plain), 0);
    assert!(!plain.join("coffee.depth.pfm").exists());
    assert_eq!(read_json(&plain.join("coffee.json"))["depth"], Value::Null);
}

fn ovseg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ovseg")).args(args).output().expect("running ovseg")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A hand-made annotation (here the committed ground truth of the eval set) in --out is never
/// replaced without --force; ovseg's own outputs are, so a second run into the same folder works.
#[test]
fn segment_keeps_files_it_did_not_write_and_replaces_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_image(dir.path());
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let truth = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/eval/chelsea.mask.png");
    let theirs = out.join("small.mask.png");
    std::fs::copy(&truth, &theirs).unwrap();
    let before = std::fs::read(&theirs).unwrap();

    let o = segment_paths(&[&input], &["--labels", "cat,sofa"], &out);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains(s(&theirs)) && err.contains("did not write") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&theirs).unwrap(), before, "the annotation was changed");
    assert_eq!(files_in(&out), BTreeSet::from(["small.mask.png".to_string()]), "nothing else is written");

    let o = segment_paths(&[&input], &["--labels", "cat,sofa", "--force"], &out);
    assert_exit(&o, 0);
    assert_eq!(files_in(&out), outputs_for(&["small"]));
    assert_ne!(std::fs::read(&theirs).unwrap(), before);
    let report = read_json(&out.join("small.json"));
    assert_eq!((report["software"].as_str().map(|s| s.starts_with("ovseg ")), &report["report"]), (Some(true), &Value::from("segment")));

    // Again without --force: every file there is ovseg's now.
    let o = segment_paths(&[&input], &["--labels", "cat,sofa"], &out);
    assert_exit(&o, 0);
    assert_eq!(files_in(&out), outputs_for(&["small"]));
}

/// With --out the input folder: the photos' outputs land next to them, a second run does not
/// take the masks and overlays of the first for photos, and no file that is an input of the run
/// (here the labels file) is written over, even with --force.
#[test]
fn segment_into_its_input_folder_never_writes_over_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("photos");
    std::fs::create_dir(&folder).unwrap();
    small_image(&folder);
    // A UTF-8 byte order mark (Windows editors) is not part of the first label.
    let labels = folder.join("labels.txt");
    std::fs::write(&labels, "\u{feff}cat\nsofa\n").unwrap();
    for _ in 0..2 {
        let o = segment_paths(&[&folder], &["--labels-file", s(&labels)], &folder);
        assert_exit(&o, 0);
        let mut expected = outputs_for(&["small"]);
        expected.extend(["small.png".to_string(), "labels.txt".to_string()]);
        assert_eq!(files_in(&folder), expected);
    }
    assert_eq!(read_json(&folder.join("small.json"))["labels"], serde_json::json!(["cat", "sofa"]));

    let clash = folder.join("small.json");
    std::fs::write(&clash, "cat\nsofa\n").unwrap();
    let o = segment_paths(&[&folder], &["--labels-file", s(&clash), "--force"], &folder);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("own input") && err.contains("small.json"), "{err}");
    assert_eq!(std::fs::read_to_string(&clash).unwrap(), "cat\nsofa\n");
}

#[test]
fn segment_refuses_an_unusable_out_folder_and_empty_inputs_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let input = small_image(dir.path());
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let o = segment_paths(&[&input], &["--labels", "cat"], &file.join("out"));
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("--out") && err.contains(s(&file)) && err.contains("not a folder"), "{err}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = segment_paths(&[&empty], &["--labels", "cat"], &dir.path().join("out"));
    assert_exit(&o, 1);
    assert!(stderr(&o).contains(&format!("{} holds no .png/.jpg/.jpeg files", empty.display())), "{}", stderr(&o));
    assert!(!dir.path().join("out").exists());
}

#[test]
fn bad_option_values_are_named_by_their_flag_alone() {
    let out = tempfile::tempdir().unwrap();
    let o = segment_paths(&[&image("chelsea.jpg")], &["--labels", "cat", "--threshold=-0.1"], out.path());
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("--threshold -0.1") && !err.contains("--top-k") && !err.contains("labels:"), "{err}");
    let o = segment_paths(&[&image("chelsea.jpg")], &["--labels", "cat,,dog"], out.path());
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("--labels: empty or whitespace-only labels") && !err.contains("labels: labels"), "{err}");
    let o = segment_paths(&[&image("chelsea.jpg")], &["--labels", "cat", "--backend", "lidar"], out.path());
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("--backend lidar: unknown backend") && !err.contains("ONNX Runtime"), "{err}");
    assert!(files_in(out.path()).is_empty());

    let o = ovseg(&["eval", "tests/data/eval/annotations.json", "--logit-scale", "inf"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--logit-scale inf: must be finite"), "{}", stderr(&o));
    for args in [&["bench", "--frames", "0"][..], &["bench", "depth", "--frames", "0"], &["bench", "costmap", "--runs", "0"], &["bench", "costmap", "--labels", "0"], &["bench", "costmap", "--labels", "848"]] {
        let o = ovseg(args);
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(args[args.len() - 2]), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn an_image_too_large_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide.png");
    image::GrayImage::new(20000, 1).save(&wide).unwrap();
    let o = segment_paths(&[&wide], &["--labels", "cat"], &dir.path().join("out"));
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(err.contains(s(&wide)) && err.contains("20000x1 pixels") && err.contains("16384"), "{err}");
    assert!(err.contains("no image was written"), "{err}");
}

#[test]
fn zero_threads_means_every_core_and_too_many_are_warned_about() {
    let stereo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/stereo");
    let (l, r) = (stereo.join("motorcycle_left.png"), stereo.join("motorcycle_right.png"));
    let out = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    let run = |threads: usize| ovseg(&["--threads", &threads.to_string(), "stereo", s(&l), s(&r), "--max-disp", "16", "--out", s(out.path()), "--backend", "cpu"]);
    let o = run(0);
    assert_exit(&o, 0);
    assert_eq!(json_of(&o)["threads"], cores);
    assert!(!stderr(&o).contains("threads asked for"), "{}", stderr(&o));
    let o = run(cores + 1);
    assert_exit(&o, 0);
    assert_eq!(stderr(&o).matches("threads asked for").count(), 1, "{}", stderr(&o));
}

/// A small annotation set in `dir`: the small chelsea, labels cat and sofa, `mask` as given.
fn annotated(dir: &Path, masks: &[(&str, DynamicImage)]) -> PathBuf {
    let photo = small_image(dir);
    let images: Vec<Value> = masks
        .iter()
        .map(|(name, mask)| {
            mask.save(dir.join(format!("{name}.mask.png"))).unwrap();
            serde_json::json!({"name": name, "image": photo.file_name().unwrap().to_str(), "labels": ["cat", "sofa"]})
        })
        .collect();
    let path = dir.join("ann.json");
    std::fs::write(&path, serde_json::json!({ "images": images }).to_string()).unwrap();
    path
}

fn mask8(f: impl Fn(u32, u32) -> u8) -> DynamicImage {
    DynamicImage::ImageLuma8(image::GrayImage::from_fn(90, 60, |x, y| image::Luma([f(x, y)])))
}

fn mask16(f: impl Fn(u32, u32) -> u16) -> DynamicImage {
    DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(90, 60, |x, y| image::Luma([f(x, y)])))
}

#[test]
fn eval_takes_masks_as_stored_and_refuses_what_it_cannot_score() {
    let dir = tempfile::tempdir().unwrap();
    let cat_left = |x: u32, _| if x < 60 { 0 } else { 1 };
    // The same truth as 8 and 16 bits scores the same; a mask with nothing annotated is left out.
    let ann = annotated(
        dir.path(),
        &[("eight", mask8(cat_left)), ("sixteen", mask16(|x, y| cat_left(x, y) as u16)), ("blank", mask8(|_, _| 255))],
    );
    let o = ovseg(&["eval", s(&ann)]);
    assert_exit(&o, 0);
    let r = json_of(&o);
    let rows = r["images"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{r}");
    assert_eq!(rows[0]["miou"], rows[1]["miou"], "{r}");
    assert!(rows[0]["miou"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["images_without_annotations"], serde_json::json!(["blank"]));
    assert_eq!(r["mean_miou"], rows[0]["miou"]);
    assert!(stderr(&o).contains("blank.mask.png: no annotated pixels"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let ann = annotated(dir.path(), &[("blank", mask16(|_, _| 65535))]);
    let o = ovseg(&["eval", s(&ann)]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("nothing to score"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let ann = annotated(dir.path(), &[("wrong", mask8(|x, y| if (x, y) == (3, 2) { 2 } else { 0 }))]);
    let o = ovseg(&["eval", s(&ann)]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("wrong.mask.png") && err.contains("value 2 at pixel (3, 2)"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ann = annotated(dir.path(), &[("colour", DynamicImage::ImageRgb8(image::RgbImage::new(90, 60)))]);
    let o = ovseg(&["eval", s(&ann)]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("colour.mask.png") && err.contains("Rgb8"), "{err}");

    // A missing photo is named by the path it was looked for at.
    let text = std::fs::read_to_string(&ann).unwrap().replace("small.png", "gone.png");
    std::fs::write(&ann, text).unwrap();
    let o = ovseg(&["eval", s(&ann)]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains(s(&dir.path().join("gone.png"))), "{}", stderr(&o));
}

#[test]
fn json_reports_never_replace_an_input_or_a_foreign_file() {
    let dir = tempfile::tempdir().unwrap();
    let ann = annotated(dir.path(), &[("eight", mask8(|_, _| 0))]);
    let before = std::fs::read(&ann).unwrap();
    // However it is spelt, and even with --force.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let spelt = dir.path().join("sub/../ann.json");
    let o = ovseg(&["eval", s(&ann), "--json", s(&spelt), "--force"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--json") && stderr(&o).contains("own input"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&ann).unwrap(), before);

    let notes = dir.path().join("notes.json");
    std::fs::write(&notes, "{\"mine\": true}").unwrap();
    let o = ovseg(&["eval", s(&ann), "--json", s(&notes)]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("notes.json") && stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "{\"mine\": true}");

    // A report of ours is replaced; the fixture a run reads is never written.
    let report = dir.path().join("report.json");
    for _ in 0..2 {
        assert_exit(&ovseg(&["eval", s(&ann), "--json", s(&report)]), 0);
        assert_eq!(read_json(&report)["report"], "eval");
    }
    let o = ovseg(&["bench", "depth", "--frames", "1", "--json", s(&report)]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("report.json"), "{}", stderr(&o));
    let fixture = dir.path().join("f.fixture");
    std::fs::write(&fixture, b"OVSEGCM1 not really").unwrap();
    let o = bench_costmap(&["--fixture", s(&fixture), "--write-fixture", s(&fixture)]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--write-fixture") && stderr(&o).contains("own input"), "{}", stderr(&o));
    let o = bench_costmap(&["--write-fixture", s(&notes)]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("notes.json") && stderr(&o).contains("--force"), "{}", stderr(&o));
}

#[test]
fn replay_never_replaces_its_input_bag_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let bag = dir.path().join("in.mcap");
    std::fs::write(&bag, b"not an mcap").unwrap();
    std::fs::create_dir(dir.path().join("rp")).unwrap();
    let o = ovseg(&["replay", s(&bag), "--out", s(&dir.path().join("rp/../in.mcap")), "--force"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("is the input bag"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&bag).unwrap(), b"not an mcap");
    let o = ovseg(&["replay", s(&bag), "--out", s(&dir.path().join("rp")), "--force"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("is a folder"), "{}", stderr(&o));
    let o = ovseg(&["replay", s(&bag), "--out", s(&dir.path().join("out.mcap"))]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains(&format!("reading the input bag {}", bag.display())), "{}", stderr(&o));
    assert_eq!(files_in(dir.path()), BTreeSet::from(["in.mcap".to_string(), "rp".to_string()]));
}

/// `ovseg devices` says what each accelerated backend finds and what `--backend auto` takes: on
/// this machine as it is, and on the CUDA emulator (a stand-in libcuda, tests/cuda-emulator),
/// where a device, NVRTC and both kernel sets are found and `auto` takes them.
#[cfg(feature = "cuda")]
#[test]
fn devices_reports_what_each_backend_finds_and_what_auto_takes() {
    use ovseg_tests::cuda_emulator::{CudaEmulator, DEVICE_NAME};
    let devices = |cmd: &mut Command| {
        let o = cmd.arg("devices").output().expect("running ovseg devices");
        assert!(o.status.success(), "ovseg devices failed:\n{}", String::from_utf8_lossy(&o.stderr));
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["report"], "devices");
        report
    };
    let here = devices(&mut Command::new(env!("CARGO_BIN_EXE_ovseg")));
    let device = &here["cuda"]["device"];
    if device["ok"] == true {
        assert_eq!(here["auto"]["scoring"], "cuda", "{here:#}");
    } else {
        assert!(device["why"].as_str().is_some_and(|w| !w.is_empty()), "{here:#}");
        assert_eq!(here["auto"]["scoring"], "cpu", "{here:#}");
    }
    let libnvinfer = &here["tensorrt"]["libnvinfer"];
    assert!(libnvinfer["ok"] == true || libnvinfer["why"].as_str().is_some_and(|w| w.contains("libnvinfer")), "{here:#}");

    let Some(emulator) = CudaEmulator::build(Path::new(env!("CARGO_TARGET_TMPDIR"))) else { return };
    let kernels = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovseg"));
    let emulated = devices(emulator.apply(&mut cmd, kernels.path()));
    let cuda = &emulated["cuda"];
    assert!(cuda["device"]["found"].as_str().is_some_and(|d| d.contains(DEVICE_NAME)), "{emulated:#}");
    for part in ["nvrtc", "scoring_kernels", "stereo_kernels"] {
        assert_eq!(cuda[part]["ok"], true, "{part}: {emulated:#}");
    }
    assert_eq!(emulated["auto"]["scoring"], "cuda", "{emulated:#}");
    assert!(emulated["auto"]["stereo"].as_str().is_some_and(|s| s.contains(DEVICE_NAME)), "{emulated:#}");
}
