//! End-to-end training on the CPU with the real backbone (fetched like the default model), the
//! real ONNX export and the engine's CPU backend.
use std::path::{Path, PathBuf};

use burn::backend::Flex;

use engine::{BackendKind, Frame, Model};
use engine::burn::{Blocks, DataFree};
use trainer::checkpoint::load_checkpoint;
use trainer::data::IGNORE;
use trainer::export::HEAD_FILE;
use trainer::features::FeatureExtractor;
use trainer::model::{Head, tensor2, values};
use trainer::synth;
use trainer::train::{TrainConfig, TrainOptions, checkpoint_path, train};

fn tiny(steps: usize) -> TrainConfig {
    TrainConfig { steps, synthetic_train: 16, synthetic_val: 8, eval_every: 20, threads: 2, ..TrainConfig::default() }
}

fn run(config: &TrainConfig, out: &Path, resume: Option<PathBuf>) -> anyhow::Result<trainer::train::TrainReport> {
    train(config, out, &TrainOptions { progress: false, resume, ..TrainOptions::default() })
}

/// Max abs difference between the burn head's normalised embeddings and the exported ONNX
/// image encoder run by the engine's CPU backend, both levels, and between the depth heads' ln
/// depth (when the model has one). With tuned backbone blocks the burn side runs them too, from
/// the frozen backbone's tap.
fn export_parity(model_dir: &Path, image: &image::RgbImage) -> (f32, Option<f32>) {
    let checkpoint = load_checkpoint(&model_dir.join(HEAD_FILE)).unwrap();
    let device = Default::default();
    let head = Head::<Flex>::from_weights(&checkpoint.weights, checkpoint.scales, &device);
    let model = Model::open(model_dir).unwrap();
    let (_, weights, class_text) = engine::zoo::build::default_backbone(&|_, _, _| {}).unwrap();
    let tune_blocks = serde_json::from_str::<TrainConfig>(&checkpoint.meta.config).unwrap().tune_blocks;
    let tail = (tune_blocks > 0).then(|| {
        let mut tuned = weights.clone();
        tuned.extend(checkpoint.backbone.clone());
        Blocks::<Flex>::tail(&tuned, tune_blocks, &device).unwrap()
    });
    let tap_block = tail.as_ref().and_then(Blocks::input_block);
    let mut features = FeatureExtractor::new(&weights, &class_text, &model.manifest, 2, tap_block).unwrap().extract(image).unwrap();
    if let (Some(tail), Some(tap)) = (&tail, &features.tap) {
        let [c, h, w] = tap.shape;
        let levels = DataFree::<Flex>::new(&weights, &class_text, &device)
            .unwrap()
            .levels(tail.forward(burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(tap.data.clone(), [1, c, h, w]), &device)));
        features.coarse.features = values(levels.coarse_features).unwrap();
        features.coarse.base = values(levels.coarse_base).unwrap();
        features.fine.features = values(levels.fine_features).unwrap();
        features.fine.base = values(levels.fine_base).unwrap();
    }

    let mut backend = model.image_backend(BackendKind::Cpu, 2).unwrap();
    let net = engine::preprocess::preprocess(&Frame::from_rgb_image(image), &model.manifest.image_encoder.input);
    let encoded = backend.encode(&net).unwrap();
    let maps = encoded.levels;
    assert_eq!(maps.len(), 2, "coarse and fine level");
    let mut worst = 0.0f32;
    let mut fine_embedding = None;
    for (level, map) in [&features.coarse, &features.fine].into_iter().zip(&maps) {
        assert_eq!((level.grid.width, level.grid.height), (map.width, map.height));
        let cells = level.cells();
        let embedded = head.embed(
            tensor2(level.features.clone(), [cells, level.features.len() / cells], &device),
            tensor2(level.base.clone(), [cells, map.dim], &device),
        );
        let norm = (embedded.clone() * embedded.clone()).sum_dim(1).sqrt();
        fine_embedding = Some((tensor2(level.features.clone(), [cells, level.features.len() / cells], &device), embedded.clone()));
        let ours = values::<Flex, 2>(embedded / norm).unwrap();
        assert_eq!(ours.len(), map.data.len());
        worst = ours.iter().zip(&map.data).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    assert_eq!(checkpoint.depth.is_some(), encoded.depth.is_some(), "a depth output exactly where the head has a depth head");
    let depth_diff = checkpoint.depth.as_ref().zip(encoded.depth).zip(fine_embedding).map(|((d, onnx), (features, embedding))| {
        let w1 = tensor2(engine::backend::transpose(&d.w1, d.hidden, d.inputs()), [d.inputs(), d.hidden], &device);
        let w2 = tensor2(d.w2.clone(), [d.hidden, 1], &device);
        let b1 = burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(d.b1.clone(), [d.hidden]), &device);
        let b2 = burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(vec![d.b2], [1]), &device);
        let ours = values(engine::burn::depth_log::<Flex>(features, embedding, [w1, w2], [b1, b2])).unwrap();
        assert_eq!(ours.len(), onnx.data.len());
        ours.iter().zip(&onnx.data).map(|(a, b)| (a - b.ln()).abs()).fold(0.0f32, f32::max)
    });
    (worst, depth_diff)
}

