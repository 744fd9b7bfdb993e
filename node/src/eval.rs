//! `ovseg eval`: mIoU and pixel accuracy against hand-annotated masks.
//!
//! Input: an `annotations.json` as in tests/data/eval (images with their label lists; masks
//! `<name>.mask.png` next to it, value = label index; 8-bit with 255 = ignore, or 16-bit with
//! 65535 = ignore, the format `ovseg segment` writes).
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use engine::LabelSpec;
use serde::Deserialize;
use serde_json::json;

use crate::{CommonArgs, model, render, segment};

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
    /// Replace --json FILE even if it is not an earlier eval report (never an input).
    #[arg(long)]
    pub force: bool,
}

/// `report` of the JSON this command writes.
const REPORT_KIND: &str = "eval";

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

/// A ground-truth mask: label index per pixel and the value that means "not annotated".
enum Truth {
    Eight(Vec<u8>),
    Sixteen(Vec<u16>),
}

impl Truth {
    fn annotated(&self) -> usize {
        match self {
            Truth::Eight(v) => v.iter().filter(|&&t| t != u8::MAX).count(),
            Truth::Sixteen(v) => v.iter().filter(|&&t| t != u16::MAX).count(),
        }
    }
}

/// Reads a mask as it is stored: 8-bit gray (255 = ignore) or 16-bit gray (65535 = ignore).
/// Colour masks and values that are neither a label index nor the ignore value are refused,
/// naming the file, the value and the pixel.
fn read_truth(path: &Path, labels: usize, size: (u32, u32), image_path: &Path) -> Result<Truth> {
    // The size from the header first: a mask that does not fit is not decoded.
    let (w, h) = image::image_dimensions(path).map_err(segment::image_error).with_context(|| format!("reading {}", path.display()))?;
    if (w, h) != size {
        bail!("{}: mask is {w}x{h}, image {} is {}x{}", path.display(), image_path.display(), size.0, size.1);
    }
    let image = image::open(path).map_err(segment::image_error).with_context(|| format!("reading {}", path.display()))?;
    let (truth, bad, ignore) = match image {
        image::DynamicImage::ImageLuma8(m) => {
            let v = m.into_raw();
            let bad = engine::metrics::first_out_of_range(&v, labels, u8::MAX);
            (Truth::Eight(v), bad, u32::from(u8::MAX))
        }
        image::DynamicImage::ImageLuma16(m) => {
            let v = m.into_raw();
            let bad = engine::metrics::first_out_of_range(&v, labels, u16::MAX);
            (Truth::Sixteen(v), bad, u32::from(u16::MAX))
        }
        other => bail!(
            "{}: a colour, palette or alpha image ({:?} decoded); a mask is single-channel 8-bit or 16-bit gray with the label index per pixel",
            path.display(),
            other.color()
        ),
    };
    if let Some((i, value)) = bad {
        let (x, y) = (i % w as usize, i / w as usize);
        bail!(
            "{}: value {value} at pixel ({x}, {y}) is neither a label index (0..={}, {labels} labels) nor the ignore value {ignore}",
            path.display(),
            labels.saturating_sub(1)
        );
    }
    Ok(truth)
}

pub fn run(common: &CommonArgs, threads: usize, args: EvalArgs) -> Result<()> {
    if let Some(scale) = args.logit_scale
        && !(scale.is_finite() && scale > 0.0)
    {
        bail!("--logit-scale {scale}: must be finite and > 0");
    }
    let text = std::fs::read_to_string(&args.annotations).with_context(|| format!("reading {}", args.annotations.display()))?;
    let set: Annotations =
        serde_json::from_str(engine::labels::strip_bom(&text)).with_context(|| format!("parsing {}", args.annotations.display()))?;
    if set.images.is_empty() {
        bail!("{} lists no images", args.annotations.display());
    }
    let base = args.annotations.parent().unwrap_or(Path::new("."));
    let mask_path = |image: &AnnotatedImage| base.join(format!("{}.mask.png", image.name));
    let mut outputs = render::Outputs::new(args.force);
    outputs.input(&args.annotations, "the annotations file");
    for image in &set.images {
        outputs.input(&base.join(&image.image), "an annotated image").input(&mask_path(image), "a ground-truth mask");
    }
    render::check_json_out(&mut outputs, args.json.as_deref(), REPORT_KIND)?;

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
    let mut skipped = Vec::new();
    let (mut miou_sum, mut acc_sum) = (0.0, 0.0);
    for image in &set.images {
        let image_path = base.join(&image.image);
        let bytes = std::fs::read(&image_path).with_context(|| format!("reading {}", image_path.display()))?;
        let frame = segment::decode(&bytes).with_context(|| image_path.display().to_string())?;
        let mask_path = mask_path(image);
        let truth = read_truth(&mask_path, image.labels.len(), (frame.width, frame.height), &image_path)?;
        // A mask with nothing annotated has no score; a 0 would drag the mean down.
        if truth.annotated() == 0 {
            eprintln!("warning: {}: no annotated pixels (all ignore); {} is left out of the means", mask_path.display(), image.name);
            skipped.push(image.name.clone());
            continue;
        }
        let names = if args.union { union_labels.clone() } else { image.labels.clone() };
        let labels = bank
            .build(&names.iter().map(LabelSpec::new).collect::<Vec<_>>())
            .map_err(|e| segment::labels_error(e, &format!("labels of {} in {}", image.name, args.annotations.display())))?;
        let seg = pipeline.process(&frame, &labels)?;
        let truth_to_pred: Vec<u16> =
            image.labels.iter().map(|l| names.iter().position(|n| n == l).unwrap_or(usize::MAX) as u16).collect();
        let (ious, acc) = match &truth {
            Truth::Eight(v) => engine::metrics::score_ignoring(&seg.map.labels, v, &truth_to_pred, u8::MAX),
            Truth::Sixteen(v) => engine::metrics::score_ignoring(&seg.map.labels, v, &truth_to_pred, u16::MAX),
        };
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
    if rows.is_empty() {
        bail!("no image in {} has annotated pixels in its mask; nothing to score", args.annotations.display());
    }
    let n = rows.len() as f64;
    let mut report = json!({
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
        "images_without_annotations": skipped,
    });
    render::stamp(&mut report, REPORT_KIND);
    render::emit_json(&report, args.json.as_deref())
}
