//! `ovseg stereo LEFT RIGHT --max-disp N`: disparity of a rectified pair by semi-global
//! matching; writes `<left stem>.disparity.pfm` and `<left stem>.disparity.png`, prints JSON.
//! With `--calib LEFT.yaml RIGHT.yaml` (camera_info files of a calibrated pair) the raw images
//! are rectified first and `<left stem>.depth.pfm` (metres) is written too.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use calibration::{CameraInfoYaml, StereoFields, StereoGeometry, rectify_map, remap_gray8};
use clap::Args;
use engine::stereo::{Disparity, DisparityMatcher, GrayView, Paths, StereoError, StereoMatcher, StereoParams, StereoTimings};
use image::{GrayImage, RgbImage};
use serde_json::json;

use crate::render::{self, Output, Outputs};

#[derive(Args, Debug)]
pub struct StereoArgs {
    /// Left image of a rectified pair, or of a raw pair with --calib (PNG/JPEG; colour is
    /// converted to gray).
    pub left: PathBuf,
    /// Right image, same size.
    pub right: PathBuf,
    /// Number of disparity levels: disparities 0..N-1 are searched. Multiple of 8.
    #[arg(long)]
    pub max_disp: usize,
    /// Output directory (created if missing).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Penalty for a disparity change of 1 between neighbours, in census-cost units (a 9x7
    /// census costs 0..62 per pixel).
    #[arg(long, default_value_t = StereoParams::default().p1)]
    pub p1: u16,
    /// Penalty for larger disparity changes (>= p1).
    #[arg(long, default_value_t = StereoParams::default().p2)]
    pub p2: u16,
    /// Shrink P2 at intensity edges: P2' = max(P1, P2*g/(g + |dI|)). Off when not given.
    #[arg(long)]
    pub p2_gradient: Option<u16>,
    /// Aggregation paths: 8, 4, or 5 or 3 (none from below: one pass down the image, a few rows
    /// of memory instead of 3 bytes per pixel and disparity, the least work per pixel).
    #[arg(long, default_value = "8", value_parser = parse_paths)]
    pub paths: Paths,
    /// Uniqueness margin in percent (0 = off).
    #[arg(long, default_value_t = StereoParams::default().uniqueness)]
    pub uniqueness: u8,
    /// Largest left-right disparity difference kept, in pixels.
    #[arg(long, default_value_t = 1, conflicts_with = "no_lr_check")]
    pub lr_max_diff: u16,
    /// Skip the left-right consistency check.
    #[arg(long)]
    pub no_lr_check: bool,
    /// Match the pair N times and report the median time (the outputs are the same each time;
    /// buffers are reused as for a stream of frames, so the first run is the slowest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// camera_info YAML files (camera_info_manager format) of the left and right camera:
    /// rectify both images with their D, R and P first, and write depth in metres from the
    /// baseline in the right P (P[0][3] = -fx * baseline).
    #[arg(long, num_args = 2, value_names = ["LEFT_YAML", "RIGHT_YAML"])]
    pub calib: Option<Vec<PathBuf>>,
    /// When matching on the GPU, also match on the CPU as many times and report its median
    /// time, the speed-up and whether the two disparities are identical.
    #[arg(long)]
    pub compare_cpu: bool,
    /// Replace existing files in --out that ovseg did not write (it never writes over an input).
    #[arg(long)]
    pub force: bool,
}

/// For a GPU run: the CPU's median time on the same pair, the speed-up, and whether the
/// disparities are identical (None when the run was on the CPU already).
fn compare_with_cpu(
    matcher: &dyn DisparityMatcher,
    params: &StereoParams,
    (left, right): (GrayView<'_>, GrayView<'_>),
    repeat: u32,
    (disp, timings): (&Disparity, &StereoTimings),
) -> Result<Option<serde_json::Value>> {
    if matcher.is_cpu() {
        return Ok(None);
    }
    let ((cpu_disp, cpu_timings), _) = timed_runs(&mut StereoMatcher::new(params.clone())?, left, right, repeat)?;
    let identical = cpu_disp.data.iter().zip(&disp.data).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
    Ok(Some(json!({ "ms": cpu_timings, "speedup": cpu_timings.total_ms / timings.total_ms, "identical": identical })))
}

