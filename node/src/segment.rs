//! `ovseg segment`: images in, mask / overlay / JSON out.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use engine::labels::{LabelSpec, parse_descriptions, split_list, with_descriptions};
use engine::{Frame, LabelSet, Pipeline, SegmentOptions, Segmentation};
use serde_json::json;

use crate::CommonArgs;
use crate::{model, render, samples};

/// Exit status when some inputs failed but the others were written.
const EXIT_PARTIAL: u8 = 3;

#[derive(Args, Debug)]
pub struct SegmentArgs {
    /// Image files or directories (searched for .png/.jpg/.jpeg, not recursively).
    /// None: the built-in sample photos.
    pub inputs: Vec<PathBuf>,
    /// Comma-separated labels, e.g. "crop row,weed,soil,person". Default: the model's default labels.
    #[arg(long, conflicts_with = "labels_file")]
    pub labels: Option<String>,
    /// File with one label per line (blank lines and # comments skipped).
    #[arg(long)]
    pub labels_file: Option<PathBuf>,
    /// File of `label: sentence` lines describing labels (averaged into their embeddings).
    #[arg(long)]
    pub descriptions: Option<PathBuf>,
    /// File of prompt templates, one per line, each with one `{}` for the label.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Pixels whose winning probability is below this become unknown (255 / 65535 in the mask).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Labels kept per coarse cell for the finer level (0 = no early rejection).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Output directory (created if missing).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
}

/// One image to process: where it came from and its bytes.
struct Input {
    name: String,
    source: String,
    bytes: std::io::Result<Vec<u8>>,
}

pub fn run(common: &CommonArgs, threads: usize, args: SegmentArgs) -> Result<ExitCode> {
    let inputs = collect_inputs(&args.inputs)?;

    let (model, mut pipeline, mut bank) = model::load(common, threads)?;
    let mut options: SegmentOptions = pipeline.options().clone();
    if let Some(t) = args.threshold {
        options.unknown_threshold = t;
    }
    if let Some(k) = args.top_k {
        options.early_rejection_top_k = k;
    }
    pipeline.set_options(options.clone()).context("--threshold / --top-k")?;
    if let Some(path) = &args.templates {
        let templates = read_lines(path)?;
        bank.set_templates(templates).with_context(|| format!("templates in {}", path.display()))?;
    }

    let specs = label_specs(&args, &model.manifest.segmentation.default_labels)?;
    let t = Instant::now();
    let labels = bank.build(&specs).context("encoding labels")?;
    let label_ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!("{} labels encoded in {label_ms:.0} ms; image encoder {}, scoring {}", labels.len(), pipeline.backend_name(), pipeline.scorer_name());
    // Only now: a run refused for its labels or model leaves no directory behind.
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating output directory {}", args.out.display()))?;

    let mut failed = 0usize;
    let stems = unique_stems(inputs.iter().map(|i| i.name.as_str()));
    for (input, stem) in inputs.iter().zip(stems) {
        match process_one(&mut pipeline, &labels, input, &stem, &args.out, label_ms, &options, &model.manifest.name) {
            Ok(summary) => println!("{}: {summary}", input.source),
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e:#}", input.source);
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} image(s) failed; the others were written to {}", args.out.display());
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

fn label_specs(args: &SegmentArgs, defaults: &[String]) -> Result<Vec<LabelSpec>> {
    let names = match (&args.labels, &args.labels_file) {
        (Some(list), _) => split_list(list),
        (None, Some(path)) => read_lines(path)?,
        (None, None) if !defaults.is_empty() => defaults.to_vec(),
        (None, None) => bail!("the model has no default labels; pass --labels or --labels-file"),
    };
    let descriptions = match &args.descriptions {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            parse_descriptions(text.lines()).with_context(|| format!("in {}", path.display()))?
        }
        None => HashMap::new(),
    };
    Ok(with_descriptions(names, &descriptions)?)
}

/// Non-empty, non-comment lines, trimmed (label and template files).
pub fn content_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(content_lines(&text))
}

fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<Input>> {
    if paths.is_empty() {
        return Ok(samples::SAMPLES
            .iter()
            .map(|(name, bytes)| Input { name: name.to_string(), source: format!("sample:{name}"), bytes: Ok(bytes.to_vec()) })
            .collect());
    }
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("listing {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && has_image_extension(p))
                .collect();
            found.sort();
            if found.is_empty() {
                eprintln!("warning: {} holds no .png/.jpg/.jpeg files", path.display());
            }
            files.extend(found);
        } else {
            // Missing or unreadable files are reported per file below, not fatal here.
            files.push(path.clone());
        }
    }
    Ok(files
        .into_iter()
        .map(|p| Input {
            name: p.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned()),
            source: p.display().to_string(),
            bytes: std::fs::read(&p),
        })
        .collect())
}

fn has_image_extension(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()).map(str::to_lowercase).as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Output stems, one per input: its file stem, or `stem-2`, `stem-3`... when an earlier input
/// has it, never colliding with any other input's own stem.
fn unique_stems<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Vec<String> {
    let mut taken: HashSet<String> = names.clone().map(String::from).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    names
        .map(|name| {
            if seen.insert(name) {
                return name.to_string();
            }
            let stem = (2..).map(|n| format!("{name}-{n}")).find(|s| !taken.contains(s)).unwrap_or_default();
            taken.insert(stem.clone());
            stem
        })
        .collect()
}