/// Max abs difference between burn's whole image encoder (`engine::burn::encoder`, on burn's
/// CPU backend) and ONNX Runtime on the model in `model_dir`, on a real photo, both levels.
fn burn_encoder_vs_onnx(model_dir: &Path) -> f32 {
    use engine::ImageBackend;
    let model = Model::open(model_dir).unwrap();
    let photo = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/images/chelsea.jpg")).unwrap().to_rgb8();
    let net = engine::preprocess::preprocess(&Frame::from_rgb_image(&photo), &model.manifest.image_encoder.input);
    let mut burn = engine::burn::encoder::BurnBackend::<Flex>::open(model_dir, &model.manifest, Default::default(), "burn-cpu").unwrap();
    let ours = burn.encode(&net).unwrap();
    let theirs = model.image_backend(BackendKind::Cpu, 2).unwrap().encode(&net).unwrap();
    // The GPU providers' I/O binding path (depth bound to host memory, levels to the device),
    // host memory standing in for the device: what a plain run gives, bit for bit.
    let mut bound = engine::backend::OrtBackend::cpu(model_dir, &model.manifest, 2).unwrap();
    bound.bind_to(engine::backend::host_memory().unwrap()).unwrap();
    let through = bound.encode_through_binding(&net).unwrap();
    assert!(through.depth.as_ref().map(|d| &d.data) == theirs.depth.as_ref().map(|d| &d.data), "depth through the binding");
    assert!(through.levels.iter().zip(&theirs.levels).all(|(a, b)| a.data == b.data) && through.levels.len() == theirs.levels.len());
    assert_eq!(ours.levels.len(), theirs.levels.len());
    let mut worst = 0.0f32;
    // Depth in metres compares relatively (ln depth, as the head computes it).
    if let (Some(a), Some(b)) = (&ours.depth, &theirs.depth) {
        assert_eq!((a.width, a.height), (b.width, b.height));
        worst = a.data.iter().zip(&b.data).map(|(x, y)| (x.ln() - y.ln()).abs()).fold(worst, f32::max);
    }
    assert_eq!(ours.depth.is_some(), theirs.depth.is_some(), "both run the depth head, or neither");
    assert_eq!(ours.depth.is_some(), model.manifest.image_encoder.depth.is_some());
    for (a, b) in ours.levels.iter().zip(&theirs.levels) {
        assert_eq!((a.width, a.height, a.dim, a.stride), (b.width, b.height, b.dim, b.stride));
        assert_eq!(a.offset, b.offset);
        worst = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
    }
    worst
}

