//! CUDA scorer: the kernels compile with the real NVRTC everywhere (the `nvidia-cuda-nvrtc`
//! wheel, no GPU needed), and on a machine with a CUDA device they reproduce the CPU scorer bit
//! for bit. Without a device the parity tests print why and return; with one, a part that does not
//! start fails them. Where there is none, `device_tests_pass_on_the_cuda_emulator` runs them again
//! in a child process on the CUDA emulator (tests/cuda-emulator).
use std::fs::File;
use std::path::Path;
use std::process::Command;

use engine::costmap::{EmbeddingMap, l2_normalize};
use engine::cuda::{self, CudaScorer};
use engine::labels::LabelSet;
use engine::preprocess::ContentRect;
use engine::scoring::{CpuScorer, PaintRequest, Scorer, ScoringPlan, fused_probabilities};
use engine::{BackendKind, EngineError};
use ovseg_tests::cuda_emulator::{self, CudaEmulator};

/// NVRTC from the pinned wheel, installed once under the target directory (file-locked), unless
/// it is already on the library path.
fn nvrtc() {
    if cuda::ensure_nvrtc(None).is_ok() {
        return;
    }
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda/requirements.txt");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let root = tmp.join("nvrtc-13.0.88");
    std::fs::create_dir_all(tmp).unwrap();
    let lock = File::create(tmp.join("nvrtc.lock")).unwrap();
    lock.lock().expect("locking the NVRTC folder");
    let lib = root.join("nvidia/cu13/lib");
    if !lib.join("libnvrtc.so.13").exists() {
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--no-deps", "--target"])
            .arg(&root)
            .arg("-r")
            .arg(&requirements)
            .output()
            .expect("running pip");
        assert!(out.status.success(), "pip install -r tests/cuda/requirements.txt failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    cuda::ensure_nvrtc(Some(&lib)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn kernels_compile_with_nvrtc_for_jetson_and_datacentre_gpus() {
    nvrtc();
    let (major, minor) = cuda::nvrtc_version().unwrap();
    assert!(major >= 12, "NVRTC {major}.{minor}");
    // Turing, Jetson Orin, Hopper.
    for arch in ["compute_75", "compute_87", "compute_90"] {
        let ptx = cuda::compile(Some(arch)).unwrap_or_else(|e| panic!("{arch}: {e}")).to_src();
        for entry in cuda::ENTRY_POINTS {
            assert!(ptx.contains(&format!(".entry {entry}(")), "{arch}: no entry point {entry} in the PTX");
        }
        // Bit parity with the CPU needs separate multiplies and adds.
        assert!(!ptx.contains("fma.rn.f32"), "{arch}: the PTX fuses multiply-adds");
        assert!(ptx.contains(&format!(".target sm_{}", &arch["compute_".len()..])), "{arch}: wrong target");
    }
}

#[test]
fn stereo_kernels_compile_with_nvrtc_without_fused_multiply_adds() {
    nvrtc();
    for arch in ["compute_75", "compute_87", "compute_90"] {
        let ptx = cuda::compile_source(cuda::STEREO_KERNELS, Some(arch)).unwrap_or_else(|e| panic!("{arch}: {e}")).to_src();
        for entry in cuda::STEREO_ENTRY_POINTS {
            assert!(ptx.contains(&format!(".entry {entry}(")), "{arch}: no entry point {entry} in the stereo PTX");
        }
        // The subpixel parabola must round as the CPU's does.
        assert!(!ptx.contains("fma.rn.f32"), "{arch}: the stereo PTX fuses multiply-adds");
    }
}

/// The Middlebury pair shipped for the stereo tests, as 8-bit gray. Found where the build put
/// the repository, or under the current directory (the GPU machine runs a copy from its root).
fn motorcycle() -> (usize, usize, Vec<u8>, Vec<u8>) {
    let built = ovseg_tests::data_dir().join("stereo");
    let dir = if built.is_dir() { built } else { std::path::PathBuf::from("tests/data/stereo") };
    let load = |name: &str| image::open(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).to_luma8();
    let (mut l, mut r) = (load("motorcycle_left.png"), load("motorcycle_right.png"));
    if emulated() {
        // The emulator runs a block's threads one at a time: a central crop keeps it quick.
        let (x, y, w, h) = cuda_emulator::STEREO_CROP;
        let crop = |img: &image::GrayImage| image::imageops::crop_imm(img, x, y, w, h).to_image();
        (l, r) = (crop(&l), crop(&r));
    }
    (l.width() as usize, l.height() as usize, l.into_raw(), r.into_raw())
}

#[test]
fn cuda_stereo_matches_the_cpu_bit_for_bit() {
    use engine::stereo::{DisparityMatcher, GrayView, Paths, StereoMatcher, StereoParams};
    let (w, h, left, right) = motorcycle();
    // A label per pixel: three vertical bands, so label borders cross every row.
    let labels: Vec<u16> = (0..w * h).map(|i| ((i % w) * 3 / w) as u16).collect();
    let cases = [
        ("8 paths, defaults", StereoParams { max_disp: 48, ..StereoParams::default() }, false),
        ("4 paths, no left-right check", StereoParams { max_disp: 64, paths: Paths::Four, lr_max_diff: None, ..StereoParams::default() }, false),
        ("8 paths, labels, gradient P2", StereoParams { max_disp: 40, p2_gradient: Some(20), ..StereoParams::default() }, true),
        ("no uniqueness, 128 levels", StereoParams { max_disp: 128, uniqueness: 0, ..StereoParams::default() }, false),
        ("5 paths (none from below), labels", StereoParams { max_disp: 48, paths: Paths::Five, ..StereoParams::default() }, true),
        ("3 paths", StereoParams { max_disp: 64, paths: Paths::Three, ..StereoParams::default() }, false),
    ];
    if !device_here("stereo parity") {
        return;
    }
    for (case, params, with_labels) in cases {
        let mut gpu = cuda::CudaStereoMatcher::new(params.clone()).unwrap_or_else(|e| panic!("{case}: a device answers, but the matcher did not start: {e}"));
        let labels = with_labels.then_some(labels.as_slice());
        let (l, r) = (GrayView::new(w, h, &left).unwrap(), GrayView::new(w, h, &right).unwrap());
        let (want, _) = StereoMatcher::new(params).unwrap().compute(l, r, labels).unwrap();
        let (got, timings) = gpu.compute(l, r, labels).unwrap();
        eprintln!("{case}: {} in {:.2} ms", gpu.device_name(), timings.total_ms);
        let differing = want.data.iter().zip(&got.data).filter(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan())).count();
        assert_eq!(differing, 0, "{case}: {differing} of {} disparities differ from the CPU", want.data.len());
    }
}

#[test]
fn a_kernel_error_is_reported_with_the_compiler_log() {
    nvrtc();
    let err = cuda::compile_source("extern \"C\" __global__ void k() { undefined_fn(); }", None).unwrap_err();
    assert!(matches!(err, EngineError::Gpu(_)), "{err:?}");
    assert!(err.to_string().contains("undefined_fn"), "{err}");
}

/// A deterministic pseudo-random stream in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A level whose pixels mix a few smooth "region" directions with noise, so that neighbouring
/// cells agree and early rejection has something to keep.
fn level(rng: &mut Lcg, stride: u32, width: usize, height: usize, dim: usize, regions: &[Vec<f32>]) -> EmbeddingMap {
    let mut data = Vec::with_capacity(width * height * dim);
    for y in 0..height {
        for x in 0..width {
            let r = &regions[(x * 3 / width + 3 * (y * 2 / height)) % regions.len()];
            let mut v: Vec<f32> = r.iter().map(|a| a + 0.6 * rng.next()).collect();
            l2_normalize(&mut v);
            data.extend(v);
        }
    }
    EmbeddingMap { stride, offset: stride as f32 - 0.5, width, height, dim, data }
}

fn random_case(seed: u64, num_labels: usize, dim: usize, sizes: &[(u32, usize, usize)]) -> (Vec<EmbeddingMap>, LabelSet) {
    let mut rng = Lcg(seed);
    let unit = |rng: &mut Lcg| {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.next()).collect();
        l2_normalize(&mut v);
        v
    };
    let embeddings: Vec<Vec<f32>> = (0..num_labels).map(|_| unit(&mut rng)).collect();
    let regions: Vec<Vec<f32>> = (0..6).map(|i| embeddings[(i * 7) % num_labels].clone()).collect();
    let levels = sizes.iter().map(|&(s, w, h)| level(&mut rng, s, w, h, dim, &regions)).collect();
    let labels = LabelSet {
        names: (0..num_labels).map(|i| format!("label {i}")).collect(),
        embeddings: embeddings.concat(),
        dim,
        colors: vec![[0, 0, 0]; num_labels],
        gain: (0..num_labels).map(|_| 1.0 + 0.2 * rng.next()).collect(),
        bias: (0..num_labels).map(|_| 0.05 * rng.next()).collect(),
    };
    (levels, labels)
}

