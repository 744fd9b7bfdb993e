//! TensorRT backend. Where TensorRT is present (a TensorRT-enabled ONNX Runtime, libnvinfer and
//! a GPU), the engine is checked against the CPU backend on real photos and the cache is made to
//! rebuild; elsewhere those tests print why and return. What runs everywhere: the libnvinfer
//! version probe against stand-in libraries compiled here, the refusal of this machine's
//! ONNX Runtime (built without the TensorRT provider), and the fallback chain running real
//! frames on the CPU with the reason reported.
use std::path::{Path, PathBuf};
use std::process::Command;

use engine::tensorrt::cache::{EngineCache, SlotState};
use engine::tensorrt::{self, Precision, TensorRtOptions, library};
use engine::{BackendKind, ImageBackend, Pipeline};
use ovseg_tests::{agreement, frame, label_set, model, pipeline, threads};

/// A shared library compiled from `source` with the system C compiler, or None (and why) when
/// there is none.
fn stand_in_library(dir: &Path, name: &str, source: &str) -> Option<PathBuf> {
    let c = dir.join(format!("{name}.c"));
    let so = dir.join(format!("{name}.so"));
    std::fs::write(&c, source).unwrap();
    match Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&c).output() {
        Ok(o) if o.status.success() => Some(so),
        Ok(o) => panic!("cc failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("skipped: no C compiler to build the stand-in libnvinfer ({e})");
            None
        }
    }
}

/// Stand-ins for libnvinfer (TensorRT is not installed here): the real library exports
/// `int32_t getInferLibVersion()`; these export that one function, or a wrong one.
#[test]
fn the_tensorrt_version_is_read_from_libnvinfer_and_bad_libraries_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(good) = stand_in_library(tmp.path(), "nvinfer10", "int getInferLibVersion(void) { return 100300; }\n") else { return };
    let no_symbol = stand_in_library(tmp.path(), "nosymbol", "int somethingElse(void) { return 1; }\n").unwrap();
    let bad_value = stand_in_library(tmp.path(), "badvalue", "int getInferLibVersion(void) { return -1; }\n").unwrap();
    let missing = tmp.path().join("libnvinfer.so.10");

    // The first loadable candidate wins; a missing file is skipped.
    let v = library::version(&[missing.clone(), good.clone()]).unwrap();
    assert_eq!(v.to_string(), "10.3.0");
    let e = library::version(&[no_symbol.clone(), good]).unwrap_err().to_string();
    assert!(e.contains(&no_symbol.display().to_string()) && e.contains("no getInferLibVersion"), "{e}");
    let e = library::version(&[bad_value]).unwrap_err().to_string();
    assert!(e.contains("returned -1"), "{e}");
    let e = library::version(std::slice::from_ref(&missing)).unwrap_err().to_string();
    assert!(e.contains("libnvinfer not found") && e.contains(&missing.display().to_string()), "{e}");
}

/// The options for tests, with the cache in `dir`.
fn options(dir: &Path, precision: Precision) -> TensorRtOptions {
    TensorRtOptions { precision, cache_dir: dir.to_path_buf(), ..TensorRtOptions::default() }
}

#[test]
fn without_tensorrt_frames_run_on_the_cpu_and_the_reason_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model();
    if let Ok(key) = tensorrt::engine_key(m, &options(tmp.path(), Precision::Fp16)) {
        eprintln!("skipped: TensorRT is present here ({} on {}); the fallback is for machines without it", key.tensorrt, key.gpu);
        return;
    }
    let e = tensorrt::engine_key(m, &options(tmp.path(), Precision::Fp16)).unwrap_err().to_string();
    assert!(e.starts_with("TensorRT: "), "{e}");

    let labels = label_set(&["person", "sky", "grass", "building"]);
    let mut chain = Pipeline::new(m, tensorrt::fallback_chain(m, &options(tmp.path(), Precision::Fp16), threads()).unwrap());
    let mut cpu = pipeline();
    assert_eq!(chain.backend_name(), "cpu");
    let reason = chain.backend_fallback().expect("a fallback reason").to_string();
    assert!(reason.contains("tensorrt unavailable: TensorRT:") && reason.contains("onnxruntime-cuda unavailable"), "{reason}");
    for name in ["astronaut", "coffee"] {
        let (a, b) = (chain.process(&frame(name), &labels).unwrap(), cpu.process(&frame(name), &labels).unwrap());
        assert_eq!(a.map.labels, b.map.labels, "{name}: the fallback is the CPU backend itself");
    }
    assert!(std::fs::read_dir(tmp.path()).map_or(true, |mut d| d.next().is_none()), "nothing cached without TensorRT");
}