#[test]
fn training_beats_the_untrained_head_and_the_export_equals_the_trained_forward() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let report = run(&tiny(60), &out, None).unwrap();
    println!(
        "held-out synthetic mIoU: untrained {:.3}, trained {:.3}; {:.0} img/s through the head",
        report.untrained.miou, report.trained.miou, report.train_images_per_second
    );
    assert_eq!(report.steps_done, 60);
    assert_eq!(report.untrained.images, 8);
    assert!(report.trained.miou > report.untrained.miou + 0.15, "trained {} vs untrained {}", report.trained.miou, report.untrained.miou);
    assert!(report.trained.miou > 0.5, "trained mIoU {}", report.trained.miou);
    let first = &report.history[0];
    let last = report.history.last().unwrap();
    assert!(last.val_loss < first.val_loss, "validation loss falls: {:?}", report.history);

    // The exported directory is a model the engine opens with the training labels as defaults.
    let model = Model::open(&out).unwrap();
    assert_eq!(model.manifest.segmentation.default_labels, report.labels);
    assert!(checkpoint_path(&out).is_file());

    // One model definition: held-out scene, both levels.
    let scene = synth::scene(99_999, 320, 224);
    let (diff, depth_diff) = export_parity(&out, &scene.image);
    println!("export parity: max abs diff {diff:e}, ln depth {depth_diff:?}");
    assert!(diff < 1e-4, "exported ONNX vs burn head: max abs diff {diff}");
    let depth_diff = depth_diff.expect("the synthetic set has depth, so the model has a depth head");
    assert!(depth_diff < 1e-4, "exported depth head vs burn: max abs diff of ln depth {depth_diff}");

    // The depth head learned the scenes' geometry: far better than one depth everywhere.
    let depth = report.depth.as_ref().expect("a depth report");
    println!("depth on held-out cells: untrained {:?}, trained {:?}", depth.untrained, depth.trained);
    assert!(depth.trained.abs_rel < 0.6 * depth.untrained.abs_rel, "{depth:?}");
    assert!(depth.trained.delta1 > depth.untrained.delta1 + 0.2, "{depth:?}");
    // Through the engine, at frame resolution: the same picture (the data-free model has none).
    assert!(report.untrained.depth.is_none());
    let pixels = report.trained.depth.expect("depth scored through the engine");
    println!("depth through the engine, {} pixels: {pixels:?}", report.trained.depth_pixels);
    assert!(report.trained.depth_pixels > 100_000 && pixels.abs_rel < 0.6 * depth.untrained.abs_rel, "{pixels:?}");

    // The engine gives the depth at frame resolution, and what it gives tracks the truth.
    let mut pipeline = model.pipeline(BackendKind::Cpu, 2).unwrap();
    let labels = model.label_bank(2, None).unwrap().build(&report.labels.iter().map(|l| engine::LabelSpec::new(l.clone())).collect::<Vec<_>>()).unwrap();
    let seg = pipeline.process(&Frame::from_rgb_image(&scene.image), &labels).unwrap();
    let metres = seg.depth.expect("the pipeline passes the depth on").metres();
    assert_eq!(metres.len(), 320 * 224);
    let truth = scene.depth.unwrap();
    let (mut near, mut far) = (Vec::new(), Vec::new());
    for (i, t) in truth.pixels().enumerate() {
        match t.0[0] {
            d if d < 8.0 => near.push(metres[i]),
            d if d > 25.0 => far.push(metres[i]),
            _ => {}
        }
    }
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    let (near, far) = (median(&mut near), median(&mut far));
    println!("engine depth: median {near:.1} m where the truth is under 8 m, {far:.1} m where it is over 25 m");
    assert!(far > 2.0 * near, "near {near} vs far {far}");
}