fn plan<'a>(labels: &'a LabelSet, weights: &'a [f32], top_k: usize, width: u32, height: u32, net: (f32, f32)) -> ScoringPlan<'a> {
    ScoringPlan {
        labels,
        logit_scale: 7.5,
        fusion_weights: weights,
        top_k,
        unknown_threshold: 0.2,
        content: ContentRect { x: 0.0, y: 0.0, width: net.0, height: net.1 },
        width,
        height,
    }
}

/// Whether a CUDA device answers. Where none does, the caller skips and this says why; where one
/// does, a part that fails to start (a kernel NVRTC or the driver refuses) fails the test.
fn device_here(test: &str) -> bool {
    nvrtc();
    match cuda::device_identity() {
        Ok((name, (major, minor))) => {
            eprintln!("{test}: running on {name} (sm_{major}{minor})");
            true
        }
        Err(e) => {
            eprintln!("{test}: skipped, no CUDA device here ({e})");
            false
        }
    }
}

fn gpu_scorer(test: &str) -> Option<CudaScorer> {
    device_here(test).then(|| CudaScorer::new().unwrap_or_else(|e| panic!("{test}: a device answers, but the scorer did not start: {e}")))
}

/// GPU and CPU must agree bit for bit: per-cell candidates and probabilities, then labels and
/// confidences at frame resolution.
fn assert_identical(gpu: &mut CudaScorer, levels: &[EmbeddingMap], plan: &ScoringPlan, case: &str) {
    let want = fused_probabilities(levels, plan).unwrap();
    let got = gpu.fused_probabilities(levels, plan).unwrap();
    assert_eq!((got.width, got.height, got.capacity), (want.width, want.height, want.capacity), "{case}: field shape");
    for i in 0..want.width * want.height {
        let (wl, ws) = want.cell(i);
        let (gl, gs) = got.cell(i);
        assert_eq!(gl, wl, "{case}: cell {i} candidates");
        let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(gs), bits(ws), "{case}: cell {i} probabilities");
    }
    let want = CpuScorer.score(levels, plan).unwrap().map;
    let got = gpu.score(levels, plan).unwrap().map;
    assert_eq!(got.labels, want.labels, "{case}: labels");
    let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got.confidence), bits(&want.confidence), "{case}: confidence");
}

