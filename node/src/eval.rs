//! `ovseg eval`: mIoU and pixel accuracy against hand-annotated masks.
//!
//! Input: an `annotations.json` as in tests/data/eval (images with their label lists; masks
//! `<name>.mask.png` next to it, value = label index, 255 = ignore).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use engine::LabelSpec;
use serde::Deserialize;
use serde_json::json;

use crate::{CommonArgs, model, segment};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// annotations.json of the evaluation set.
    pub annotations: PathBuf,
    /// Use the union of all images' labels for every image (harder: absent labels compete too).
    #[arg(long)]
    pub union: bool,
    /// Override the model's logit scale (inverse softmax temperature).
    #[arg(long)]
    pub logit_scale: Option<f32>,
    /// Override the early-rejection top-k (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Annotations {
    images: Vec<AnnotatedImage>,
}

#[derive(Deserialize)]
struct AnnotatedImage {
    name: String,
    image: String,
    labels: Vec<String>,
}

pub fn run(common: &CommonArgs, threads: usize, args: EvalArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.annotations).with_context(|| format!("reading {}", args.annotations.display()))?;
    let set: Annotations = serde_json::from_str(&text).with_context(|| format!("parsing {}", args.annotations.display()))?;
    if set.images.is_empty() {
        bail!("{} lists no images", args.annotations.display());
    }
    let base = args.annotations.parent().unwrap_or(Path::new("."));
    let (_, mut pipeline, mut bank) = model::load(common, threads)?;
    let mut options = pipeline.options().clone();
    options.logit_scale = args.logit_scale.unwrap_or(options.logit_scale);
    options.early_rejection_top_k = args.top_k.unwrap_or(options.early_rejection_top_k);
    pipeline.set_options(options).context("--logit-scale / --top-k")?;

    let mut union_labels: Vec<String> = Vec::new();
    for image in &set.images {
        for l in &image.labels {
            if !union_labels.contains(l) {
                union_labels.push(l.clone());
            }
        }
    }
    let mut rows = Vec::new();
    let (mut miou_sum, mut acc_sum) = (0.0, 0.0);
    for image in &set.images {
        let names = if args.union { union_labels.clone() } else { image.labels.clone() };
        let labels = bank.build(&names.iter().map(LabelSpec::new).collect::<Vec<_>>())?;
        let bytes = std::fs::read(base.join(&image.image)).with_context(|| format!("reading {}", image.image))?;
        let frame = segment::decode(&bytes)?;
        let mask_path = base.join(format!("{}.mask.png", image.name));
        let truth = image::open(&mask_path).with_context(|| format!("reading {}", mask_path.display()))?.to_luma8();
        if (truth.width(), truth.height()) != (frame.width, frame.height) {
            bail!("{}: mask is {}x{}, image is {}x{}", image.name, truth.width(), truth.height(), frame.width, frame.height);
        }
        let seg = pipeline.process(&frame, &labels)?;
        let truth_to_pred: Vec<u16> =
            image.labels.iter().map(|l| names.iter().position(|n| n == l).unwrap_or(usize::MAX) as u16).collect();
        let (ious, acc) = engine::metrics::score(&seg.map.labels, truth.as_raw(), &truth_to_pred);
        let miou = ious.iter().map(|(_, v)| v).sum::<f64>() / ious.len().max(1) as f64;
        miou_sum += miou;
        acc_sum += acc;
        rows.push(json!({
            "image": image.name,
            "miou": miou,
            "pixel_accuracy": acc,
            "iou": ious.iter().map(|(g, v)| (image.labels[*g].clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    let n = set.images.len() as f64;
    let report = json!({
        "annotations": args.annotations.display().to_string(),
        "label_sets": if args.union { "union of all images' labels" } else { "each image's own labels" },
        "labels_per_image": if args.union { json!(union_labels.len()) } else { json!(null) },
        "mean_miou": miou_sum / n,
        "mean_pixel_accuracy": acc_sum / n,
        "options": {
            "logit_scale": pipeline.options().logit_scale,
            "early_rejection_top_k": pipeline.options().early_rejection_top_k,
        },
        "images": rows,
    });
    crate::render::emit_json(&report, args.json.as_deref())
}