/// The burn copy of the last five blocks (one stride-1 block with a width change, four
/// dilated ones with residuals), the head conv and the data-free part against the ONNX graph
/// the engine runs, on the frozen weights.
#[test]
fn the_burn_backbone_tail_equals_the_onnx_graph() {
    let (_, weights, class_text) = engine::zoo::build::default_backbone(&|_, _, _| {}).unwrap();
    let model = Model::open(&engine::zoo::build::default_backbone(&|_, _, _| {}).unwrap().0).unwrap();
    let device = Default::default();
    let tail = Blocks::<Flex>::tail(&weights, 5, &device).unwrap();
    assert_eq!(tail.input_block(), Some(10));
    let image = synth::scene(4242, 320, 224).image;
    let frozen = FeatureExtractor::new(&weights, &class_text, &model.manifest, 2, Some(10)).unwrap().extract(&image).unwrap();
    let tap = frozen.tap.as_ref().unwrap();
    assert_eq!(tap.shape, [112, 14, 20], "block 10: 112 channels at stride 16");
    let [c, h, w] = tap.shape;
    let input = burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(tap.data.clone(), [1, c, h, w]), &device);
    let levels = DataFree::<Flex>::new(&weights, &class_text, &device).unwrap().levels(tail.forward(input));
    let worst = |ours: Vec<f32>, theirs: &[f32]| {
        assert_eq!(ours.len(), theirs.len());
        ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max)
    };
    let diffs = [
        worst(values(levels.fine_features).unwrap(), &frozen.fine.features),
        worst(values(levels.coarse_features).unwrap(), &frozen.coarse.features),
        worst(values(levels.fine_base).unwrap(), &frozen.fine.base),
        worst(values(levels.coarse_base).unwrap(), &frozen.coarse.base),
    ];
    println!("burn tail vs ONNX, max abs diff (fine/coarse features, fine/coarse base): {diffs:?}");
    assert!(diffs[..2].iter().all(|&d| d < 1e-4), "features (ReLU6, up to 6): {diffs:?}");
    assert!(diffs[2..].iter().all(|&d| d < 1e-5), "data-free embeddings: {diffs:?}");
    let (default_dir, _, _) = engine::zoo::build::default_backbone(&|_, _, _| {}).unwrap();
    let diff = burn_encoder_vs_onnx(&default_dir);
    println!("burn encoder vs ONNX Runtime, default model, real photo: max abs diff {diff:e}");
    assert!(diff < 1e-4, "burn encoder vs ONNX Runtime: {diff}");
    // `backend burn` picks it (burn-cuda only in builds with that feature and a driver) and a
    // whole frame goes through the pipeline.
    let backend: BackendKind = "burn".parse().unwrap();
    let pipeline = Model::open(&default_dir).unwrap().pipeline(backend, 2).unwrap();
    assert!(pipeline.backend_name().starts_with("burn-"), "{}", pipeline.backend_name());
    // Writing the folded convs back as state-dict tensors and reading them again is lossless
    // to float rounding.
    let mut written = weights.clone();
    written.extend(tail.to_state_dict().unwrap());
    let again = Blocks::<Flex>::tail(&written, 5, &device).unwrap().to_state_dict().unwrap();
    for (name, t) in tail.to_state_dict().unwrap() {
        let d = worst(again[&name].data.clone(), &t.data);
        assert!(d <= 1e-6 * t.data.iter().fold(1.0f32, |m, x| m.max(x.abs())), "{name}: {d}");
    }
}

#[test]
fn tuning_the_last_block_trains_and_exports_what_burn_computed() {
    let dir = tempfile::tempdir().unwrap();
    // In folders that do not exist yet: they are made before training starts.
    let out = dir.path().join("runs").join("tuned").join("model");
    let config = TrainConfig { tune_blocks: 1, synthetic_train: 8, synthetic_val: 4, copies: 1, ..tiny(12) };
    let report = run(&config, &out, None).unwrap();
    println!("tune_blocks 1: held-out mIoU untrained {:.3}, trained {:.3}", report.untrained.miou, report.trained.miou);
    assert!(report.trained.miou > report.untrained.miou, "trained {} vs untrained {}", report.trained.miou, report.untrained.miou);
    let checkpoint = load_checkpoint(&checkpoint_path(&out)).unwrap();
    let names: Vec<&str> = checkpoint.backbone.keys().map(String::as_str).collect();
    assert!(names.contains(&"_blocks.15._expand_conv.weight") && names.contains(&"_conv_head.weight"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("_blocks.14")), "block 14 stays frozen: {names:?}");
    let (_, weights, _) = engine::zoo::build::default_backbone(&|_, _, _| {}).unwrap();
    let moved = &checkpoint.backbone["_conv_head.weight"].data;
    let original = engine::zoo::effnet::folded(&weights, &engine::zoo::effnet::head_conv()).unwrap().weight;
    let change = moved.iter().zip(&original).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(change > 1e-4, "the head conv was tuned (max change {change})");
    let (diff, depth_diff) = export_parity(&out, &synth::scene(77_777, 256, 192).image);
    println!("tuned export parity: max abs diff {diff:e}, ln depth {depth_diff:?}");
    assert!(depth_diff.is_some_and(|d| d < 1e-4), "the depth head reads the tuned features: {depth_diff:?}");
    assert!(diff < 1e-4, "exported ONNX vs burn tail + head: max abs diff {diff}");
    // The engine's burn backend runs the exported file (tuned blocks and residual head) as
    // ONNX Runtime does.
    let diff = burn_encoder_vs_onnx(&out);
    println!("burn encoder vs ONNX Runtime, trained model, real photo: max abs diff {diff:e}");
    assert!(diff < 1e-4, "burn encoder vs ONNX Runtime: {diff}");
}