#[test]
fn cuda_matches_cpu_bit_for_bit_on_random_embeddings() {
    let Some(mut gpu) = gpu_scorer("random parity") else { return };
    let two = [(32, 8, 6), (16, 16, 12)];
    let three = [(32, 5, 4), (16, 10, 8), (8, 20, 16)];
    for (num_labels, dim, sizes, weights, top_k) in [
        (5usize, 384usize, &two[..], &[1.0f32, 1.0][..], 0usize),
        (150, 384, &two[..], &[1.0, 0.7][..], 8),
        (150, 384, &two[..], &[1.0, 0.7][..], 0),
        (847, 512, &two[..], &[1.0, 1.0][..], 8),
        (60, 37, &three[..], &[0.5, 1.0, 2.0][..], 4),
        (60, 37, &three[..], &[0.5, 1.0, 2.0][..], 0),
    ] {
        let (levels, labels) = random_case(num_labels as u64 * 31 + dim as u64, num_labels, dim, sizes);
        let (w, h) = (sizes[0].0 as usize * sizes[0].1, sizes[0].0 as usize * sizes[0].2);
        for (fw, fh) in [(w as u32, h as u32), (173, 101)] {
            let p = plan(&labels, weights, top_k, fw, fh, (w as f32, h as f32));
            assert_identical(&mut gpu, &levels, &p, &format!("K={num_labels} D={dim} levels={} top_k={top_k} frame {fw}x{fh}", sizes.len()));
        }
    }
}

#[test]
fn gpu_painting_matches_the_cpu_bit_for_bit() {
    let Some(mut gpu) = gpu_scorer("paint parity") else { return };
    let mut rng = Lcg(7);
    let (width, height, num_labels) = (173u32, 101u32, 300usize);
    let pixels = (width * height) as usize;
    // Label ids across the palette, some unknown.
    let labels: Vec<u16> = (0..pixels).map(|_| match (rng.next() * 10.0) as u32 { 0 => engine::UNKNOWN, _ => (rng.next() * num_labels as f32) as u16 }).collect();
    let map = engine::LabelMap { width, height, labels, confidence: vec![0.5; pixels] };
    let colors: Vec<[u8; 3]> = (0..num_labels).map(|i| engine::colors::label_color(&format!("label {i}"))).collect();
    let rgb: Vec<u8> = (0..3 * pixels).map(|_| (rng.next() * 256.0) as u8).collect();
    for (color, overlay) in [(true, Some(0.45f32)), (true, None), (false, Some(0.5)), (false, Some(1.0)), (false, None)] {
        let request = PaintRequest { colors: &colors, color, overlay: overlay.map(|a| (&rgb[..], a)) };
        let want = CpuScorer.paint(&map, &request).unwrap();
        let got = gpu.paint(&map, &request).unwrap();
        assert_eq!(got, want, "colour {color}, overlay {overlay:?}");
    }
}

