//! `ovseg bench encoder`: the image encoder alone on several backends, interleaved frame by frame
//! in one run, medians and ratios to the first as JSON, with each backend's largest difference
//! from the first on the same input (normalised embeddings; ln depth for depth heads). Needs only the model's image encoder
//! file and manifest (no text encoder, no label set), so a GPU machine can run it with the burn
//! backends and no ONNX Runtime.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use engine::manifest::Manifest;
use engine::costmap::EmbeddingMap;
use engine::{BackendKind, Encoded, ImageBackend, Model};
use serde_json::json;

use crate::bench::{median, resized_sample};
use crate::{CommonArgs, model};

#[derive(Args, Debug)]
pub struct EncoderBenchArgs {
    /// Backends, the first is the reference of the ratios: cpu (ONNX Runtime), tensorrt, burn
    /// (burn-cuda where a driver answers, else burn-cpu), burn-cpu.
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    pub backends: Vec<String>,
    /// Frame sizes, WxH.
    #[arg(long, value_delimiter = ',', default_value = "320x240,640x480")]
    pub sizes: Vec<String>,
    /// Timed frames per backend and size (after 2 warm-up frames).
    #[arg(long, default_value_t = 15, value_parser = crate::bench::at_least_one())]
    pub frames: usize,
    /// Write the JSON here as well as to stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Replace --json FILE even if it is not an earlier report of this bench.
    #[arg(long)]
    pub force: bool,
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let parsed = s.split_once('x').and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => bail!("--sizes: {s:?} is not WxH with positive integers"),
    }
}

fn open(name: &str, dir: &std::path::Path, manifest: &Manifest, threads: usize) -> Result<Box<dyn ImageBackend>> {
    #[cfg(feature = "burn")]
    if name == "burn-cpu" {
        return Ok(Box::new(engine::burn::encoder::cpu(dir, manifest)?));
    }
    let kind: BackendKind = name.parse().with_context(|| format!("--backends: {name:?}"))?;
    // Model::open would also insist on the text encoder, which this bench does not use.
    let model = Model { dir: dir.to_path_buf(), manifest: manifest.clone() };
    Ok(model.image_backend(kind, threads)?)
}

/// Largest absolute difference of the embeddings, and of ln depth where both have depth; None
/// where the shapes differ.
fn differences(a: &Encoded, b: &Encoded) -> (Option<f32>, Option<f32>) {
    let worst = |x: &[f32], y: &[f32], f: fn(f32) -> f32| x.iter().zip(y).map(|(p, q)| (f(*p) - f(*q)).abs()).fold(0.0f32, f32::max);
    let same_shape = |x: &EmbeddingMap, y: &EmbeddingMap| (x.width, x.height, x.dim) == (y.width, y.height, y.dim);
    let levels = (a.levels.len() == b.levels.len() && a.levels.iter().zip(&b.levels).all(|(x, y)| same_shape(x, y)))
        .then(|| a.levels.iter().zip(&b.levels).map(|(x, y)| worst(&x.data, &y.data, |v| v)).fold(0.0f32, f32::max));
    let depth = match (&a.depth, &b.depth) {
        (Some(x), Some(y)) if same_shape(x, y) => Some(worst(&x.data, &y.data, f32::ln)),
        _ => None,
    };
    (levels, depth)
}

pub fn run(common: &CommonArgs, threads: usize, args: EncoderBenchArgs) -> Result<()> {
    if args.backends.is_empty() {
        bail!("--backends needs at least one name");
    }
    crate::render::check_json_out(&mut crate::render::Outputs::new(args.force), args.json.as_deref(), "bench encoder")?;
    let dir = model::resolve(common.model_dir.as_deref())?;
    let manifest = Manifest::read(&dir).with_context(|| format!("reading the manifest in {}", dir.display()))?;
    let sizes = args.sizes.iter().map(|s| parse_size(s)).collect::<Result<Vec<_>>>()?;
    let mut backends = Vec::new();
    for name in &args.backends {
        let backend = open(name, &dir, &manifest, threads)?;
        eprintln!("{name}: image encoder on {}{}", backend.name(), backend.fallback_reason().map_or(String::new(), |r| format!(" ({r})")));
        backends.push((name.clone(), backend));
    }
    let mut configs = Vec::new();
    for (w, h) in sizes {
        let input = engine::preprocess::preprocess(&resized_sample(w, h)?, &manifest.image_encoder.input);
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); backends.len()];
        let mut first_outputs = Vec::new();
        for frame in 0..args.frames + 2 {
            for ((_, backend), times) in backends.iter_mut().zip(&mut times) {
                let t = Instant::now();
                let encoded = backend.encode(&input)?;
                if frame >= 2 {
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                } else if frame == 0 {
                    first_outputs.push(encoded);
                }
            }
        }
        let medians: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
        let results: Vec<_> = backends
            .iter()
            .zip(&medians)
            .zip(&first_outputs)
            .map(|(((name, backend), &ms), out)| {
                let (embedding, depth) = differences(&first_outputs[0], out);
                json!({
                    "asked": name,
                    "running": backend.name(),
                    "ms_median": ms,
                    "ratio_to_first": ms / medians[0],
                    "max_abs_diff_to_first": embedding,
                    "max_abs_diff_ln_depth_to_first": depth,
                })
            })
            .collect();
        eprintln!("{w}x{h}: {}", backends.iter().zip(&medians).map(|((n, _), ms)| format!("{n} {ms:.1} ms")).collect::<Vec<_>>().join(", "));
        configs.push(json!({ "frame": format!("{w}x{h}"), "network_input": [input.width, input.height], "backends": results }));
    }
    let mut report = json!({ "model": manifest.name, "threads": threads, "frames": args.frames, "configs": configs });
    crate::render::stamp(&mut report, "bench encoder");
    crate::render::emit_json(&report, args.json.as_deref())
}