#[test]
fn resuming_gives_the_weights_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = |steps| TrainConfig { synthetic_train: 6, synthetic_val: 2, eval_every: 4, hidden: 32, ..tiny(steps) };
    // Frozen backbone, and with the last block tuned (its own optimizer state is resumed too).
    for tune_blocks in [0, 1] {
        let config = |steps| TrainConfig { tune_blocks, ..config(steps) };
        let whole = dir.path().join(format!("whole{tune_blocks}"));
        run(&config(12), &whole, None).unwrap();
        let part = dir.path().join(format!("part{tune_blocks}"));
        run(&config(8), &part, None).unwrap();
        let report = run(&config(12), &part, Some(checkpoint_path(&part))).unwrap();
        assert_eq!(report.steps_done, 12);
        assert_eq!(report.history.iter().map(|h| h.step).collect::<Vec<_>>(), [0, 4, 8, 12]);
        let a = load_checkpoint(&checkpoint_path(&whole)).unwrap();
        let b = load_checkpoint(&checkpoint_path(&part)).unwrap();
        assert_eq!(a.weights, b.weights, "resumed weights equal the uninterrupted run's bit for bit (tune_blocks {tune_blocks})");
        assert_eq!(a.scales, b.scales);
        assert_eq!(a.backbone, b.backbone, "tuned blocks too (tune_blocks {tune_blocks})");
        assert_eq!(a.backbone.is_empty(), tune_blocks == 0);
        assert!(a.depth.is_some(), "the synthetic set trains a depth head");
        assert_eq!(a.depth, b.depth, "the depth head resumes too (tune_blocks {tune_blocks})");
    }
    let part = dir.path().join("part0");

    // A checkpoint already at or past the requested steps, or from another configuration, is refused.
    let err = format!("{:#}", run(&config(12), &part, Some(checkpoint_path(&part))).unwrap_err());
    assert!(err.contains("at step 12") && err.contains("steps (12)"), "{err}");
    let other = TrainConfig { seed: 2, ..config(16) };
    let err = format!("{:#}", run(&other, &part, Some(checkpoint_path(&part))).unwrap_err());
    assert!(err.contains("another configuration: seed is 1 there and 2 now"), "{err}");
}

#[test]
fn a_diverging_run_stops_naming_the_step_the_batch_and_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let config = TrainConfig { synthetic_train: 4, synthetic_val: 2, eval_every: 1, batch: 2, learning_rate: 40.0, ..tiny(20) };
    let err = format!("{:#}", run(&config, &out, None).unwrap_err());
    assert!(err.contains("training diverged at step") && err.contains("synthetic scene"), "{err}");
    assert!(err.contains(&checkpoint_path(&out).display().to_string()), "{err}");
    let checkpoint = load_checkpoint(&checkpoint_path(&out)).unwrap();
    assert!(err.contains(&format!("(step {})", checkpoint.meta.step)), "{err}");
    assert!(!out.exists(), "nothing is exported from a diverged run");
}

/// A folder data set with `count` synthetic scenes; `corrupt` may then spoil it.
fn folder_set(root: &Path, count: u64) -> PathBuf {
    let dir = root.join("set");
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    std::fs::write(dir.join("labels.txt"), synth::CLASSES.map(|(n, _)| n).join("\n")).unwrap();
    for i in 0..count {
        let s = synth::scene(500 + i, 256, 192);
        s.image.save(dir.join(format!("images/{i:03}.png"))).unwrap();
        s.mask.save(dir.join(format!("masks/{i:03}.png"))).unwrap();
    }
    dir
}