#[test]
fn cuda_matches_cpu_bit_for_bit_on_real_image_embeddings() {
    let Some(mut gpu) = gpu_scorer("real-image parity") else { return };
    let model = ovseg_tests::model();
    let mut backend = model.image_backend(BackendKind::Cpu, ovseg_tests::threads()).unwrap();
    let weights: Vec<f32> = model.manifest.levels_coarse_to_fine().iter().map(|l| l.fusion_weight).collect();
    let list = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/data/labels-150.txt")).unwrap();
    let names: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(names.len(), 150);
    let labels150 = ovseg_tests::label_set(&names);
    for name in ["motorcycle_left", "coffee"] {
        let frame = ovseg_tests::frame(name);
        let input = engine::preprocess::preprocess(&frame, &model.manifest.image_encoder.input);
        let levels = backend.encode(&input).unwrap().levels;
        for top_k in [0, 8] {
            let mut p = plan(&labels150, &weights, top_k, frame.width, frame.height, (0.0, 0.0));
            p.content = input.content;
            p.logit_scale = model.manifest.segmentation.logit_scale;
            assert_identical(&mut gpu, &levels, &p, &format!("{name} top_k={top_k}"));
        }
    }
}

#[test]
fn auto_backend_takes_cuda_exactly_when_it_starts() {
    let device = device_here("auto backend");
    let direct = CudaScorer::new();
    let auto = engine::scoring::scorer_for(BackendKind::Auto).unwrap();
    match &direct {
        Ok(_) => assert_eq!(auto.name(), "cuda"),
        Err(e) => {
            assert!(!device, "a device answers, but the scorer did not start: {e}");
            assert_eq!(auto.name(), "cpu");
            // Asking for CUDA explicitly is an error that says why.
            let err = engine::scoring::scorer_for(BackendKind::Cuda).err().expect("cuda without a device must fail");
            assert!(matches!(err, EngineError::Gpu(_)), "{err:?}");
        }
    }
}

/// Stands in for a GPU that fails mid-run (device lost, out of memory): this scorer returns the
/// error a failed launch produces. (The same with a real driver error from the CUDA emulator, in
/// the node: `replay_on_the_cuda_emulator_...` in node/tests/ros.rs.)
struct FailingGpu;

impl Scorer for FailingGpu {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn score(&mut self, _: &[EmbeddingMap], _: &ScoringPlan) -> engine::Result<engine::scoring::Scored> {
        Err(EngineError::Gpu("cost_dense: CUDA_ERROR_ILLEGAL_ADDRESS".into()))
    }
}

#[test]
fn a_gpu_failure_mid_run_falls_back_to_the_cpu_and_says_so() {
    let model = ovseg_tests::model();
    let backend = model.image_backend(BackendKind::Cpu, ovseg_tests::threads()).unwrap();
    let mut pipeline = engine::Pipeline::with_scorer(model, backend, Box::new(FailingGpu));
    let labels = ovseg_tests::label_set(&["road", "tree", "sky", "motorcycle"]);
    let frame = ovseg_tests::frame("motorcycle_left");
    assert_eq!(pipeline.scorer_name(), "cuda");
    let seg = pipeline.process(&frame, &labels).expect("the frame must still come out");
    assert_eq!(pipeline.scorer_name(), "cpu");
    assert!(pipeline.scorer_fallback().is_some_and(|r| r.contains("ILLEGAL_ADDRESS")), "{:?}", pipeline.scorer_fallback());
    let want = ovseg_tests::pipeline().process(&frame, &labels).unwrap();
    assert_eq!(seg.map, want.map);
}