pub fn decode(bytes: &[u8]) -> Result<Frame> {
    let image = image::load_from_memory(bytes).context("not a readable PNG/JPEG image")?;
    Ok(Frame::from_rgb_image(&image.to_rgb8()))
}

#[allow(clippy::too_many_arguments)]
fn process_one(
    pipeline: &mut Pipeline,
    labels: &LabelSet,
    input: &Input,
    stem: &str,
    out: &Path,
    label_ms: f64,
    options: &SegmentOptions,
    model_name: &str,
) -> Result<String> {
    let bytes = input.bytes.as_ref().map_err(|e| anyhow::anyhow!("cannot read: {e}"))?;
    let frame = decode(bytes)?;
    let seg = pipeline.process(&frame, labels)?;
    let mask_path = out.join(format!("{stem}.mask.png"));
    let overlay_path = out.join(format!("{stem}.overlay.png"));
    let json_path = out.join(format!("{stem}.json"));
    let bits = render::write_mask(&seg.map, labels.len(), &mask_path)?;
    let overlay = render::overlay_with_legend(&frame, &seg.map, labels);
    render::save_rgb(&overlay, &overlay_path)?;
    let depth_file = match &seg.depth {
        Some(model_depth) => {
            let (file, picture) = (format!("{stem}.depth.pfm"), format!("{stem}.depth.png"));
            let depth = conditioned_depth(&model_depth.metres(), &seg.map, labels);
            render::write_file(&out.join(&file), &crate::stereo::pfm_bytes(&depth))?;
            render::save_rgb(&crate::stereo::colorize_depth(&depth), &out.join(picture))?;
            Some(file)
        }
        None => None,
    };
    let mut report = report_json(input, &seg, labels, bits, label_ms, options, (pipeline.backend_name(), pipeline.scorer_name()), model_name, stem);
    report["depth"] = json!(depth_file);
    render::write_file(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;

    let (shares, _) = seg.map.shares(labels.len());
    let mut top: Vec<(usize, f64)> = shares.iter().copied().enumerate().filter(|(_, s)| *s > 0.0).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let list: Vec<String> = top.iter().take(4).map(|(k, s)| format!("{} {:.0}%", labels.names[*k], s * 100.0)).collect();
    Ok(format!("{} ({:.0} ms) -> {}", list.join(", "), seg.timings.total_ms(), mask_path.display()))
}

/// The model's depth with none where the label rules it out (unknown, sky), filtered and filled
/// within labels: what the node publishes on `depth` with its default parameters.
fn conditioned_depth(metres: &[f32], map: &engine::LabelMap, labels: &LabelSet) -> engine::stereo::Disparity {
    let no_depth = engine::depth::labels_in(&labels.names, engine::depth::DEFAULT_NO_DEPTH_LABELS);
    let width = map.width as usize;
    let data = engine::depth::condition(metres, &map.labels, width, &no_depth, &Default::default());
    engine::stereo::Disparity { width, height: map.height as usize, data }
}

#[allow(clippy::too_many_arguments)]
fn report_json(
    input: &Input,
    seg: &Segmentation,
    labels: &LabelSet,
    bits: u8,
    label_ms: f64,
    options: &SegmentOptions,
    (backend, scorer): (&str, &str),
    model_name: &str,
    stem: &str,
) -> serde_json::Value {
    let (shares, unknown) = seg.map.shares(labels.len());
    let share_map: serde_json::Map<String, serde_json::Value> =
        labels.names.iter().zip(&shares).map(|(n, s)| (n.clone(), json!(s))).collect();
    json!({
        "image": input.source,
        "width": seg.map.width,
        "height": seg.map.height,
        "labels": labels.names,
        "mask": format!("{stem}.mask.png"),
        "mask_bits": bits,
        "unknown_value": if bits == 8 { 255 } else { 65535 },
        "pixel_share": share_map,
        "unknown_share": unknown,
        "unknown_threshold": options.unknown_threshold,
        "early_rejection_top_k": options.early_rejection_top_k,
        "timings_ms": {
            "preprocess": seg.timings.preprocess_ms,
            "image_encoder": seg.timings.image_encoder_ms,
            "cost_map": seg.timings.cost_map_ms,
            "post": seg.timings.post_ms,
            "label_encoding": label_ms,
        },
        "network_input": [seg.net_size.0, seg.net_size.1],
        "backend": backend,
        "scorer": scorer,
        "model": model_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_stems_get_suffixes_that_collide_with_nothing() {
        let names = ["a", "a", "b", "a-2", "a"];
        assert_eq!(unique_stems(names.iter().copied()), vec!["a", "a-3", "b", "a-2", "a-4"]);
    }

    #[test]
    fn image_extensions() {
        assert!(has_image_extension(Path::new("x/y.JPG")));
        assert!(has_image_extension(Path::new("y.png")));
        assert!(!has_image_extension(Path::new("y.txt")));
        assert!(!has_image_extension(Path::new("y")));
    }
}