#[test]
fn bad_data_is_refused_naming_the_file_and_the_value() {
    let root = tempfile::tempdir().unwrap();
    let set = folder_set(root.path(), 5);
    let config = |data: &Path| TrainConfig { data: vec![data.to_path_buf()], steps: 2, ..tiny(2) };
    let out = root.path().join("model");
    let expect_error = |needles: &[&str]| {
        let err = format!("{:#}", run(&config(&set), &out, None).unwrap_err());
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
    };

    // A mask value beyond the 4 labels.
    let mask_path = set.join("masks/002.png");
    let good_mask = image::open(&mask_path).unwrap().to_luma8();
    let mut bad = good_mask.clone();
    bad.put_pixel(7, 3, image::Luma([9]));
    bad.save(&mask_path).unwrap();
    expect_error(&["002.png", "mask value 9 at (7, 3)", "4 labels"]);

    // A mask of another size.
    image::imageops::crop_imm(&good_mask, 0, 0, 128, 192).to_image().save(&mask_path).unwrap();
    expect_error(&["002.png", "mask is 128x192, image is 256x192"]);
    good_mask.save(&mask_path).unwrap();

    // An image that does not decode.
    let image_path = set.join("images/001.png");
    let good_image = std::fs::read(&image_path).unwrap();
    std::fs::write(&image_path, &good_image[..200]).unwrap();
    expect_error(&["001.png", "cannot decode"]);
    std::fs::write(&image_path, &good_image).unwrap();

    // No images at all.
    let empty = root.path().join("empty");
    std::fs::create_dir_all(empty.join("images")).unwrap();
    std::fs::write(empty.join("labels.txt"), "weed\n").unwrap();
    let err = format!("{:#}", run(&config(&empty), &out, None).unwrap_err());
    assert!(err.contains("no samples") && err.contains("empty"), "{err}");

    // A label outside the training sets in the validation set.
    let val = root.path().join("val");
    std::fs::create_dir_all(val.join("images")).unwrap();
    std::fs::create_dir_all(val.join("masks")).unwrap();
    std::fs::write(val.join("labels.txt"), "sky\nweed\n").unwrap();
    std::fs::copy(set.join("images/000.png"), val.join("images/000.png")).unwrap();
    std::fs::copy(set.join("masks/000.png"), val.join("masks/000.png")).unwrap();
    let cfg = TrainConfig { val_data: vec![val], ..config(&set) };
    let err = format!("{:#}", run(&cfg, &out, None).unwrap_err());
    assert!(err.contains("\"weed\" is in no training data set"), "{err}");
    assert!(!out.exists(), "no model is written from bad data");

    // With the data repaired the same folder trains (every 5th image held out).
    let ignore_edge = {
        let mut m = good_mask;
        for y in 0..192 {
            m.put_pixel(0, y, image::Luma([IGNORE]));
        }
        m
    };
    ignore_edge.save(&mask_path).unwrap();
    let report = run(&config(&set), &out, None).unwrap();
    assert_eq!((report.train_images, report.val_images), (4 * 2, 1));
}

#[test]
fn configuration_errors_name_the_field() {
    let cases = [
        (TrainConfig { image_size: [250, 192], ..TrainConfig::default() }, "image_size [250, 192]"),
        (TrainConfig { steps: 0, ..TrainConfig::default() }, "steps is 0"),
        (TrainConfig { learning_rate: f64::NAN, ..TrainConfig::default() }, "learning_rate NaN"),
        (TrainConfig { synthetic_val: 0, ..TrainConfig::default() }, "synthetic_train / synthetic_val"),
        (TrainConfig { tune_blocks: 16, ..TrainConfig::default() }, "tune_blocks 16 must be below 16"),
        (TrainConfig { tune_learning_rate: -1.0, ..TrainConfig::default() }, "tune_learning_rate -1"),
        (
            TrainConfig { tune_blocks: 2, zs3_generated: 4, holdout_labels: vec!["grass".into()], ..TrainConfig::default() },
            "cannot be combined with tuning",
        ),
    ];
    for (config, needle) in cases {
        let err = format!("{:#}", config.check().unwrap_err());
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    // No CUDA here (no driver, or a build without the feature): asking for it is refused with
    // the reason, before any work.
    let dir = tempfile::tempdir().unwrap();
    let options = TrainOptions { device: trainer::train::TrainDevice::Cuda, ..TrainOptions::default() };
    let err = format!("{:#}", train(&tiny(2), &dir.path().join("m"), &options).unwrap_err());
    assert!(err.starts_with("device cuda: "), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "steps: 10\nlearning_rat: 0.1\n").unwrap();
    let err = format!("{:#}", TrainConfig::read(&path).unwrap_err());
    assert!(err.contains("learning_rat"), "{err}");
    std::fs::write(&path, "steps: 10\naugment: {scale_min: 0.8, scale_max: 1.2, flip: false, color: 0.1}\n").unwrap();
    let config = TrainConfig::read(&path).unwrap();
    assert_eq!((config.steps, config.augment.scale_min, config.hidden), (10, 0.8, TrainConfig::default().hidden));
}

#[test]
fn export_never_replaces_a_directory_that_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("photos");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("holiday.jpg"), b"precious").unwrap();
    let config = TrainConfig { synthetic_train: 2, synthetic_val: 1, ..tiny(1) };
    let err = format!("{:#}", run(&config, &out, None).unwrap_err());
    assert!(err.contains("not a model directory"), "{err}");
    assert_eq!(std::fs::read(out.join("holiday.jpg")).unwrap(), b"precious");
}

