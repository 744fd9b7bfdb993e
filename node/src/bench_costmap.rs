//! `ovseg bench costmap`: cost map + fusion + argmax at 160x120 cells on real-image embeddings,
//! every label at every level ("full") against category early rejection ("early"), on the CPU
//! and, where a CUDA device answers, on the GPU, all in one run.
//!
//! The embeddings come from the default model run on the built-in sample photos scaled to
//! 2560x1920 (so the stride-16 level is 160x120 cells), or from a fixture written by an earlier
//! run (`--write-fixture`), for machines without the model.
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use engine::costmap::{EmbeddingMap, l2_normalize};
use engine::labels::LabelSet;
use engine::post::LabelMap;
use engine::preprocess::{ContentRect, preprocess};
use engine::scoring::{CpuScorer, Scorer, ScoringPlan};
use engine::{BackendKind, Frame};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::CommonArgs;
use crate::bench::{label_list, median};

pub const LABELS_847: &str = include_str!("../data/labels-847.txt");
/// Names in [`LABELS_847`]; `--labels` beyond it is refused before any work.
const BUILT_IN_LABELS: u64 = 847;

/// Network input that puts the stride-16 level at 160x120 cells.
const NET_SIZE: (u32, u32) = (2560, 1920);

#[derive(Args, Debug)]
pub struct CostmapBenchArgs {
    /// Label count K: the first K names of the built-in 847-label list (150 = the scene set).
    #[arg(long, default_value_t = 150, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=BUILT_IN_LABELS))]
    pub labels: usize,
    /// Labels kept per coarse cell by early rejection.
    #[arg(long, default_value_t = 8)]
    pub top_k: usize,
    /// Timed runs per configuration after one warm-up (medians are reported).
    #[arg(long, default_value_t = 7, value_parser = crate::bench::at_least_one())]
    pub runs: usize,
    /// Also measure agreement and speed-up for top-k 1..32.
    #[arg(long)]
    pub sweep: bool,
    /// The JSON always goes to stdout; with a FILE it is written there as well.
    #[arg(long, num_args = 0..=1, value_name = "FILE")]
    pub json: Option<Option<PathBuf>>,
    /// Read the embeddings from this fixture instead of running the model.
    #[arg(long, value_name = "FILE")]
    pub fixture: Option<PathBuf>,
    /// Write the embeddings used to this fixture (levels as f16, labels as f32; about 19 MB
    /// per frame).
    #[arg(long, value_name = "FILE")]
    pub write_fixture: Option<PathBuf>,
    /// Sample photos to encode when running the model (1..=4).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub frames: u8,
    /// Replace --json FILE or --write-fixture FILE even if it is not an earlier output of this
    /// bench (never the --fixture read).
    #[arg(long)]
    pub force: bool,
}

/// `report` of the JSON this bench writes.
const REPORT_KIND: &str = "bench costmap";

/// Before any work: the files this run would write must not be its input fixture, each other,
/// or (without --force) anything but earlier outputs of this bench.
fn check_outputs(args: &CostmapBenchArgs) -> Result<()> {
    let mut outputs = crate::render::Outputs::new(args.force);
    if let Some(fixture) = &args.fixture {
        outputs.input(fixture, "the --fixture file");
    }
    crate::render::check_json_out(&mut outputs, args.json.clone().flatten().as_deref(), REPORT_KIND)?;
    if let Some(path) = &args.write_fixture {
        outputs.file(path, "--write-fixture", crate::render::Output::Magic(FIXTURE_MAGIC))?;
    }
    Ok(())
}

/// What the fixture's JSON header records; the arrays follow it.
#[derive(Serialize, Deserialize)]
struct FixtureHeader {
    model: String,
    logit_scale: f32,
    fusion_weights: Vec<f32>,
    label_names: Vec<String>,
    dim: usize,
    frames: Vec<FixtureFrame>,
}

#[derive(Serialize, Deserialize)]
struct FixtureFrame {
    name: String,
    /// (stride, offset, width, height) per level, coarse to fine.
    levels: Vec<(u32, f32, usize, usize)>,
}

const FIXTURE_MAGIC: &[u8; 8] = b"OVSEGCM1";