/// `repeat` runs; the run with the median total time and every run's total, in run order
/// (the first run also allocates and first touches the matcher's buffers).
fn timed_runs(matcher: &mut dyn DisparityMatcher, left: GrayView<'_>, right: GrayView<'_>, repeat: u32) -> Result<((Disparity, StereoTimings), Vec<f64>)> {
    let mut runs = Vec::new();
    for _ in 0..repeat {
        runs.push(matcher.compute(left, right, None)?);
    }
    let totals = runs.iter().map(|r| r.1.total_ms).collect();
    runs.sort_by(|a, b| a.1.total_ms.total_cmp(&b.1.total_ms));
    Ok((runs.swap_remove(runs.len() / 2), totals))
}

/// Rectifies `img` with one camera's calibration; errors name the file and the field.
fn rectify(img: &GrayImage, yaml: &CameraInfoYaml, path: &Path) -> Result<GrayImage> {
    let (w, h) = img.dimensions();
    if (yaml.image_width, yaml.image_height) != (w, h) {
        bail!(
            "{}: image_width x image_height = {}x{}, but the image is {w}x{h}",
            path.display(),
            yaml.image_width,
            yaml.image_height
        );
    }
    let camera = yaml.camera().with_context(|| path.display().to_string())?;
    let (mx, my) = rectify_map(&camera, &yaml.rectification(), &yaml.projection(), w, h).with_context(|| path.display().to_string())?;
    let data = remap_gray8(img.as_raw(), w, h, &mx, &my).with_context(|| path.display().to_string())?;
    GrayImage::from_raw(w, h, data).context("rectified image buffer")
}

fn calibrated_pair(left: &mut GrayImage, right: &mut GrayImage, files: &[PathBuf]) -> Result<StereoGeometry> {
    let [lp, rp] = files else { bail!("--calib takes two files (left, right)") };
    // The loader's errors name the file already.
    let load = |p: &PathBuf| CameraInfoYaml::load(p).context("--calib");
    let (ly, ry) = (load(lp)?, load(rp)?);
    const FIELDS: StereoFields = StereoFields { left_fx: "left projection_matrix[0] (fx)", right_tx: "right projection_matrix[3]" };
    let geometry = StereoGeometry::from_projections(&ly.projection_matrix, &ry.projection_matrix, &FIELDS)
        .and_then(|g| g.check_width(left.width()).map(|()| g))
        .with_context(|| format!("--calib {} {}", lp.display(), rp.display()))?;
    *left = rectify(left, &ly, lp)?;
    *right = rectify(right, &ry, rp)?;
    Ok(geometry)
}

impl StereoArgs {
    fn params(&self) -> StereoParams {
        StereoParams {
            max_disp: self.max_disp,
            p1: self.p1,
            p2: self.p2,
            p2_gradient: self.p2_gradient,
            paths: self.paths,
            uniqueness: self.uniqueness,
            lr_max_diff: (!self.no_lr_check).then_some(self.lr_max_diff),
            ..StereoParams::default()
        }
    }
}

/// A parameter error named by its command-line flag (`--max-disp 12: ...`).
fn flag_error(e: StereoError) -> anyhow::Error {
    let flag = |field: &str| match field {
        "max_disp" | "p1" | "p2" | "p2_gradient" | "uniqueness" | "lr_max_diff" | "paths" => Some(format!("--{}", field.replace('_', "-"))),
        _ => None,
    };
    match &e {
        StereoError::Param { field, value, reason } if let Some(flag) = flag(field) => anyhow::anyhow!("{flag} {value}: {reason}"),
        _ => anyhow::Error::new(e),
    }
}

/// The files a run writes into --out: the colour picture first (it marks the PFMs as ovseg's
/// to a later run), the disparity PFM, and with --calib the depth PFM.
struct OutFiles {
    png: PathBuf,
    pfm: PathBuf,
    depth: PathBuf,
    /// Whether `depth` is written (--calib).
    with_depth: bool,
}

impl OutFiles {
    fn new(args: &StereoArgs) -> Self {
        let stem = args.left.file_stem().and_then(|s| s.to_str()).unwrap_or("left");
        OutFiles {
            png: args.out.join(format!("{stem}.disparity.png")),
            pfm: args.out.join(format!("{stem}.disparity.pfm")),
            depth: args.out.join(format!("{stem}.depth.pfm")),
            with_depth: args.calib.is_some(),
        }
    }