/// The TensorRT backend, or None (and why) where TensorRT is not present.
fn tensorrt_backend(dir: &Path, precision: Precision) -> Option<Box<dyn ImageBackend>> {
    match tensorrt::load(model(), &options(dir, precision), threads()) {
        Ok(b) => Some(Box::new(b)),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

#[test]
fn engines_match_the_cpu_backend_on_real_photos() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fp32) = tensorrt_backend(tmp.path(), Precision::Fp32) else { return };
    let m = model();
    let labels = label_set(&["person", "sky", "grass", "building", "cup", "table"]);
    let mut cpu_encoder = m.image_backend(BackendKind::Cpu, threads()).unwrap();
    let input = engine::preprocess::preprocess(&frame("astronaut"), &m.manifest.image_encoder.input);
    let (mut fp32, cpu_maps) = (fp32, cpu_encoder.encode(&input).unwrap().levels);
    let worst = fp32.encode(&input).unwrap().levels.iter().zip(&cpu_maps).flat_map(|(a, b)| a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs())).fold(0.0f32, f32::max);
    // Normalised embeddings: TensorRT's FP32 kernels reorder sums, nothing more.
    assert!(worst < 1e-3, "FP32 engine vs CPU: max abs difference {worst}");

    let Some(fp16) = tensorrt_backend(tmp.path(), Precision::Fp16) else { return };
    let (mut half, mut cpu) = (Pipeline::new(m, fp16), pipeline());
    for name in ["astronaut", "coffee", "chelsea"] {
        let (a, b) = (half.process(&frame(name), &labels).unwrap(), cpu.process(&frame(name), &labels).unwrap());
        let agree = agreement(&a.map.labels, &b.map.labels);
        assert!(agree >= 0.995, "{name}: FP16 argmax agreement {agree}");
    }
}

#[test]
fn a_changed_key_or_a_truncated_engine_rebuilds() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_) = tensorrt_backend(tmp.path(), Precision::Fp16) else { return };
    let m = model();
    let key = tensorrt::engine_key(m, &options(tmp.path(), Precision::Fp16)).unwrap();
    let cache = EngineCache::new(tmp.path());
    let slot = cache.slot(&key, false).unwrap();
    assert_eq!(slot.state, SlotState::Reuse, "the engine just built is reused");
    // Another workspace limit is another key: a second entry is built beside the first.
    let other = TensorRtOptions { workspace_mb: 512, ..options(tmp.path(), Precision::Fp16) };
    tensorrt::load(m, &other, threads()).unwrap();
    let entries = std::fs::read_dir(tmp.path()).unwrap().flatten().filter(|e| e.path().join("key.json").is_file()).count();
    assert_eq!(entries, 2);
    // Truncate the engine: the next load moves the entry aside and rebuilds.
    let engine_file = std::fs::read_dir(&slot.dir).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "engine")).unwrap();
    let bytes = std::fs::read(&engine_file).unwrap();
    std::fs::write(&engine_file, &bytes[..bytes.len() / 2]).unwrap();
    tensorrt::load(m, &options(tmp.path(), Precision::Fp16), threads()).unwrap();
    assert!(tmp.path().join("corrupt").read_dir().unwrap().next().is_some(), "the damaged entry was moved aside");
    assert_eq!(cache.slot(&key, false).unwrap().state, SlotState::Reuse);
}