#[test]
fn held_out_labels_are_not_trained_and_are_scored_apart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let config = TrainConfig { synthetic_train: 4, synthetic_val: 4, holdout_labels: vec!["brick wall".into()], ..tiny(5) };
    let report = run(&config, &out, None).unwrap();
    assert_eq!(report.labels, ["sky", "grass", "gravel path"]);
    assert_eq!(Model::open(&out).unwrap().manifest.segmentation.default_labels, report.labels);
    for eval in [&report.untrained, &report.trained] {
        let brick = eval.classes.iter().find(|c| c.label == "brick wall").unwrap();
        assert!(brick.pixels > 0, "the held-out label is still evaluated");
        let (seen, unseen, h) = (eval.seen_miou.unwrap(), eval.unseen_miou.unwrap(), eval.harmonic_miou.unwrap());
        assert_eq!(Some(unseen), brick.iou);
        assert!((h - 2.0 * seen * unseen / (seen + unseen).max(1e-12)).abs() < 1e-12);
    }
    let err = format!("{:#}", run(&TrainConfig { holdout_labels: vec!["weed".into()], ..config }, &out, None).unwrap_err());
    assert!(err.contains("holdout_labels: \"weed\" is not a label"), "{err}");
}

#[test]
fn zs3_generates_held_out_cells_from_a_generator_that_learned_the_seen_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    let base = TrainConfig { synthetic_train: 6, synthetic_val: 4, holdout_labels: vec!["brick wall".into()], zs3_generated: 8, ..tiny(5) };
    let report = run(&base, &out, None).unwrap();
    // The held-out name joins the label set (its pixels stay unused).
    assert_eq!(report.labels, ["sky", "grass", "gravel path", "brick wall"]);
    let [first, last] = report.zs3_generator_mmd.clone().expect("generator report");
    let learned: Vec<(f32, f32)> = first.iter().zip(&last).filter(|(a, _)| !a.is_nan()).map(|(a, b)| (*a, *b)).collect();
    assert!(!learned.is_empty());
    for (a, b) in learned {
        assert!(b < a, "the generator's MMD to the real cells should fall: {a} -> {b}");
    }
    assert!(report.trained.unseen_miou.is_some());
    let err = format!("{:#}", TrainConfig { holdout_labels: vec![], ..base }.check().unwrap_err());
    assert!(err.contains("zs3_generated is 8, but holdout_labels is empty"), "{err}");
}

/// Writes `count` synthetic scenes (seeds from `first`) as a folder data set of `kind`
/// ("fine"; "coarse": masks shifted 10 px sideways, the uncovered strip ignored; "tags": tags.json).
fn annotated_set(root: &Path, name: &str, kind: &str, first: u64, count: u64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    std::fs::write(dir.join("labels.txt"), synth::CLASSES.map(|(n, _)| n).join("\n")).unwrap();
    std::fs::write(dir.join("dataset.yaml"), format!("annotation: {kind}\n")).unwrap();
    let mut tags = serde_json::Map::new();
    for seed in first..first + count {
        let s = synth::scene(seed, 256, 192);
        let stem = format!("{seed}");
        s.image.save(dir.join(format!("images/{stem}.png"))).unwrap();
        match kind {
            "tags" => {
                let mut present: Vec<&str> = synth::CLASSES.iter().enumerate().filter(|(i, _)| s.mask.pixels().any(|p| usize::from(p.0[0]) == *i)).map(|(_, (n, _))| *n).collect();
                present.dedup();
                tags.insert(stem, present.into());
            }
            "coarse" => {
                let rough = image::GrayImage::from_fn(256, 192, |x, y| {
                    let v = s.mask.get_pixel(x.saturating_sub(10), y).0[0];
                    if x < 10 { image::Luma([IGNORE]) } else { image::Luma([v]) }
                });
                rough.save(dir.join(format!("masks/{stem}.png"))).unwrap();
            }
            _ => s.mask.save(dir.join(format!("masks/{stem}.png"))).unwrap(),
        }
    }
    if kind == "tags" {
        std::fs::write(dir.join("tags.json"), serde_json::Value::Object(tags).to_string()).unwrap();
    }
    dir
}