#[test]
fn gpu_preprocessing_matches_the_cpu_bit_for_bit_for_every_pixel_format() {
    use cudarc::driver::DevicePtrMut;
    use engine::backend::DeviceTensor;
    use engine::frame::{Frame, PixelFormat};
    use engine::manifest::{Layout, ResizeMode};
    if !device_here("preprocessing parity") {
        return;
    }
    let mut gpu = cuda::CudaPreprocessor::new().unwrap_or_else(|e| panic!("a device answers, but the preprocessor did not start: {e}"));
    let stream = cudarc::driver::CudaContext::new(0).unwrap().default_stream();
    let rgb = ovseg_tests::load_rgb("motorcycle_left");
    let (w, h) = (rgb.width(), rgb.height());
    // No model needed (so this also runs on a GPU machine without one): a spec like the default
    // model's, with the channel order swapped.
    let mut spec = engine::manifest::ImageInputSpec {
        name: "image".into(),
        layout: Layout::Nchw,
        color: engine::manifest::ColorOrder::Bgr,
        mean: [123.7, 116.3, 103.5],
        std: [58.4, 57.1, 57.4],
        resize: ResizeMode::Stretch,
        size: None,
        max_side: 512,
        size_multiple: 32,
    };
    // Camera-like bytes for the YUV layouts (any byte pattern is a valid frame).
    let bytes = |n: usize| -> Vec<u8> { rgb.as_raw().iter().cycle().take(n).copied().collect() };
    let (n, even_w) = ((w * h) as usize, w - w % 2);
    let frames = [
        Frame::from_rgb_image(&rgb),
        Frame::packed(w, h, PixelFormat::Bgr8, bytes(3 * n)).unwrap(),
        Frame::packed(w, h, PixelFormat::Rgba8, bytes(4 * n)).unwrap(),
        Frame::packed(w, h, PixelFormat::Bgra8, bytes(4 * n)).unwrap(),
        Frame::packed(w, h, PixelFormat::Mono8, bytes(n)).unwrap(),
        Frame::packed(even_w, h, PixelFormat::Yuyv, bytes(2 * (even_w * h) as usize)).unwrap(),
        Frame::packed(even_w, h, PixelFormat::Uyvy, bytes(2 * (even_w * h) as usize)).unwrap(),
        Frame::packed(even_w, h - h % 2, PixelFormat::Nv12, bytes((even_w * (h - h % 2)) as usize * 3 / 2)).unwrap(),
    ];
    for (size, resize, layout) in [
        (None, ResizeMode::Stretch, Layout::Nchw),
        (Some([320, 320]), ResizeMode::Letterbox, Layout::Nhwc),
        (Some([1024, 200]), ResizeMode::Stretch, Layout::Nchw),
    ] {
        spec.size = size;
        spec.resize = resize;
        spec.layout = layout;
        for frame in &frames {
            let want = engine::preprocess::preprocess(frame, &spec);
            let got = gpu.preprocess(frame, &spec).unwrap();
            let case = format!("{:?} {size:?} {resize:?} {layout:?}", frame.format);
            assert_eq!((got.width, got.height, got.content), (want.width, want.height, want.content), "{case}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&got.data) == bits(&want.data), "{case}: values differ");
            // Into a device buffer that an encoder reads in place (holding stale values, which
            // a letterbox's border must not keep).
            let mut dst = stream.clone_htod(&vec![7.0f32; want.data.len()]).unwrap();
            let dims = match layout {
                Layout::Nchw => [1, 3, want.height, want.width],
                Layout::Nhwc => [1, want.height, want.width, 3],
            };
            let geometry = {
                let (ptr, _record) = dst.device_ptr_mut(&stream);
                let too_small = DeviceTensor { ptr, dims: [1, 3, want.height, want.width - 1] };
                let err = gpu.preprocess_to(frame, &spec, too_small).unwrap_err().to_string();
                assert!(err.contains("needs"), "{case}: {err}");
                gpu.preprocess_to(frame, &spec, DeviceTensor { ptr, dims }).unwrap()
            };
            assert_eq!((geometry.width, geometry.height, geometry.content), (want.width, want.height, want.content), "{case}");
            assert!(bits(&stream.clone_dtoh(&dst).unwrap()) == bits(&want.data), "{case}: values in place differ");
        }
    }
}

#[test]
fn encoder_outputs_on_the_device_become_the_cpus_levels_bit_for_bit() {
    use cudarc::driver::DevicePtr;
    use engine::backend::{DeviceTensor, nchw_to_pixel_major};
    use engine::manifest::EmbeddingOutput;
    let Some(gpu) = gpu_scorer("encoder output parity") else { return };
    let stream = cudarc::driver::CudaContext::new(0).unwrap().default_stream();
    let (dim, height, width) = (37, 9, 13);
    let mut rng = Lcg(5);
    let mut nchw: Vec<f32> = (0..dim * height * width).map(|_| rng.next() * 4.0 - 2.0).collect();
    for d in 0..dim {
        nchw[d * height * width + 7] = 0.0; // one all-zero pixel: left as it is
    }
    let spec = EmbeddingOutput { name: "embed".into(), stride: 16, fusion_weight: 1.0, center_offset: Some(7.5) };
    let up = stream.clone_htod(&nchw).unwrap();
    let (ptr, _record) = up.device_ptr(&stream);
    let levels = gpu.levels_from_device(&[DeviceTensor { ptr, dims: [1, dim, height, width] }], std::slice::from_ref(&spec)).unwrap();
    let got = gpu.download_level(&levels[0]).unwrap();
    let want = nchw_to_pixel_major(&nchw, dim, height, width, &spec);
    assert_eq!((got.width, got.height, got.dim, got.stride, got.offset), (want.width, want.height, want.dim, want.stride, want.offset));
    let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got.data), bits(&want.data));
}

