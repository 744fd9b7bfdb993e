//! Stereo disparity by semi-global matching (SGM) on the CPU: the reference implementation.
//!
//! Input: a rectified pair of 8-bit grayscale images (epipolar lines are rows; a scene point
//! at left column x appears at right column x - d). Output: the left image's disparity d per
//! pixel, NaN where no reliable match was found.
//!
//! Stages, each in its own module so that a GPU port can be compared with this one stage by
//! stage (all integer up to the subpixel step, hence exactly):
//! 1. `census.rs`: 9x7 census codes (u64) of both images;
//! 2. `cost.rs`: Hamming cost volume C, u8, W x H x D;
//! 3. `aggregate.rs`: path costs over 3, 4, 5 or 8 directions summed into S, u16, W x H x D;
//! 4. `select.rs`: winner-take-all, uniqueness, parabola subpixel, left-right check.
//!
//! Memory: 3 bytes per pixel and disparity level (C and S) plus 16 bytes per pixel, e.g.
//! 118 MB at 640x480 with D = 128, kept by a [`StereoMatcher`] from frame to frame; with 3 or
//! 5 paths (none from below) C and S shrink to a few rows each (2 MB there with 2 threads).
//! Stage 1 runs rows in parallel (rayon); stages 2-4 run interleaved row by row (see
//! `schedule.rs`): the top-down and bottom-up sweeps side by side, each with the pixels of a
//! row in parallel (a row needs the one before), the next rows' costs and horizontal paths and
//! the last row's selection alongside; or with 3 or 5 paths one top-down sweep with the rows
//! ahead of it prepared and those behind it selected (`single_pass.rs`). Hot loops are
//! compiled portable, for AVX2 and where it pays for AVX-512 (`crate::isa`, picked at run
//! time; identical results). A test holds the result to a textbook
//! implementation (one whole path after another) bit for bit, at several thread counts.
//!
//! Semantic conditioning: [`StereoMatcher::compute`] takes an optional label per left pixel;
//! between neighbours with different labels the smoothness penalties become
//! `label_border_p1`/`label_border_p2`. With a single label everywhere it is plain SGM.
mod aggregate;
mod census;
mod cost;

mod params;
mod schedule;
mod select;
mod single_pass;
#[cfg(test)]
mod tests;

use std::time::Instant;

pub use params::{MAX_DISPARITIES, MAX_PENALTY, Paths, StereoError, StereoParams};

use crate::isa::Isa;

/// A borrowed 8-bit grayscale image, row-major, no padding between rows.
#[derive(Clone, Copy, Debug)]
pub struct GrayView<'a> {
    pub width: usize,
    pub height: usize,
    pub pixels: &'a [u8],
}

impl<'a> GrayView<'a> {
    pub fn new(width: usize, height: usize, pixels: &'a [u8]) -> Result<Self, StereoError> {
        let view = GrayView { width, height, pixels };
        view.check("left")?;
        Ok(view)
    }

    fn check(&self, side: &'static str) -> Result<(), StereoError> {
        if self.width == 0 || self.height == 0 {
            return Err(StereoError::input(side, format!("{}x{}", self.width, self.height), "image is empty"));
        }
        if self.pixels.len() != self.width * self.height {
            return Err(StereoError::input(
                side,
                format!("{} bytes", self.pixels.len()),
                format!("expected width*height = {}x{} = {}", self.width, self.height, self.width * self.height),
            ));
        }
        Ok(())
    }
}

/// Disparity of the left image in pixels, row-major; NaN = invalid (no match, not unique,
/// failed the left-right check, or the match would lie left of the right image).
#[derive(Clone, Debug)]
pub struct Disparity {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Disparity {
    /// The disparity at (x, y), None where invalid or outside.
    pub fn get(&self, x: usize, y: usize) -> Option<f32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        Some(self.data[y * self.width + x]).filter(|d| !d.is_nan())
    }

    /// Depth in metres of a rectified pair, `Z = focal_baseline / (d + doffs)` (focal length
    /// in pixels times baseline in metres; `doffs` = cx(right) - cx(left)); NaN where the
    /// disparity is invalid or the denominator is not positive.
    pub fn depth(&self, focal_baseline: f64, doffs: f64) -> Vec<f32> {
        self.data
            .iter()
            .map(|&v| {
                let denom = v as f64 + doffs;
                if v.is_nan() || denom <= 0.0 { f32::NAN } else { (focal_baseline / denom) as f32 }
            })
            .collect()
    }

    /// Share of pixels with a valid disparity.
    pub fn valid_fraction(&self) -> f64 {
        self.data.iter().filter(|d| !d.is_nan()).count() as f64 / self.data.len().max(1) as f64
    }
}

/// Wall time of each stage in milliseconds. The CPU matcher computes costs, aggregates and
/// selects row by row, interleaved: its `aggregate_ms` covers all three, and `cost_ms` and
/// `select_ms` are None.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StereoTimings {
    pub census_ms: f64,
    pub cost_ms: Option<f64>,
    pub aggregate_ms: f64,
    pub select_ms: Option<f64>,
    pub total_ms: f64,
}

/// A semi-global matcher: [`StereoMatcher`] on the CPU, or `crate::cuda::CudaStereoMatcher`
/// (feature `cuda`), which gives the same disparities.
pub trait DisparityMatcher: Send {
    /// "cpu (<instruction set>)", or "cuda: <device>".
    fn device(&self) -> String;
    /// Whether this is the CPU reference (what a GPU matcher is compared against).
    fn is_cpu(&self) -> bool;
    fn params(&self) -> &StereoParams;
    /// Disparity of `left` against `right` and the stage timings; `labels` (one per left
    /// pixel) switches the penalties across label borders.
    fn compute(&mut self, left: GrayView<'_>, right: GrayView<'_>, labels: Option<&[u16]>) -> crate::Result<(Disparity, StereoTimings)>;
}

