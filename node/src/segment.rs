//! `ovseg segment`: images in, mask / overlay / JSON out.
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use engine::labels::{LabelSpec, parse_descriptions, split_list, strip_bom, with_descriptions};
use engine::{EngineError, Frame, LabelSet, Pipeline, SegmentOptions, Segmentation};
use serde_json::json;

use crate::CommonArgs;
use crate::render::{Output, Outputs};
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
    /// Replace existing files in --out that ovseg did not write (it never writes over an input).
    #[arg(long)]
    pub force: bool,
}

/// One image to process: where it came from; its bytes are read when it is processed.
struct Input {
    name: String,
    source: String,
    data: Data,
}

enum Data {
    Sample(&'static [u8]),
    File(PathBuf),
}

impl Input {
    fn read(&self) -> Result<Cow<'static, [u8]>> {
        match &self.data {
            Data::Sample(bytes) => Ok(Cow::Borrowed(bytes)),
            Data::File(path) => std::fs::read(path).map(Cow::Owned).map_err(|e| anyhow::anyhow!("cannot read: {e}")),
        }
    }
}

pub fn run(common: &CommonArgs, threads: usize, args: SegmentArgs) -> Result<ExitCode> {
    if let Some(t) = args.threshold
        && !(0.0..=1.0).contains(&t)
    {
        bail!("--threshold {t}: must be a probability in 0..=1");
    }
    let inputs = collect_inputs(&args.inputs)?;
    render::check_out_dir(&args.out).context("--out")?;

    let (model, mut pipeline, mut bank) = model::load(common, threads)?;
    let stems = unique_stems(inputs.iter().map(|i| i.name.as_str()));
    check_outputs(&args, &inputs, &stems, model.manifest.image_encoder.depth.is_some())?;
    let mut options: SegmentOptions = pipeline.options().clone();
    if let Some(t) = args.threshold {
        options.unknown_threshold = t;
    }
    if let Some(k) = args.top_k {
        options.early_rejection_top_k = k;
    }
    pipeline.set_options(options.clone()).context("segmentation options")?;
    if let Some(path) = &args.templates {
        let templates = read_lines(path)?;
        bank.set_templates(templates).map_err(|e| labels_error(e, &format!("--templates {}", path.display())))?;
    }

    let (specs, source) = label_specs(&args, &model.manifest.segmentation.default_labels)?;
    engine::labels::validate(&specs).map_err(|e| labels_error(e, &source))?;
    let t = Instant::now();
    let labels = bank.build(&specs).map_err(|e| labels_error(e, "encoding labels"))?;
    let label_ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!("{} labels encoded in {label_ms:.0} ms; image encoder {}, scoring {}", labels.len(), pipeline.backend_name(), pipeline.scorer_name());
    // Only now: a run refused for its labels or model leaves no directory behind.
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating output directory {}", args.out.display()))?;

    let (mut failed, mut written) = (0usize, 0usize);
    for (input, stem) in inputs.iter().zip(stems) {
        match process_one(&mut pipeline, &labels, input, &stem, &args.out, label_ms, &options, &model.manifest.name) {
            Ok(summary) => {
                written += 1;
                println!("{}: {summary}", input.source);
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {}: {e:#}", input.source);
            }
        }
    }
    if failed > 0 {
        match written {
            0 => eprintln!("{failed} image(s) failed; no image was written"),
            1 => eprintln!("{failed} image(s) failed; the other image was written to {}", args.out.display()),
            n => eprintln!("{failed} image(s) failed; the other {n} were written to {}", args.out.display()),
        }
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

/// A label problem named by where the labels came from, without the engine's own "labels: "
/// prefix (it would read "--labels: labels: ..."); other errors keep their kind.
pub(crate) fn labels_error(e: EngineError, source: &str) -> anyhow::Error {
    match e {
        EngineError::Labels(message) => anyhow::anyhow!("{source}: {message}"),
        other => anyhow::Error::new(other).context(source.to_string()),
    }
}

/// Before any image is processed: every file this run would write must be new, an earlier
/// output of ovseg's, or (with --force) anything but one of this run's inputs.
fn check_outputs(args: &SegmentArgs, inputs: &[Input], stems: &[String], depth: bool) -> Result<()> {
    let mut outputs = Outputs::new(args.force);
    for input in inputs {
        if let Data::File(path) = &input.data {
            outputs.input(path, "an input image");
        }
    }
    for (path, what) in [(&args.labels_file, "the --labels-file"), (&args.descriptions, "the --descriptions file"), (&args.templates, "the --templates file")] {
        if let Some(path) = path {
            outputs.input(path, what);
        }
    }
    let mut planned = Vec::new();
    let companions: Vec<PathBuf> = stems.iter().map(|stem| args.out.join(format!("{stem}.depth.png"))).collect();
    for (stem, companion) in stems.iter().zip(&companions) {
        planned.push((args.out.join(format!("{stem}.mask.png")), Output::Png));
        planned.push((args.out.join(format!("{stem}.overlay.png")), Output::Png));
        planned.push((args.out.join(format!("{stem}.json")), Output::Report(REPORT_KIND)));
        if depth {
            planned.push((companion.clone(), Output::Png));
            planned.push((args.out.join(format!("{stem}.depth.pfm")), Output::Pfm { companion }));
        }
    }
    Ok(outputs.files("--out", planned)?)
}

/// `report` of the per-image JSON.
const REPORT_KIND: &str = "segment";

/// The label specs and where the names came from (for messages).
fn label_specs(args: &SegmentArgs, defaults: &[String]) -> Result<(Vec<LabelSpec>, String)> {
    let (names, source) = match (&args.labels, &args.labels_file) {
        (Some(list), _) => (split_list(list), "--labels".to_string()),
        (None, Some(path)) => (read_lines(path)?, format!("--labels-file {}", path.display())),
        (None, None) if !defaults.is_empty() => (defaults.to_vec(), "the model's default labels".to_string()),
        (None, None) => bail!("the model has no default labels; pass --labels or --labels-file"),
    };
    let descriptions = match &args.descriptions {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            parse_descriptions(strip_bom(&text).lines()).map_err(|e| labels_error(e, &format!("--descriptions {}", path.display())))?
        }
        None => HashMap::new(),
    };
    let described = args.descriptions.as_ref().map_or(String::new(), |p| format!("--descriptions {}", p.display()));
    let specs = with_descriptions(names, &descriptions).map_err(|e| labels_error(e, &described))?;
    Ok((specs, source))
}

/// Non-empty, non-comment lines, trimmed (label and template files).
pub fn content_lines(text: &str) -> Vec<String> {
    strip_bom(text).lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(content_lines(&text))
}

fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<Input>> {
    if paths.is_empty() {
        return Ok(samples::SAMPLES
            .iter()
            .map(|(name, bytes)| Input { name: name.to_string(), source: format!("sample:{name}"), data: Data::Sample(bytes) })
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
            // Masks, overlays and depth pictures of an earlier run into this folder are not photos.
            let before = found.len();
            found.retain(|p| !render::written_by_ovseg(p, Output::Png));
            if found.is_empty() {
                let ours = match before {
                    0 => String::new(),
                    n => format!(" other than {n} written by ovseg"),
                };
                bail!("{} holds no .png/.jpg/.jpeg files{ours}", path.display());
            }
            files.extend(found);
        } else {
            // Missing or unreadable files are reported per file when processed, not fatal here.
            files.push(path.clone());
        }
    }
    Ok(files
        .into_iter()
        .map(|p| Input {
            name: p.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned()),
            source: p.display().to_string(),
            data: Data::File(p),
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

/// Width and height from the image's header, refused beyond `MAX_FRAME_SIDE` before the
/// pixels are decoded (a corrupt or hostile header would otherwise cost gigabytes).
pub fn checked_size(bytes: &[u8]) -> Result<(u32, u32)> {
    const MAX: u32 = engine::frame::MAX_FRAME_SIDE;
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().context("not a readable PNG/JPEG image")?;
    let (w, h) = reader.into_dimensions().map_err(image_error).context("not a readable PNG/JPEG image")?;
    if w > MAX || h > MAX {
        bail!("{w}x{h} pixels: images up to {MAX} pixels a side are accepted");
    }
    Ok((w, h))
}

pub fn decode(bytes: &[u8]) -> Result<Frame> {
    checked_size(bytes)?;
    let image = image::load_from_memory(bytes).map_err(image_error).context("not a readable PNG/JPEG image")?;
    Ok(Frame::from_rgb_image(&image.to_rgb8()))
}

/// An image error as one message, for the caller to put in context: its text already ends with
/// its cause, which `{:#}` would print a second time if it stayed chained (and the JPEG
/// decoder ends its text with a line break).
pub fn image_error(e: image::ImageError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.to_string().trim_end())
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
    let frame = decode(&input.read()?)?;
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
            // The picture first: its record of the PFM marks the PFM as ovseg's to a later run.
            let (pfm, pfm_path) = (crate::stereo::pfm_bytes(&depth), out.join(&file));
            render::save_rgb_with(&crate::stereo::colorize_depth(&depth), &out.join(picture), &[(&pfm_path, &pfm)])?;
            render::write_file(&pfm_path, &pfm)?;
            Some(file)
        }
        None => None,
    };
    let mut report = report_json(input, &seg, labels, bits, label_ms, options, (pipeline.backend_name(), pipeline.scorer_name()), model_name, stem);
    report["depth"] = json!(depth_file);
    render::stamp(&mut report, REPORT_KIND);
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