/// Stands in for a GPU image encoder (ONNX Runtime's CUDA and TensorRT providers, which no
/// machine here has): a fixed pooling-and-projection "network" over the input's values, on the
/// host. `encode` runs it on a host input; the device path takes the input the pipeline
/// preprocessed on the GPU and leaves the raw NCHW levels in device memory for the hand-over, as
/// a GPU provider does. Needs no model files, so the GPU machine runs it from the carry.
struct SyntheticEncoder {
    specs: Vec<engine::manifest::EmbeddingOutput>,
    /// Projection of the three input channels onto each embedding channel.
    weights: Vec<[f32; 3]>,
    /// None: host memory only.
    stream: Option<std::sync::Arc<cudarc::driver::CudaStream>>,
    input: Option<(cudarc::driver::CudaSlice<f32>, [usize; 4])>,
}

impl SyntheticEncoder {
    fn new(manifest: &engine::Manifest, stream: Option<std::sync::Arc<cudarc::driver::CudaStream>>) -> Self {
        assert_eq!(manifest.image_encoder.input.layout, engine::manifest::Layout::Nchw);
        let weights = (0..manifest.embedding_dim).map(|d| [0, 1, 2].map(|c| ((d * 31 + c * 17) as f32 * 0.37).sin())).collect();
        SyntheticEncoder { specs: manifest.levels_coarse_to_fine(), weights, stream, input: None }
    }

    /// Per level `[1, dim, h, w]` and its values: each cell's channel means, projected, tanh.
    fn raw_levels(&self, data: &[f32], width: usize, height: usize) -> Vec<([usize; 4], Vec<f32>)> {
        let plane = width * height;
        let dim = self.weights.len();
        self.specs
            .iter()
            .map(|spec| {
                let s = spec.stride as usize;
                let (cw, ch) = (width.div_ceil(s), height.div_ceil(s));
                let mut out = vec![0.0f32; dim * cw * ch];
                for cy in 0..ch {
                    for cx in 0..cw {
                        let (ys, xs) = (cy * s..((cy + 1) * s).min(height), cx * s..((cx + 1) * s).min(width));
                        let n = (ys.len() * xs.len()) as f32;
                        let mean = [0, 1, 2].map(|c| ys.clone().flat_map(|y| xs.clone().map(move |x| y * width + x)).map(|i| data[c * plane + i]).sum::<f32>() / n);
                        for (d, w) in self.weights.iter().enumerate() {
                            out[d * cw * ch + cy * cw + cx] = (w[0] * mean[0] + w[1] * mean[1] + w[2] * mean[2] + 0.1 * (d as f32).cos()).tanh();
                        }
                    }
                }
                ([1, dim, ch, cw], out)
            })
            .collect()
    }
}

impl engine::ImageBackend for SyntheticEncoder {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn encode(&mut self, input: &engine::preprocess::NetInput) -> engine::Result<engine::backend::Encoded> {
        let levels = self
            .raw_levels(&input.data, input.width, input.height)
            .into_iter()
            .zip(&self.specs)
            .map(|(([_, dim, h, w], data), spec)| engine::backend::nchw_to_pixel_major(&data, dim, h, w, spec))
            .collect();
        Ok(engine::backend::Encoded { levels, depth: None })
    }

    fn device_input(&mut self, width: usize, height: usize) -> Option<engine::Result<engine::backend::DeviceTensor>> {
        use cudarc::driver::DevicePtr;
        let stream = self.stream.as_ref()?;
        let dims = [1, 3, height, width];
        if self.input.as_ref().is_none_or(|(_, d)| *d != dims) {
            self.input = Some((stream.alloc_zeros::<f32>(3 * width * height).unwrap(), dims));
        }
        let (buffer, _) = self.input.as_ref()?;
        let (ptr, _record) = buffer.device_ptr(stream);
        Some(Ok(engine::backend::DeviceTensor { ptr, dims }))
    }

