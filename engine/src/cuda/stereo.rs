//! Semi-global matching on the GPU: the CPU reference's four stages (`crate::stereo`) as the
//! kernels in stereo_kernels.cu, with the same integer arithmetic and the same subpixel
//! expression, so the disparity equals the CPU's bit for bit. Buffers stay on the device from
//! frame to frame; one upload per image and one download of the disparity per frame.
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::gpu;
use crate::error::{EngineError, Result};
use crate::stereo::{Disparity, DisparityMatcher, GrayView, Paths, StereoParams, StereoTimings, check_inputs};

/// The kernel source; compiled at start-up for the device found.
pub const STEREO_KERNELS: &str = include_str!("stereo_kernels.cu");

/// Entry points [`CudaStereoMatcher`] loads from [`STEREO_KERNELS`].
pub const STEREO_ENTRY_POINTS: &[&str] = &["census", "cost_volume", "aggregate_path", "select_disparity", "right_best", "left_right_check"];

/// `struct Penalties` of stereo_kernels.cu, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct Penalties {
    p1: u32,
    p2: u32,
    gradient: u32,
    border_p1: u32,
    border_p2: u32,
    use_gradient: i32,
    use_labels: i32,
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl DeviceRepr for Penalties {}

struct Kernels {
    census: CudaFunction,
    cost_volume: CudaFunction,
    aggregate_path: CudaFunction,
    select_disparity: CudaFunction,
    right_best: CudaFunction,
    left_right_check: CudaFunction,
}

/// Device buffers for one image size.
struct Buffers {
    size: (usize, usize),
    images: [CudaSlice<u8>; 2],
    labels: CudaSlice<u16>,
    census: [CudaSlice<u64>; 2],
    cost: CudaSlice<u8>,
    sum: CudaSlice<u16>,
    disparity: CudaSlice<f32>,
    right_best: CudaSlice<u32>,
}

pub struct CudaStereoMatcher {
    params: StereoParams,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    device: String,
    buffers: Option<Buffers>,
}

/// Scanline directions (dx, dy) in the CPU's order: left-right, right-left, then the down and up
/// sweeps with their diagonals.
fn directions(paths: Paths) -> &'static [(i32, i32)] {
    match paths {
        Paths::Three => &[(1, 0), (-1, 0), (0, 1)],
        Paths::Four => &[(1, 0), (-1, 0), (0, 1), (0, -1)],
        Paths::Five => &[(1, 0), (-1, 0), (0, 1), (1, 1), (-1, 1)],
        Paths::Eight => &[(1, 0), (-1, 0), (0, 1), (1, 1), (-1, 1), (0, -1), (1, -1), (-1, -1)],
    }
}

/// The buffers in `slot`, (re)allocated for a `width x height` pair with `disps` levels.
fn buffers<'a>(slot: &'a mut Option<Buffers>, stream: &Arc<CudaStream>, disps: usize, width: usize, height: usize) -> Result<&'a mut Buffers> {
    if slot.as_ref().is_none_or(|b| b.size != (width, height)) {
        *slot = None; // free the old ones first
        let n = width * height;
        let volume = n * disps;
        let err = |e| gpu(&format!("allocating stereo buffers for {width}x{height} with {disps} disparities"), e);
        *slot = Some(Buffers {
            size: (width, height),
            images: [stream.alloc_zeros::<u8>(n).map_err(err)?, stream.alloc_zeros::<u8>(n).map_err(err)?],
            labels: stream.alloc_zeros::<u16>(n).map_err(err)?,
            census: [stream.alloc_zeros::<u64>(n).map_err(err)?, stream.alloc_zeros::<u64>(n).map_err(err)?],
            cost: stream.alloc_zeros::<u8>(volume).map_err(err)?,
            sum: stream.alloc_zeros::<u16>(volume).map_err(err)?,
            disparity: stream.alloc_zeros::<f32>(n).map_err(err)?,
            right_best: stream.alloc_zeros::<u32>(n).map_err(err)?,
        });
    }
    slot.as_mut().ok_or_else(|| EngineError::Gpu("stereo buffers missing after allocation".into()))
}

/// One thread per pixel of a row, one grid row per image row.
fn per_pixel(width: usize, height: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (width.div_ceil(128) as u32, height as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }
}

impl CudaStereoMatcher {
    /// Validates `params` and compiles the kernels on device 0; the error says why when there is
    /// no driver, device or NVRTC.
    pub fn new(params: StereoParams) -> Result<Self> {
        params.validate()?;
        let device = super::Device::open_with(STEREO_KERNELS)?;
        let kernels = Kernels {
            census: device.function("census")?,
            cost_volume: device.function("cost_volume")?,
            aggregate_path: device.function("aggregate_path")?,
            select_disparity: device.function("select_disparity")?,
            right_best: device.function("right_best")?,
            left_right_check: device.function("left_right_check")?,
        };
        Ok(CudaStereoMatcher { params, stream: device.stream, kernels, device: device.name, buffers: None })
    }

    pub fn device_name(&self) -> &str {
        &self.device
    }

}

impl DisparityMatcher for CudaStereoMatcher {
    fn device(&self) -> String {
        format!("cuda: {}", self.device)
    }

    fn is_cpu(&self) -> bool {
        false
    }

    fn params(&self) -> &StereoParams {
        &self.params
    }