#[test]
fn coarse_masks_and_image_tags_train_with_their_own_losses() {
    let root = tempfile::tempdir().unwrap();
    let val = annotated_set(root.path(), "val", "fine", 9000, 6);
    let mut miou = std::collections::HashMap::new();
    let mut untrained = 0.0;
    for kind in ["fine", "coarse", "tags"] {
        let set = annotated_set(root.path(), kind, kind, 100, 12);
        let config = TrainConfig { data: vec![set.clone()], val_data: vec![val.clone()], eval_every: 40, ..tiny(80) };
        let report = run(&config, &root.path().join(format!("model-{kind}")), None).unwrap();
        println!("{kind}: held-out mIoU untrained {:.3} -> trained {:.3}", report.untrained.miou, report.trained.miou);
        assert_eq!(report.train_images, 12 * 2);
        untrained = report.untrained.miou;
        miou.insert(kind, report.trained.miou);
    }
    assert!(miou["fine"] > untrained + 0.2, "{miou:?} vs {untrained}");
    assert!(miou["coarse"] > untrained + 0.15, "{miou:?} vs {untrained}");
    assert!(miou["tags"] > untrained, "tags alone still help: {miou:?} vs {untrained}");
}

#[test]
fn tag_files_are_checked() {
    let root = tempfile::tempdir().unwrap();
    let set = annotated_set(root.path(), "tags", "tags", 100, 2);
    std::fs::write(set.join("tags.json"), r#"{"100": ["grass", "weed"], "101": ["sky"]}"#).unwrap();
    let err = trainer::data::Split::folders(std::slice::from_ref(&set)).unwrap_err().to_string();
    assert!(err.contains("tags.json") && err.contains("tag \"weed\" is not in labels.txt"), "{err}");
    std::fs::write(set.join("tags.json"), r#"{"100": ["grass"]}"#).unwrap();
    let err = trainer::data::Split::folders(std::slice::from_ref(&set)).unwrap_err().to_string();
    assert!(err.contains("no entry for image \"101\""), "{err}");
    std::fs::write(set.join("dataset.yaml"), "annotation: scribbles\n").unwrap();
    let err = trainer::data::Split::folders(std::slice::from_ref(&set)).unwrap_err().to_string();
    assert!(err.contains("dataset.yaml") && err.contains("scribbles"), "{err}");
    // Tags cannot validate.
    std::fs::write(set.join("dataset.yaml"), "annotation: tags\n").unwrap();
    std::fs::write(set.join("tags.json"), r#"{"100": ["grass"], "101": ["sky"]}"#).unwrap();
    let fine = annotated_set(root.path(), "fine", "fine", 200, 2);
    let config = TrainConfig { data: vec![fine], val_data: vec![set], ..tiny(1) };
    let err = format!("{:#}", config.splits().unwrap_err());
    assert!(err.contains("has tags only; validation needs masks"), "{err}");
}

#[test]
fn a_fixture_trains_the_heads_exactly_as_training_does() {
    let dir = tempfile::tempdir().unwrap();
    let (out, fixture_path) = (dir.path().join("model"), dir.path().join("pool.fixture"));
    let config = TrainConfig { synthetic_train: 4, synthetic_val: 2, hidden: 32, ..tiny(6) };
    let options = TrainOptions { progress: false, write_fixture: Some(fixture_path.clone()), ..TrainOptions::default() };
    train(&config, &out, &options).unwrap();
    let trained = load_checkpoint(&checkpoint_path(&out)).unwrap();

    // The same steps from the fixture alone give the same heads, bit for bit: what a GPU
    // machine compares against CUDA is what training does.
    let fixture = trainer::fixture::read(&fixture_path).unwrap();
    assert_eq!(fixture.labels.names, trained.meta.labels);
    let run = trainer::fixture::run::<burn::backend::Autodiff<Flex>>(&fixture, 6, Default::default(), "cpu").unwrap();
    assert_eq!(run.weights.0, trained.weights);
    assert_eq!(run.weights.1, trained.scales);
    assert_eq!(run.weights.2, trained.depth);
    assert_eq!((run.loss.len(), run.depth_loss.len()), (6, 6));

    let report = trainer::fixture::compare(&fixture, 2).unwrap();
    if cfg!(not(feature = "cuda")) {
        assert!(report["cuda_unavailable"].as_str().unwrap().contains("feature `cuda`"), "{report}");
    }
    assert_eq!(report["cpu"]["loss"].as_array().unwrap().len(), 2);

    std::fs::write(&fixture_path, b"not a fixture").unwrap();
    let err = format!("{:#}", trainer::fixture::read(&fixture_path).err().unwrap());
    assert!(err.contains("pool.fixture") && err.contains("--write-fixture"), "{err}");
}