    fn encode_device(
        &mut self,
        take: &mut dyn FnMut(&[engine::backend::DeviceTensor]) -> engine::Result<()>,
    ) -> engine::Result<Option<EmbeddingMap>> {
        use cudarc::driver::DevicePtr;
        let (stream, (buffer, [_, _, height, width])) = self.stream.as_ref().zip(self.input.as_ref()).expect("device_input first");
        let host = stream.clone_dtoh(buffer).unwrap();
        let raw = self.raw_levels(&host, *width, *height);
        let up: Vec<_> = raw.iter().map(|(_, data)| stream.clone_htod(data).unwrap()).collect();
        let on_device: Vec<_> =
            up.iter().zip(&raw).map(|(u, (dims, _))| engine::backend::DeviceTensor { ptr: u.device_ptr(stream).0, dims: *dims }).collect();
        take(&on_device)?;
        Ok(None)
    }
}

#[test]
fn frames_that_stay_on_the_device_segment_as_the_cpu_does_bit_for_bit() {
    let Some(gpu) = gpu_scorer("device-resident frames") else { return };
    // The default model's manifest, no files: the encoder is the synthetic one.
    let model = engine::Model { dir: std::path::PathBuf::new(), manifest: engine::zoo::build::default_manifest() };
    let stream = cudarc::driver::CudaContext::new(0).unwrap().default_stream();
    let mut on_device = engine::Pipeline::with_scorer(&model, Box::new(SyntheticEncoder::new(&model.manifest, Some(stream))), Box::new(gpu));
    let mut on_cpu = engine::Pipeline::new(&model, Box::new(SyntheticEncoder::new(&model.manifest, None)));
    let (_, labels) = random_case(11, 40, model.manifest.embedding_dim, &[]);
    let photo = ovseg_tests::load_rgb("motorcycle_left");
    let small = image::imageops::thumbnail(&photo, 200, 150);
    for (case, frame) in [("photo", engine::Frame::from_rgb_image(&photo)), ("thumbnail", engine::Frame::from_rgb_image(&small)), ("photo again", engine::Frame::from_rgb_image(&photo))] {
        let got = on_device.process(&frame, &labels).unwrap();
        assert_eq!(on_device.frame_memory(), "device", "{case}: {:?}", on_device.device_path_fallback());
        let want = on_cpu.process(&frame, &labels).unwrap();
        assert_eq!(on_cpu.frame_memory(), "host");
        assert_eq!(got.net_size, want.net_size, "{case}");
        assert_eq!(got.map.labels, want.map.labels, "{case}: labels");
        let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.map.confidence), bits(&want.map.confidence), "{case}: confidence");
        let distinct = want.map.labels.iter().collect::<std::collections::BTreeSet<_>>().len();
        eprintln!("{case}: {distinct} labels in the map; device path {:?}", got.timings);
    }
}

/// Whether this is the child process that runs the device tests on the CUDA emulator.
fn emulated() -> bool {
    std::env::var_os(cuda_emulator::KERNELS_ENV).is_some()
}

/// The tests that need a device, each with the name its "running on" line prints.
const DEVICE_TESTS: &[(&str, &str)] = &[
    ("cuda_stereo_matches_the_cpu_bit_for_bit", "stereo parity"),
    ("cuda_matches_cpu_bit_for_bit_on_random_embeddings", "random parity"),
    ("gpu_painting_matches_the_cpu_bit_for_bit", "paint parity"),
    ("cuda_matches_cpu_bit_for_bit_on_real_image_embeddings", "real-image parity"),
    ("auto_backend_takes_cuda_exactly_when_it_starts", "auto backend"),
    ("gpu_preprocessing_matches_the_cpu_bit_for_bit_for_every_pixel_format", "preprocessing parity"),
    ("encoder_outputs_on_the_device_become_the_cpus_levels_bit_for_bit", "encoder output parity"),
    ("frames_that_stay_on_the_device_segment_as_the_cpu_does_bit_for_bit", "device-resident frames"),
    ("the_emulator_catches_overruns_barrier_misuse_and_block_assumptions", "emulator checks"),
];