/// Real-image embeddings and the 847 labels with their calibration.
struct Inputs {
    model: String,
    logit_scale: f32,
    fusion_weights: Vec<f32>,
    labels: LabelSet,
    frames: Vec<(String, Vec<EmbeddingMap>)>,
}

fn from_model(common: &CommonArgs, threads: usize, max_frames: usize) -> Result<Inputs> {
    let (model, _, mut bank) = crate::model::load(common, threads)?;
    let labels = bank.build(&label_list(LABELS_847)).context("encoding the 847 labels")?;
    let mut backend = model.image_backend(BackendKind::Cpu, threads)?;
    let mut spec = model.manifest.image_encoder.input.clone();
    spec.size = None;
    spec.max_side = NET_SIZE.0;
    let mut frames = Vec::new();
    for (name, bytes) in crate::samples::SAMPLES.iter().take(max_frames) {
        let t = Instant::now();
        let frame = crate::segment::decode(bytes)?;
        let img = image::RgbImage::from_raw(frame.width, frame.height, frame.to_rgb8()).context("sample buffer")?;
        let big = image::imageops::resize(&img, NET_SIZE.0, NET_SIZE.1, image::imageops::FilterType::Triangle);
        let input = preprocess(&Frame::from_rgb_image(&big), &spec);
        let levels = backend.encode(&input)?.levels;
        eprintln!("{name}: encoded at {}x{} in {:.1} s", input.width, input.height, t.elapsed().as_secs_f64());
        frames.push((name.to_string(), levels));
    }
    Ok(Inputs {
        model: model.manifest.name.clone(),
        logit_scale: model.manifest.segmentation.logit_scale,
        fusion_weights: model.manifest.levels_coarse_to_fine().iter().map(|l| l.fusion_weight).collect(),
        labels,
        frames,
    })
}

fn write_fixture(inputs: &Inputs, path: &Path) -> Result<()> {
    let header = FixtureHeader {
        model: inputs.model.clone(),
        logit_scale: inputs.logit_scale,
        fusion_weights: inputs.fusion_weights.clone(),
        label_names: inputs.labels.names.clone(),
        dim: inputs.labels.dim,
        frames: inputs
            .frames
            .iter()
            .map(|(name, levels)| FixtureFrame {
                name: name.clone(),
                levels: levels.iter().map(|l| (l.stride, l.offset, l.width, l.height)).collect(),
            })
            .collect(),
    };
    let head = serde_json::to_vec(&header)?;
    let mut bytes = Vec::from(&FIXTURE_MAGIC[..]);
    bytes.extend((head.len() as u64).to_le_bytes());
    bytes.extend(head);
    let l = &inputs.labels;
    for v in l.embeddings.iter().chain(&l.gain).chain(&l.bias) {
        bytes.extend(v.to_le_bytes());
    }
    for (_, levels) in &inputs.frames {
        for v in levels.iter().flat_map(|l| &l.data) {
            bytes.extend(half::f16::from_f32(*v).to_le_bytes());
        }
    }
    crate::render::write_file(path, &bytes)
}

fn read_fixture(path: &Path) -> Result<Inputs> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = |what: &str| anyhow::anyhow!("{}: not an ovseg cost-map fixture ({what})", path.display());
    if bytes.len() < 16 || &bytes[..8] != FIXTURE_MAGIC {
        return Err(bad("magic"));
    }
    let head_len = u64::from_le_bytes(bytes[8..16].try_into()?) as usize;
    let head_end = 16usize.checked_add(head_len).filter(|&e| e <= bytes.len()).ok_or_else(|| bad("header length"))?;
    let header: FixtureHeader = serde_json::from_slice(&bytes[16..head_end]).map_err(|e| bad(&e.to_string()))?;
    let (k, dim) = (header.label_names.len(), header.dim);
    let mut at = head_end;
    let mut f32s = |n: usize| -> Result<Vec<f32>> {
        let end = at + 4 * n;
        ensure!(end <= bytes.len(), "{}: truncated", path.display());
        let v = bytes[at..end].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        at = end;
        Ok(v)
    };
    let embeddings = f32s(k * dim)?;
    let gain = f32s(k)?;
    let bias = f32s(k)?;
    let mut frames = Vec::new();
    for frame in &header.frames {
        let mut levels = Vec::new();
        for &(stride, offset, width, height) in &frame.levels {
            let n = width * height * dim;
            let end = at + 2 * n;
            ensure!(end <= bytes.len(), "{}: truncated in frame {}", path.display(), frame.name);
            let mut data: Vec<f32> = bytes[at..end].chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            at = end;
            // f16 storage moves the norms slightly off 1; the cost map assumes unit pixels.
            data.chunks_mut(dim).for_each(l2_normalize);
            levels.push(EmbeddingMap { stride, offset, width, height, dim, data });
        }
        frames.push((frame.name.clone(), levels));
    }
    let labels = LabelSet {
        colors: vec![[0, 0, 0]; k],
        names: header.label_names,
        embeddings,
        dim,
        gain,
        bias,
    };
    Ok(Inputs { model: header.model, logit_scale: header.logit_scale, fusion_weights: header.fusion_weights, labels, frames })
}