impl DisparityMatcher for StereoMatcher {
    fn device(&self) -> String {
        format!("cpu ({})", self.isa.name())
    }

    fn is_cpu(&self) -> bool {
        true
    }

    fn params(&self) -> &StereoParams {
        &self.params
    }

    fn compute(&mut self, left: GrayView<'_>, right: GrayView<'_>, labels: Option<&[u16]>) -> crate::Result<(Disparity, StereoTimings)> {
        Ok(StereoMatcher::compute(self, left, right, labels)?)
    }
}

/// A matcher for `backend`: `cpu`; `cuda` (an error saying why when no device answers); `auto`
/// (and `tensorrt` and `burn`, which name the image encoder's backend) CUDA where a device
/// answers, else the CPU with the reason logged.
pub fn matcher_for(backend: &str, params: &StereoParams) -> crate::Result<Box<dyn DisparityMatcher>> {
    if !matches!(backend, "auto" | "cpu" | "cuda" | "tensorrt" | "burn") {
        return Err(StereoError::param("backend", format!("{backend:?}"), "stereo runs on auto, cpu or cuda").into());
    }
    #[cfg(feature = "cuda")]
    if backend != "cpu" {
        match crate::cuda::CudaStereoMatcher::new(params.clone()) {
            Ok(m) => return Ok(Box::new(m)),
            Err(e) if backend == "cuda" => return Err(e),
            Err(e) => tracing::info!("stereo on the CPU: {e}"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    if backend == "cuda" {
        return Err(crate::EngineError::Gpu("this build has no CUDA support (feature `cuda`)".into()));
    }
    Ok(Box::new(StereoMatcher::new(params.clone())?))
}

/// Disparity of `left` against `right` (same size, rectified), one-off. For a stream of
/// frames use a [`StereoMatcher`], which keeps its ~3 bytes x W x H x D of buffers.
pub fn sgm(left: GrayView<'_>, right: GrayView<'_>, params: &StereoParams) -> Result<Disparity, StereoError> {
    StereoMatcher::new(params.clone())?.compute(left, right, None).map(|(d, _)| d)
}

/// SGM with its working memory, reused from frame to frame (allocating and first touching
/// 118 MB per 640x480 frame at D = 128 costs tens of milliseconds of page faults).
pub struct StereoMatcher {
    params: StereoParams,
    isa: Isa,
    census: [Vec<u64>; 2],
    cost: Vec<u8>,
    sum: Vec<u16>,
}

impl StereoMatcher {
    pub fn new(params: StereoParams) -> Result<Self, StereoError> {
        params.validate()?;
        Ok(StereoMatcher { params, isa: Isa::detect(), census: [Vec::new(), Vec::new()], cost: Vec::new(), sum: Vec::new() })
    }

    pub fn params(&self) -> &StereoParams {
        &self.params
    }

    /// Disparity of `left` against `right` and the stage timings. `labels` (one per left
    /// pixel, row-major) switches the penalties to `label_border_p1/p2` across label borders.
    pub fn compute(
        &mut self,
        left: GrayView<'_>,
        right: GrayView<'_>,
        labels: Option<&[u16]>,
    ) -> Result<(Disparity, StereoTimings), StereoError> {
        check_inputs(left, right, labels)?;
        let (params, isa) = (&self.params, self.isa);
        let (w, nd, n) = (left.width, params.max_disp, left.pixels.len());
        // Every stage overwrites its whole buffer, so stale contents never matter.
        for c in &mut self.census {
            c.resize(n, 0);
        }
        let rows = schedule::buffer_rows(params.paths, left.height);
        self.cost.resize(rows * w * nd, 0);
        self.sum.resize(rows * w * nd, 0);
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let mut timings = StereoTimings::default();
        let t0 = Instant::now();

        let t = Instant::now();
        let (cw, ch) = (params.census_width, params.census_height);
        let [cl, cr] = &mut self.census;
        rayon::join(|| census::census(isa, left, cw, ch, cl), || census::census(isa, right, cw, ch, cr));
        timings.census_ms = ms(t);

        let t = Instant::now();
        let census = schedule::Census { left: cl, right: cr, bits: params.census_bits() as u8 };
        let pen = aggregate::Penalties::new(params, left.pixels, labels);
        let mut data = vec![f32::NAN; n];
        let sel = select::Select { disps: nd, uniqueness: params.uniqueness, lr_max_diff: params.lr_max_diff };
        schedule::match_rows(isa, census, w, nd, pen, params.paths, sel, &mut self.cost, &mut self.sum, &mut data);
        timings.aggregate_ms = ms(t);
        timings.total_ms = ms(t0);

        Ok((Disparity { width: w, height: left.height, data }, timings))
    }
}

pub(crate) fn check_inputs(left: GrayView<'_>, right: GrayView<'_>, labels: Option<&[u16]>) -> Result<(), StereoError> {
    left.check("left")?;
    right.check("right")?;
    if (left.width, left.height) != (right.width, right.height) {
        return Err(StereoError::input(
            "right",
            format!("{}x{}", right.width, right.height),
            format!("must have the left image's size {}x{}", left.width, left.height),
        ));
    }
    if let Some(l) = labels
        && l.len() != left.pixels.len()
    {
        return Err(StereoError::input("labels", format!("{} entries", l.len()), format!("expected one per pixel, {}", left.pixels.len())));
    }
    Ok(())
}