/// What the emulator claims to catch, caught: a write one byte past a buffer, a barrier that only
/// part of a warp reaches, a shared read that lacks its barrier (seen stale in some launch, as
/// the threads' order changes), shared memory read before it is written (neither zero nor the
/// last block's), and blocks that count on running in index order. Runs only in the emulator's
/// child process.
#[test]
fn the_emulator_catches_overruns_barrier_misuse_and_block_assumptions() {
    if !emulated() {
        eprintln!("emulator checks: skipped, this runs under the CUDA emulator only");
        return;
    }
    use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
    eprintln!("emulator checks: running on {}", cuda::device_identity().unwrap().0);
    const SOURCE: &str = r#"
extern "C" __global__ void one_past_the_end(unsigned char* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1;
}
extern "C" __global__ void split_barrier(int* out) {
    if (threadIdx.x < 16) __syncthreads(); else __syncwarp();
    out[threadIdx.x] = 1;
}
extern "C" __global__ void no_barrier(int tag, int* out) {
    __shared__ int value;
    if (threadIdx.x == 0) value = tag;
    out[threadIdx.x] = value;
}
extern "C" __global__ void unwritten_shared(int* out) {
    __shared__ int value;
    out[blockIdx.x] = value;
    value = 7;
}
extern "C" __global__ void block_order(int* position, int* counter) {
    position[blockIdx.x] = atomicAdd(counter, 1);
}
"#;
    let ctx = CudaContext::new(0).unwrap();
    let module = ctx.load_module(cuda::compile_source(SOURCE, None).unwrap()).unwrap();
    let stream = ctx.default_stream();
    let one_block = |threads: u32| LaunchConfig { grid_dim: (1, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };

    let mut bytes = stream.alloc_zeros::<u8>(100).unwrap();
    let f = module.load_function("one_past_the_end").unwrap();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut bytes).arg(&100i32);
    // SAFETY: the emulator runs it on host memory and reports the overrun instead of writing elsewhere.
    assert!(unsafe { l.launch(one_block(128)) }.is_err(), "a write one past the end went unnoticed");

    let mut ints = stream.alloc_zeros::<i32>(32).unwrap();
    let f = module.load_function("split_barrier").unwrap();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut ints);
    // SAFETY: as above; the launch is refused, not hung.
    assert!(unsafe { l.launch(one_block(32)) }.is_err(), "a barrier half a warp reaches went unnoticed");

    let f = module.load_function("no_barrier").unwrap();
    let stale = (1..=8).any(|tag: i32| {
        let mut l = stream.launch_builder(&f);
        l.arg(&tag).arg(&mut ints);
        // SAFETY: 32 threads write the 32 ints allocated above.
        unsafe { l.launch(one_block(32)) }.unwrap();
        stream.clone_dtoh(&ints).unwrap().iter().any(|&v| v != tag)
    });
    assert!(stale, "a shared read without its barrier saw the new value in every launch");

    // Shared memory starts with neither zeros nor what the block before left.
    let f = module.load_function("unwritten_shared").unwrap();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut ints);
    let blocks = LaunchConfig { grid_dim: (32, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: 32 blocks write the 32 ints allocated above.
    unsafe { l.launch(blocks) }.unwrap();
    let seen = stream.clone_dtoh(&ints).unwrap();
    assert!(seen.iter().all(|&v| v != 0 && v != 7), "unwritten shared memory read as zero or as the last block left it: {seen:?}");

    // Blocks run in an order that changes from launch to launch, not by their index.
    let f = module.load_function("block_order").unwrap();
    let orders: Vec<Vec<i32>> = (0..4)
        .map(|_| {
            let (mut position, mut counter) = (stream.alloc_zeros::<i32>(32).unwrap(), stream.alloc_zeros::<i32>(1).unwrap());
            let mut l = stream.launch_builder(&f);
            l.arg(&mut position).arg(&mut counter);
            // SAFETY: 32 blocks write their own int of the 32.
            unsafe { l.launch(blocks) }.unwrap();
            stream.clone_dtoh(&position).unwrap()
        })
        .collect();
    let in_index_order: Vec<i32> = (0..32).collect();
    assert!(orders.iter().any(|o| o != &in_index_order), "blocks always ran in index order: {orders:?}");
    assert!(orders.windows(2).any(|w| w[0] != w[1]), "every launch ran its blocks in one order: {orders:?}");
}

/// Runs every device test above, unchanged, in a child process whose libcuda and libnvrtc are the
/// emulator: the host code (allocation sizes, copies, launch geometry, argument order) and the
/// kernels' arithmetic against the CPU reference, bit for bit, where no GPU exists. It says
/// nothing of the device's speed, its races or its float library; the GPU machine runs the same
/// tests on the real driver.
#[test]
fn device_tests_pass_on_the_cuda_emulator() {
    if emulated() {
        return; // this is the child
    }
    let Some(emulator) = CudaEmulator::build(Path::new(env!("CARGO_TARGET_TMPDIR"))) else { return };
    let kernels = tempfile::tempdir().unwrap();
    let names: Vec<&str> = DEVICE_TESTS.iter().map(|(name, _)| *name).collect();
    let (stdout, stderr) = emulator.run_tests(&names, kernels.path(), &[]);
    let log = format!("{stdout}\n{stderr}");
    // Each must have run on the emulator, not skipped.
    for (name, label) in DEVICE_TESTS {
        assert!(log.contains(&format!("{label}: running on {}", cuda_emulator::DEVICE_NAME)), "{name} did not run on the emulator:\n{log}");
    }
    eprintln!("{stderr}");
}