#[test]
fn int8_calibration_ranges_come_from_real_frames_and_the_cache_is_written_safely() {
    use engine::tensorrt::calibrate::{CalibrationTable, frames_from_dir};
    let m = model();
    let images = ovseg_tests::data_dir().join("images");
    let frames = frames_from_dir(&images, 4).unwrap();
    assert_eq!(frames.len(), 4);
    let mut seen = Vec::new();
    let table = CalibrationTable::measure(m, &frames, threads(), &mut |done| seen.push(done)).unwrap();
    assert_eq!(seen, [0, 1, 2, 3, 4]);

    // The input's range, computed independently from the same preprocessing.
    let spec = &m.manifest.image_encoder.input;
    let input_max = frames.iter().flat_map(|f| engine::preprocess::preprocess(f, spec).data).fold(0.0f32, |a, v| a.max(v.abs()));
    assert_eq!(table.ranges[&spec.name], input_max);
    // Every declared output and every ReLU6 is there; ReLU6 never exceeds 6.
    for out in &m.manifest.image_encoder.outputs {
        assert!(table.ranges.get(&out.name).is_some_and(|r| *r > 0.0), "{} missing or zero", out.name);
    }
    let relu6: Vec<f32> = table.ranges.iter().filter(|(n, _)| n.ends_with("relu6")).map(|(_, r)| *r).collect();
    assert!(relu6.len() > 10 && relu6.iter().all(|r| *r > 0.0 && *r <= 6.0), "{relu6:?}");
    assert!(table.ranges.values().all(|r| r.is_finite()));

    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("jetson").join("calibration.cache"); // its folder is made
    table.save(&cache, None).unwrap();
    let back = CalibrationTable::parse(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    assert_eq!(back.ranges.len(), table.ranges.len());
    table.save(&cache, None).unwrap(); // replacing a cache is fine
    let precious = tmp.path().join("notes.txt");
    std::fs::write(&precious, "field notes").unwrap();
    let e = table.save(&precious, None).unwrap_err().to_string();
    assert!(e.contains("not a calibration cache"), "{e}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "field notes");

    let e = frames_from_dir(tmp.path(), 10).unwrap_err().to_string();
    assert!(e.contains("no PNG or JPEG") && e.contains(&tmp.path().display().to_string()), "{e}");
    std::fs::write(tmp.path().join("broken.png"), b"not a png").unwrap();
    let e = frames_from_dir(tmp.path(), 10).unwrap_err().to_string();
    assert!(e.contains("broken.png"), "{e}");
}

/// The I/O binding path the GPU providers use (the input written in place, the levels handed
/// over in the provider's memory), with host memory standing in for CUDA memory, which this
/// machine's CPU-only ONNX Runtime cannot allocate: the same binding, run and hand-over as on a
/// GPU, and the same embeddings as a plain run, bit for bit.
#[test]
fn io_binding_hands_over_what_a_plain_run_gives() {
    use engine::backend::{OrtBackend, host_memory};
    let model = model();
    let spec = &model.manifest.image_encoder.input;
    let mut backend = OrtBackend::cpu(&model.dir, &model.manifest, threads()).unwrap();
    let large = engine::preprocess::preprocess(&frame("coffee"), spec);
    let small_photo = image::imageops::thumbnail(&ovseg_tests::load_rgb("motorcycle_left"), 160, 120);
    let small = engine::preprocess::preprocess(&engine::Frame::from_rgb_image(&small_photo), spec);
    assert!(backend.device_input(large.width, large.height).is_none(), "an unbound backend works from host memory");
    let err = backend.encode_through_binding(&large).unwrap_err().to_string();
    assert!(err.contains("bound to host memory"), "{err}");

    backend.bind_to(host_memory().unwrap()).unwrap();
    let err = backend.encode_device(&mut |_| Ok(())).unwrap_err().to_string();
    assert!(err.contains("before device_input"), "{err}");
    let mut buffers = Vec::new();
    for input in [&large, &large, &small] {
        let want = backend.encode(input).unwrap();
        let got = backend.encode_through_binding(input).unwrap();
        assert_eq!(got.levels.len(), want.levels.len());
        for (a, b) in got.levels.iter().zip(&want.levels) {
            assert_eq!((a.width, a.height, a.dim, a.stride, a.offset), (b.width, b.height, b.dim, b.stride, b.offset));
            assert!(a.data == b.data, "bound and plain runs differ at {}x{}", input.width, input.height);
        }
        assert_eq!(got.depth.is_some(), want.depth.is_some());
        let dims = backend.device_input(input.width, input.height).unwrap().unwrap();
        assert_eq!(dims.dims, [1, 3, input.height, input.width]);
        buffers.push(dims.ptr);
    }
    assert_eq!(buffers[0], buffers[1], "the input buffer is kept while the size stays");
    assert_ne!((large.width, large.height), (small.width, small.height));
    // A failing hand-over is the caller's error, passed through.
    backend.device_input(small.width, small.height).unwrap().unwrap();
    let err = backend.encode_device(&mut |_| Err(engine::EngineError::Gpu("stand-in failure".into()))).unwrap_err();
    assert!(err.to_string().contains("stand-in failure"), "{err}");
}
