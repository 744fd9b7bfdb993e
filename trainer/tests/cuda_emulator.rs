//! burn's CUDA backend (feature `cuda`) on the CUDA emulator of `tests/cuda-emulator`: the
//! image encoder and head training run their CUDA path end to end (burn's generated kernels,
//! compiled by the emulator's NVRTC and run by its driver) and agree with burn's CPU backend.
//! This checks the project's use of burn's CUDA backend where no GPU exists; the GPU machine's
//! `.ci/gpu-check-burn` and `.ci/gpu-check-train` run the same paths on a real device.
//! Run with `cargo test --workspace --features ovseg-trainer/cuda --test cuda_emulator`.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};

use engine::{Frame, ImageBackend, Model};
use ovseg_tests::cuda_emulator::{self, CudaEmulator};
use trainer::train::{TrainConfig, TrainOptions, train};

/// The folder holding the model and fixture the child runs on; set only in the child.
const WORK_ENV: &str = "OVSEG_TRAINER_EMULATOR_WORK";

/// burn multiplies f32 matrices on tensor cores in TF32 (10 mantissa bits) on devices of compute
/// capability 8.0 and above (the emulator reports 8.7 and reproduces TF32's rounding): the
/// encoder's outputs differ from the CPU's by up to about 7e-4 here, and the first loss (before
/// any step) by about 3e-5 (1.7e-6 and 3e-7 with the rounding taken out, measured).
const EMBEDDING_TOLERANCE: f32 = 2e-3;
const FIRST_LOSS_TOLERANCE: f64 = 1e-3;
/// The first Adam steps move every weight of the zero-initialised output layer by the step size,
/// which amplifies those differences: 0.5% by the third loss (after two steps) here. A wrong
/// kernel is off by far more (a float `abs` that truncated to an integer gave depth losses 4x
/// too small).
const CURVE_TOLERANCE: f64 = 2e-2;

#[test]
fn burn_cuda_encodes_and_trains_on_the_cuda_emulator_as_on_the_cpu() {
    if std::env::var_os(WORK_ENV).is_some() {
        return; // this is the child
    }
    let Some(emulator) = CudaEmulator::build(Path::new(env!("CARGO_TARGET_TMPDIR"))) else { return };
    // A small trained model (residual head and depth head) and the fixture of its steps, on the CPU.
    let work = tempfile::tempdir().unwrap();
    let config = TrainConfig { steps: 4, synthetic_train: 3, synthetic_val: 2, hidden: 32, eval_every: 4, threads: 2, ..TrainConfig::default() };
    let options = TrainOptions { progress: false, write_fixture: Some(work.path().join("pool.fixture")), ..TrainOptions::default() };
    train(&config, &work.path().join("model"), &options).unwrap();

    // burn's kernels compile once per source; kept between runs.
    let kernels = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emulator-burn-kernels");
    let (_, stderr) = emulator.run_tests(&["on_the_emulator"], &kernels, &[(WORK_ENV, work.path())]);
    for line in ["encoder on burn-cuda", "training on cuda"] {
        assert!(stderr.contains(line), "the child did not report `{line}`:\n{stderr}");
    }
    eprintln!("{stderr}");
}

/// The child's part: runs only with the emulator's libraries on the library path.
#[test]
fn on_the_emulator() {
    let Some(work) = std::env::var_os(WORK_ENV).map(PathBuf::from) else { return };
    engine::cuda::burn_cuda_ready().expect("burn's CUDA backend has what it needs on the emulator");
    assert_eq!(engine::cuda::device_identity().unwrap().0, cuda_emulator::DEVICE_NAME);

    let model = Model::open(&work.join("model")).unwrap();
    let mut encoder = engine::burn::encoder::fallback_chain(&model, 2).unwrap();
    assert_eq!(encoder.name(), "burn-cuda", "{:?}", encoder.fallback_reason());
    // A small frame: the emulator runs a block's threads one at a time.
    let frame = Frame::from_rgb_image(&trainer::synth::scene(7, 128, 96).image);
    let input = engine::preprocess::preprocess(&frame, &model.manifest.image_encoder.input);
    let on_cuda = encoder.encode(&input).unwrap();
    assert_eq!(encoder.name(), "burn-cuda", "fell back mid-run: {:?}", encoder.fallback_reason());
    let on_cpu = engine::burn::encoder::cpu(&model.dir, &model.manifest).unwrap().encode(&input).unwrap();
    for encoded in [&on_cuda, &on_cpu] {
        assert_eq!(encoded.levels.len(), 2);
        assert!(encoded.depth.is_some(), "the trained model has a depth head");
    }
    let mut worst = 0.0f32;
    for (a, b) in on_cuda.levels.iter().zip(&on_cpu.levels).chain(on_cuda.depth.iter().zip(&on_cpu.depth)) {
        assert_eq!((a.width, a.height, a.dim, a.data.len()), (b.width, b.height, b.dim, b.data.len()));
        assert!(a.data.iter().chain(&b.data).all(|v| v.is_finite()), "a non-finite output");
        worst = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
    }
    assert!(worst < EMBEDDING_TOLERANCE, "burn-cuda differs from burn-cpu by {worst}");
    eprintln!("encoder on burn-cuda ({}): largest difference from burn-cpu {worst:.2e}", cuda_emulator::DEVICE_NAME);

    let fixture = trainer::fixture::read(&work.join("pool.fixture")).unwrap();
    let report = trainer::fixture::compare(&fixture, 3).unwrap();
    assert!(report["cuda_unavailable"].is_null(), "{report}");
    assert_eq!(report["cuda"]["device"], "cuda", "{report}");
    for curve in ["loss", "depth_loss"] {
        for device in ["cpu", "cuda"] {
            // A NaN loss would be written as null.
            let values = report[device][curve].as_array().unwrap();
            assert!(values.len() == 3 && values.iter().all(|v| v.as_f64().is_some_and(f64::is_finite)), "{device} {curve}: {report}");
        }
        let difference = report[format!("{curve}_max_relative_difference")].as_f64().unwrap();
        assert!(difference < CURVE_TOLERANCE, "{curve}: {difference}: {report}");
        let first = |device: &str| report[device][curve][0].as_f64().unwrap();
        let difference = trainer::fixture::curve_difference(&[first("cpu")], &[first("cuda")]);
        assert!(difference < FIRST_LOSS_TOLERANCE, "first {curve}: {difference}: {report}");
    }
    eprintln!(
        "training on cuda: losses {} and {} against the CPU's {} and {}",
        report["cuda"]["loss"], report["cuda"]["depth_loss"], report["cpu"]["loss"], report["cpu"]["depth_loss"]
    );
}