/// The first `k` labels of the set.
fn first_labels(all: &LabelSet, k: usize) -> LabelSet {
    LabelSet {
        names: all.names[..k].to_vec(),
        embeddings: all.embeddings[..k * all.dim].to_vec(),
        dim: all.dim,
        colors: all.colors[..k].to_vec(),
        gain: all.gain[..k].to_vec(),
        bias: all.bias[..k].to_vec(),
    }
}

/// One place to score: the CPU, or the GPU with the levels already in device memory.
trait Timed {
    fn device(&self) -> String;
    /// Milliseconds and the label map.
    fn run(&mut self, frame: usize, plan: &ScoringPlan) -> Result<(f64, LabelMap)>;
}

struct OnCpu<'a> {
    frames: &'a [(String, Vec<EmbeddingMap>)],
    threads: usize,
}

impl Timed for OnCpu<'_> {
    fn device(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }
    fn run(&mut self, frame: usize, plan: &ScoringPlan) -> Result<(f64, LabelMap)> {
        let t = Instant::now();
        let scored = CpuScorer.score(&self.frames[frame].1, plan)?;
        Ok((t.elapsed().as_secs_f64() * 1e3, scored.map))
    }
}

#[cfg(feature = "cuda")]
struct OnGpu {
    scorer: engine::cuda::CudaScorer,
    frames: Vec<Vec<engine::cuda::DeviceLevel>>,
}

#[cfg(feature = "cuda")]
impl Timed for OnGpu {
    fn device(&self) -> String {
        format!("cuda: {}", self.scorer.device_name())
    }
    fn run(&mut self, frame: usize, plan: &ScoringPlan) -> Result<(f64, LabelMap)> {
        let t = Instant::now();
        let scored = self.scorer.score_resident(&self.frames[frame], plan)?;
        Ok((t.elapsed().as_secs_f64() * 1e3, scored.map))
    }
}