    /// Before any work: never over an input; files ovseg did not write only with --force.
    fn check(&self, args: &StereoArgs) -> Result<()> {
        let mut outputs = Outputs::new(args.force);
        outputs.input(&args.left, "the left image").input(&args.right, "the right image");
        for path in args.calib.iter().flatten() {
            outputs.input(path, "a calibration file");
        }
        let companion = Output::Pfm { companion: &self.png };
        let planned = [(self.png.clone(), Output::Png), (self.pfm.clone(), companion)].into_iter().chain(self.with_depth.then(|| (self.depth.clone(), companion)));
        Ok(outputs.files("--out", planned)?)
    }
}

pub fn run(backend: &str, threads: usize, args: StereoArgs) -> Result<()> {
    let params = args.params();
    params.validate().map_err(flag_error)?;
    // tensorrt and burn run an image encoder, which stereo does not have.
    if !matches!(backend, "auto" | "cpu" | "cuda") {
        bail!("--backend {backend}: stereo matching runs on auto, cpu or cuda");
    }
    render::check_out_dir(&args.out).context("--out")?;
    let files = OutFiles::new(&args);
    files.check(&args)?;
    let mut matcher = engine::stereo::matcher_for(backend, &params).with_context(|| format!("--backend {backend}"))?;
    let mut left = load_gray(&args.left)?;
    let mut right = load_gray(&args.right)?;
    if left.dimensions() != right.dimensions() {
        bail!(
            "{}: {}x{} differs from the left image's {}x{}",
            args.right.display(),
            right.width(),
            right.height(),
            left.width(),
            left.height()
        );
    }
    let pair = match &args.calib {
        Some(files) => Some(calibrated_pair(&mut left, &mut right, files)?),
        None => None,
    };
    let (w, h) = (left.width() as usize, left.height() as usize);
    let (lv, rv) = (GrayView::new(w, h, left.as_raw())?, GrayView::new(w, h, right.as_raw())?);
    let ((disp, timings), totals) = timed_runs(matcher.as_mut(), lv, rv, args.repeat)?;
    let cpu = match args.compare_cpu {
        true => compare_with_cpu(matcher.as_ref(), &params, (lv, rv), args.repeat, (&disp, &timings))?,
        false => None,
    };

    let OutFiles { png, pfm, depth: depth_path, .. } = files;
    let disparity_bytes = pfm_bytes(&disp);
    let depth_file = pair.as_ref().map(|pair| (pfm_bytes(&Disparity { data: disp.depth(pair.focal_baseline, pair.doffs), ..disp.clone() }), depth_path.clone()));
    // Without --calib, the depth of an earlier --calib run into this folder no longer matches
    // the new disparity, and the new picture will not vouch for it: it goes (ours only).
    if depth_file.is_none() && render::written_by_ovseg(&depth_path, Output::Pfm { companion: &png }) {
        std::fs::remove_file(&depth_path).with_context(|| format!("removing the stale {}", depth_path.display()))?;
    }
    // The picture first: its records of the PFMs mark them as ovseg's to a later run.
    let mut records = vec![(pfm.as_path(), disparity_bytes.as_slice())];
    records.extend(depth_file.as_ref().map(|(bytes, path)| (path.as_path(), bytes.as_slice())));
    render::save_rgb_with(&colorize(&disp, params.max_disp), &png, &records)?;
    render::write_file(&pfm, &disparity_bytes)?;
    let depth = match depth_file {
        Some((bytes, path)) => {
            render::write_file(&path, &bytes)?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let report = json!({
        "left": args.left.display().to_string(),
        "right": args.right.display().to_string(),
        "width": w,
        "height": h,
        "max_disp": params.max_disp,
        "paths": params.paths.count(),
        "valid_fraction": disp.valid_fraction(),
        "device": matcher.device(),
        "ms": timings,
        "cpu": cpu,
        "total_ms_runs": totals,
        "threads": threads,
        "pfm": pfm.display().to_string(),
        "png": png.display().to_string(),
        "depth_pfm": depth,
        "focal_baseline": pair.as_ref().map(|p| p.focal_baseline),
        "doffs": pair.as_ref().map(|p| p.doffs),
    });
    println!("{report}");
    Ok(())
}

fn parse_paths(s: &str) -> Result<Paths, String> {
    s.parse().ok().and_then(Paths::from_count).ok_or_else(|| format!("{s:?}: must be 3, 4, 5 or 8"))
}

/// The image as 8-bit gray; its size is checked from the header before the pixels are decoded.
fn load_gray(path: &Path) -> Result<GrayImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    crate::segment::checked_size(&bytes).with_context(|| path.display().to_string())?;
    let img = image::load_from_memory(&bytes).map_err(crate::segment::image_error).with_context(|| format!("{}: not a readable PNG/JPEG image", path.display()))?;
    Ok(img.to_luma8())
}

/// Middlebury PFM: "Pf" (one channel), width height, scale -1.0 (= little-endian f32), rows
/// bottom to top, +inf where invalid.
pub fn pfm_bytes(d: &Disparity) -> Vec<u8> {
    let mut out = format!("Pf\n{} {}\n-1.0\n", d.width, d.height).into_bytes();
    out.reserve(d.data.len() * 4);
    for row in d.data.chunks_exact(d.width).rev() {
        for &v in row {
            out.extend_from_slice(&(if v.is_nan() { f32::INFINITY } else { v }).to_le_bytes());
        }
    }
    out
}

/// Near (large disparity) red, far blue, on a fixed 0..max_disp-1 scale so that frames compare;
/// invalid black.
pub fn colorize(d: &Disparity, max_disp: usize) -> RgbImage {
    let scale = 1.0 / (max_disp.max(2) - 1) as f32;
    let mut img = RgbImage::new(d.width as u32, d.height as u32);
    for (px, &v) in img.pixels_mut().zip(&d.data) {
        px.0 = if v.is_nan() { [0, 0, 0] } else { ramp(v * scale) };
    }
    img
}

/// A turbo-like ramp: piecewise linear through hand-picked colours (dark indigo, blue, cyan,
/// green, yellow, orange, dark red). None is black, so invalid pixels stand out.
/// Depth in metres on a fixed log scale, 0.5 m red to 80 m dark blue (the disparity colours:
/// near is warm); no depth black.
pub fn colorize_depth(metres: &Disparity) -> RgbImage {
    let span = (80.0f32 / 0.5).ln();
    let mut img = RgbImage::new(metres.width as u32, metres.height as u32);
    for (px, &z) in img.pixels_mut().zip(&metres.data) {
        px.0 = if z.is_finite() && z > 0.0 { ramp(1.0 - (z / 0.5).ln() / span) } else { [0, 0, 0] };
    }
    img
}

fn ramp(t: f32) -> [u8; 3] {
    const STOPS: [(f32, [f32; 3]); 7] = [
        (0.00, [48.0, 18.0, 59.0]),
        (0.15, [65.0, 105.0, 225.0]),
        (0.32, [30.0, 190.0, 230.0]),
        (0.50, [70.0, 240.0, 110.0]),
        (0.66, [205.0, 235.0, 50.0]),
        (0.82, [250.0, 150.0, 35.0]),
        (1.00, [140.0, 15.0, 5.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    let i = STOPS.iter().rposition(|s| s.0 <= t).unwrap_or(0).min(STOPS.len() - 2);
    let ((t0, c0), (t1, c1)) = (STOPS[i], STOPS[i + 1]);
    let f = (t - t0) / (t1 - t0);
    std::array::from_fn(|k| (c0[k] + (c1[k] - c0[k]) * f).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfm_is_bottom_up_little_endian_with_inf() {
        let d = Disparity { width: 2, height: 2, data: vec![1.0, f32::NAN, 3.0, 4.5] };
        let b = pfm_bytes(&d);
        let header = b"Pf\n2 2\n-1.0\n";
        assert_eq!(&b[..header.len()], header);
        let vals: Vec<f32> = b[header.len()..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(vals, vec![3.0, 4.5, 1.0, f32::INFINITY]);
    }

    #[test]
    fn ramp_ends_and_invalid_black() {
        assert_eq!(ramp(0.0), [48, 18, 59]);
        assert_eq!(ramp(1.0), [140, 15, 5]);
        assert_eq!(ramp(7.0), [140, 15, 5]);
        let img = colorize(&Disparity { width: 2, height: 1, data: vec![f32::NAN, 0.0] }, 64);
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(1, 0).0, [48, 18, 59]);
    }
}