    /// As [`crate::stereo::StereoMatcher::compute`], and equal to it.
    fn compute(&mut self, left: GrayView<'_>, right: GrayView<'_>, labels: Option<&[u16]>) -> Result<(Disparity, StereoTimings)> {
        check_inputs(left, right, labels)?;
        let (w, h) = (left.width, left.height);
        // Rows index the grid's y dimension and pixels are 32-bit ints in the kernels.
        if h > 65_535 || w.checked_mul(h).is_none_or(|n| n > i32::MAX as usize) {
            return Err(EngineError::Gpu(format!("stereo on CUDA: a {w}x{h} pair is beyond the kernels' limits (height 65535, 2^31 pixels)")));
        }
        let params = self.params.clone();
        let nd = params.max_disp;
        let stream = self.stream.clone();
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let sync = |what: &str| stream.synchronize().map_err(|e| gpu(what, e));
        let mut timings = StereoTimings::default();
        let t0 = Instant::now();
        let kernels = &self.kernels;
        let b = buffers(&mut self.buffers, &stream, nd, w, h)?;
        let (wi, hi, ndi) = (w as i32, h as i32, nd as i32);

        let t = Instant::now();
        stream.memcpy_htod(left.pixels, &mut b.images[0]).map_err(|e| gpu("left image upload", e))?;
        stream.memcpy_htod(right.pixels, &mut b.images[1]).map_err(|e| gpu("right image upload", e))?;
        if let Some(labels) = labels {
            stream.memcpy_htod(labels, &mut b.labels).map_err(|e| gpu("labels upload", e))?;
        }
        let (cw, ch) = (params.census_width as i32, params.census_height as i32);
        for side in 0..2 {
            let mut l = stream.launch_builder(&kernels.census);
            l.arg(&b.images[side]).arg(&wi).arg(&hi).arg(&cw).arg(&ch).arg(&mut b.census[side]);
            // SAFETY: matches census() in stereo_kernels.cu; both buffers hold w*h elements.
            unsafe { l.launch(per_pixel(w, h)) }.map_err(|e| gpu("census", e))?;
        }
        sync("census")?;
        timings.census_ms = ms(t);

        let t = Instant::now();
        let volume = w * h * nd;
        let bits = params.census_bits() as u8;
        let mut l = stream.launch_builder(&kernels.cost_volume);
        l.arg(&b.census[0]).arg(&b.census[1]).arg(&wi).arg(&hi).arg(&ndi).arg(&bits).arg(&mut b.cost);
        let cfg = LaunchConfig { grid_dim: (volume.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches cost_volume(); cost holds w*h*nd bytes.
        unsafe { l.launch(cfg) }.map_err(|e| gpu("cost volume", e))?;
        sync("cost volume")?;
        timings.cost_ms = Some(ms(t));

        let t = Instant::now();
        stream.memset_zeros(&mut b.sum).map_err(|e| gpu("clearing the path sums", e))?;
        let pen = Penalties {
            p1: params.p1.into(),
            p2: params.p2.into(),
            gradient: params.p2_gradient.unwrap_or(0).into(),
            border_p1: params.label_border_p1.into(),
            border_p2: params.label_border_p2.into(),
            use_gradient: params.p2_gradient.is_some() as i32,
            use_labels: labels.is_some() as i32,
        };
        let threads = nd.div_ceil(32) * 32;
        let shared = ((nd + 2 + 33) * 4) as u32;
        for &(dx, dy) in directions(params.paths) {
            let lines = match (dx, dy) {
                (_, 0) => h,
                (0, _) => w,
                _ => w + h - 1,
            };
            let mut l = stream.launch_builder(&kernels.aggregate_path);
            l.arg(&b.cost).arg(&b.images[0]).arg(&b.labels).arg(&pen).arg(&wi).arg(&hi).arg(&ndi).arg(&dx).arg(&dy).arg(&mut b.sum);
            let cfg = LaunchConfig { grid_dim: (lines as u32, 1, 1), block_dim: (threads as u32, 1, 1), shared_mem_bytes: shared };
            // SAFETY: matches aggregate_path(); shared memory holds nd + 2 + 33 u32 as it indexes.
            unsafe { l.launch(cfg) }.map_err(|e| gpu(&format!("aggregation along ({dx}, {dy})"), e))?;
        }
        sync("aggregation")?;
        timings.aggregate_ms = ms(t);

        let t = Instant::now();
        let uniqueness = i32::from(params.uniqueness);
        let mut l = stream.launch_builder(&kernels.select_disparity);
        l.arg(&b.sum).arg(&wi).arg(&hi).arg(&ndi).arg(&uniqueness).arg(&mut b.disparity);
        // SAFETY: matches select_disparity(); disparity holds w*h floats.
        unsafe { l.launch(per_pixel(w, h)) }.map_err(|e| gpu("disparity selection", e))?;
        if let Some(max_diff) = params.lr_max_diff {
            let mut l = stream.launch_builder(&kernels.right_best);
            l.arg(&b.sum).arg(&wi).arg(&hi).arg(&ndi).arg(&mut b.right_best);
            // SAFETY: matches right_best(); right_best holds w*h.
            unsafe { l.launch(per_pixel(w, h)) }.map_err(|e| gpu("right-image minima", e))?;
            let max_diff = i32::from(max_diff);
            let mut l = stream.launch_builder(&kernels.left_right_check);
            l.arg(&b.right_best).arg(&wi).arg(&hi).arg(&max_diff).arg(&mut b.disparity);
            // SAFETY: matches left_right_check().
            unsafe { l.launch(per_pixel(w, h)) }.map_err(|e| gpu("left-right check", e))?;
        }
        let data = stream.clone_dtoh(&b.disparity).map_err(|e| gpu("disparity download", e))?;
        timings.select_ms = Some(ms(t));
        timings.total_ms = ms(t0);
        Ok((Disparity { width: w, height: h, data }, timings))
    }
}