fn agreement(a: &[u16], b: &[u16]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// Plan that scores the finest level's cells: one output pixel on each cell centre, so the
/// label map is the per-cell argmax of the fused cost map. With `between`, the output has twice
/// the resolution and its pixels fall between cell centres, where labels come from interpolated
/// probabilities as in a full-resolution frame.
fn cell_plan<'a>(inputs: &'a Inputs, labels: &'a LabelSet, top_k: usize, between: bool) -> Result<ScoringPlan<'a>> {
    let finest = inputs.frames.first().and_then(|f| f.1.last()).context("no frames")?;
    let (w, h) = (finest.width as u32, finest.height as u32);
    let stride = finest.stride as f32;
    // Output pixel x has its centre at content.x + (x + 0.5) * stride = offset + x * stride.
    let origin = finest.offset - 0.5 * stride;
    let f = if between { 2 } else { 1 };
    Ok(ScoringPlan {
        labels,
        logit_scale: inputs.logit_scale,
        fusion_weights: &inputs.fusion_weights,
        top_k,
        unknown_threshold: 0.0,
        content: ContentRect { x: origin, y: origin, width: w as f32 * stride, height: h as f32 * stride },
        width: w * f,
        height: h * f,
    })
}

/// Full vs early on every frame: medians over `runs` (frame 0 timed), agreement over all frames.
fn full_vs_early(on: &mut dyn Timed, inputs: &Inputs, labels: &LabelSet, top_k: usize, runs: usize) -> Result<Value> {
    let full = cell_plan(inputs, labels, 0, false)?;
    let early = cell_plan(inputs, labels, top_k, false)?;
    let (mut t_full, mut t_early) = (Vec::new(), Vec::new());
    for r in 0..=runs {
        let (a, _) = on.run(0, &full)?;
        let (b, _) = on.run(0, &early)?;
        if r > 0 {
            t_full.push(a);
            t_early.push(b);
        }
    }
    let (full_between, early_between) = (cell_plan(inputs, labels, 0, true)?, cell_plan(inputs, labels, top_k, true)?);
    let (mut agree, mut agree_between, mut confidence) = (Vec::new(), Vec::new(), ConfidenceGap::default());
    for f in 0..inputs.frames.len() {
        agree.push(agreement(&on.run(f, &full)?.1.labels, &on.run(f, &early)?.1.labels));
        let (a, b) = (on.run(f, &full_between)?.1, on.run(f, &early_between)?.1);
        agree_between.push(agreement(&a.labels, &b.labels));
        confidence.add(&a.confidence, &b.confidence);
    }
    let (full_us, early_us) = (median(&mut t_full) * 1e3, median(&mut t_early) * 1e3);
    Ok(json!({
        "device": on.device(),
        "top_k": top_k,
        "full_us": full_us,
        "early_us": early_us,
        "speedup": full_us / early_us,
        "agreement": agree.iter().sum::<f64>() / agree.len().max(1) as f64,
        "agreement_per_frame": agree,
        "agreement_between_cells": agree_between.iter().sum::<f64>() / agree_between.len().max(1) as f64,
        "confidence_between_cells": confidence.report(),
    }))
}

/// How far early rejection moves the confidence (the probability of the winning label, which
/// the unknown threshold is compared with) from the full computation's.
#[derive(Default)]
struct ConfidenceGap {
    full: Vec<f64>,
    early: Vec<f64>,
}

impl ConfidenceGap {
    fn add(&mut self, full: &[f32], early: &[f32]) {
        self.full.extend(full.iter().map(|&c| c as f64));
        self.early.extend(early.iter().map(|&c| c as f64));
    }

    fn report(&self) -> Value {
        let mut gap: Vec<f64> = self.full.iter().zip(&self.early).map(|(a, b)| (b - a).abs()).collect();
        gap.sort_by(f64::total_cmp);
        let (mut full, mut early) = (self.full.clone(), self.early.clone());
        json!({
            "full_median": median(&mut full),
            "early_median": median(&mut early),
            "abs_difference_median": median(&mut gap),
            "abs_difference_p99": gap.get(gap.len() * 99 / 100).copied().unwrap_or(f64::NAN),
            "abs_difference_max": gap.last().copied().unwrap_or(f64::NAN),
        })
    }
}

fn sweep(on: &mut dyn Timed, inputs: &Inputs, labels: &LabelSet, runs: usize) -> Result<Sweep> {
    let mut rows = Vec::new();
    let mut smallest = None;
    for k in [1usize, 2, 3, 4, 6, 8, 12, 16, 24, 32] {
        if k >= labels.len() {
            break;
        }
        let r = full_vs_early(on, inputs, labels, k, runs)?;
        let agreement = r["agreement"].as_f64().unwrap_or(0.0);
        if smallest.is_none() && agreement >= 0.995 {
            smallest = Some(k);
        }
        eprintln!(
            "  top_k {k:>2}: agreement {agreement:.4} (between cells {:.4}), speed-up {:.2}x",
            r["agreement_between_cells"].as_f64().unwrap_or(f64::NAN),
            r["speedup"].as_f64().unwrap_or(f64::NAN)
        );
        rows.push(json!({
            "top_k": k,
            "agreement": agreement,
            "agreement_between_cells": r["agreement_between_cells"],
            "speedup": r["speedup"],
            "full_us": r["full_us"],
            "early_us": r["early_us"],
        }));
    }
    Ok((rows, smallest))
}

type Sweep = (Vec<Value>, Option<usize>);

/// The same measurements on the GPU (levels already in device memory), plus the floor of the
/// device and a check that its label maps equal the CPU's. `Ok(Err(reason))` where no device
/// answers (an error only with `--backend cuda`).
#[cfg(feature = "cuda")]
fn on_gpu(
    common: &CommonArgs,
    inputs: &Inputs,
    labels: &LabelSet,
    args: &CostmapBenchArgs,
    cpu: &mut OnCpu,
    cpu_full_us: f64,
) -> Result<Result<(Value, Option<Sweep>), String>> {
    if common.backend == "cpu" {
        return Ok(Err("--backend cpu".into()));
    }
    let scorer = match engine::cuda::CudaScorer::new() {
        Ok(s) => s,
        Err(e) if common.backend == "cuda" => return Err(e).context("--backend cuda"),
        Err(e) => return Ok(Err(e.to_string())),
    };
    if let Err(e) = engine::cuda::CudaScorer::check_limits(&cell_plan(inputs, labels, args.top_k, false)?) {
        return Ok(Err(e.to_string()));
    }
    let t = Instant::now();
    let frames = inputs.frames.iter().map(|f| scorer.upload_levels(&f.1)).collect::<engine::Result<Vec<_>>>()?;
    let upload_ms = t.elapsed().as_secs_f64() * 1e3 / inputs.frames.len() as f64;
    let peak = scorer.peak_fp32_ops_per_s();
    let mut gpu = OnGpu { scorer, frames };
    let mut g = full_vs_early(&mut gpu, inputs, labels, args.top_k, args.runs)?;
    // Floor of the full computation: a multiply and an add per cell, label and dimension.
    let ops: f64 = inputs.frames[0].1.iter().map(|l| 2.0 * (l.width * l.height * labels.len() * labels.dim) as f64).sum();
    let full_us = g["full_us"].as_f64().unwrap_or(f64::NAN);
    if let Some(peak) = peak {
        let floor_us = ops / peak * 1e6;
        g["floor_us"] = json!(floor_us);
        g["full_over_floor"] = json!(full_us / floor_us);
    }
    g["level_upload_ms_per_frame"] = json!(upload_ms);
    // Same inputs and labels on both sides: the label maps must be identical.
    let (full, early) = (cell_plan(inputs, labels, 0, false)?, cell_plan(inputs, labels, args.top_k, false)?);
    let bits = |map: &LabelMap| (map.labels.clone(), map.confidence.iter().map(|c| c.to_bits()).collect::<Vec<_>>());
    let mut identical = true;
    for f in 0..inputs.frames.len() {
        for p in [&full, &early] {
            identical &= bits(&cpu.run(f, p)?.1) == bits(&gpu.run(f, p)?.1);
        }
    }
    // Labels, and confidences bit for bit.
    g["maps_identical_to_cpu"] = json!(identical);
    g["gpu_speedup_over_cpu_full"] = json!(cpu_full_us / full_us);
    eprintln!("{}: full {full_us:.0} us, early {:.0} us", g["device"], g["early_us"].as_f64().unwrap_or(0.0));
    let sweep = if args.sweep {
        eprintln!("sweep on the GPU:");
        Some(sweep(&mut gpu, inputs, labels, args.runs)?)
    } else {
        None
    };
    Ok(Ok((g, sweep)))
}

#[cfg(not(feature = "cuda"))]
fn on_gpu(_: &CommonArgs, _: &Inputs, _: &LabelSet, _: &CostmapBenchArgs, _: &mut OnCpu, _: f64) -> Result<Result<(Value, Option<Sweep>), String>> {
    Ok(Err("this build has no CUDA support (feature `cuda`)".into()))
}

/// Stage shares of whole frames (640x480 sample, K labels) through the normal pipeline.
fn end_to_end(common: &CommonArgs, threads: usize, labels: &LabelSet, runs: usize) -> Result<Value> {
    let (_, mut pipeline, _) = crate::model::load(common, threads)?;
    let frame = crate::bench::resized_sample(640, 480)?;
    let mut t = Vec::new();
    for r in 0..=runs {
        let seg = pipeline.process(&frame, labels)?;
        if r > 0 {
            t.push(seg.timings);
        }
    }
    let col = |f: fn(&engine::StageTimings) -> f64| median(&mut t.iter().map(f).collect::<Vec<_>>());
    let total = col(engine::StageTimings::total_ms);
    let (pre, post) = (col(|s| s.preprocess_ms), col(|s| s.post_ms));
    Ok(json!({
        "frame": "640x480",
        "scorer": pipeline.scorer_name(),
        "image_encoder": pipeline.backend_name(),
        "preprocess_ms": pre,
        "image_encoder_ms": col(|s| s.image_encoder_ms),
        "cost_map_ms": col(|s| s.cost_map_ms),
        "post_ms": post,
        "total_ms": total,
        "pre_post_share": (pre + post) / total,
    }))
}

pub fn run(common: &CommonArgs, threads: usize, args: CostmapBenchArgs) -> Result<()> {
    check_outputs(&args)?;
    let inputs = match &args.fixture {
        Some(path) => read_fixture(path)?,
        None => from_model(common, threads, args.frames as usize)?,
    };
    if let Some(path) = &args.write_fixture {
        write_fixture(&inputs, path)?;
        eprintln!("fixture written to {}", path.display());
    }
    let available = inputs.labels.len();
    if args.labels == 0 || args.labels > available {
        bail!("--labels {} is outside 1..={available} (the built-in list's size)", args.labels);
    }
    let labels = first_labels(&inputs.labels, args.labels);
    let (finest, coarsest) = match (inputs.frames[0].1.last(), inputs.frames[0].1.first()) {
        (Some(f), Some(c)) => (f, c),
        _ => bail!("fixture has no levels"),
    };
    let cells = [finest.width, finest.height];
    eprintln!("{} labels, {} frames, finest level {}x{} cells, D = {}", labels.len(), inputs.frames.len(), cells[0], cells[1], labels.dim);

    let mut cpu = OnCpu { frames: &inputs.frames, threads };
    let cpu_report = full_vs_early(&mut cpu, &inputs, &labels, args.top_k, args.runs)?;
    eprintln!("cpu: full {:.0} us, early {:.0} us", cpu_report["full_us"].as_f64().unwrap_or(0.0), cpu_report["early_us"].as_f64().unwrap_or(0.0));
    let mut report = json!({
        "model": inputs.model,
        "labels": labels.len(),
        "dim": labels.dim,
        "cells": cells,
        "coarse_cells": [coarsest.width, coarsest.height],
        "frames": inputs.frames.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
        "embeddings": if args.fixture.is_some() { "fixture (f16)" } else { "model, f32" },
        "cpu": cpu_report.clone(),
    });
    let mut sweeps = vec![];
    if args.sweep {
        eprintln!("sweep on the CPU:");
        sweeps.push(("cpu", sweep(&mut cpu, &inputs, &labels, args.runs.min(3))?));
    }
    let primary = match on_gpu(common, &inputs, &labels, &args, &mut cpu, cpu_report["full_us"].as_f64().unwrap_or(f64::NAN))? {
        Ok((g, gpu_sweep)) => {
            sweeps.extend(gpu_sweep.map(|s| ("cuda", s)));
            report["cuda"] = g.clone();
            g
        }
        Err(reason) => {
            eprintln!("no CUDA scoring: {reason}");
            report["cuda_unavailable"] = json!(reason);
            cpu_report
        }
    };
    for key in ["device", "top_k", "full_us", "early_us", "speedup", "agreement"] {
        report[key] = primary[key].clone();
    }
    for (device, (rows, smallest)) in sweeps {
        report[format!("sweep_{device}")] = json!({"rows": rows, "smallest_top_k_for_99_5": smallest});
    }
    if args.fixture.is_none() {
        report["end_to_end"] = end_to_end(common, threads, &labels, args.runs.min(5))?;
    }
    crate::render::stamp(&mut report, REPORT_KIND);
    let also_to = args.json.flatten();
    crate::render::emit_json(&report, also_to.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_limit_is_the_built_in_list() {
        assert_eq!(label_list(LABELS_847).len() as u64, BUILT_IN_LABELS);
    }
}
