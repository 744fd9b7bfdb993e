//! The CUDA scorer: the CPU scorer's stages as kernels (see kernels.cu), bit-identical to it.
//! Everything stays on the device from the level upload to the label map, which comes back in
//! one copy per output.
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::gpu;
use crate::backend::DeviceTensor;
use crate::costmap::{Axis, EmbeddingMap, Grid, ScoreField, fusion_axes, rest_gain};
use crate::manifest::EmbeddingOutput;
use crate::error::{EngineError, Result};
use crate::labels::LabelSet;
use crate::post::{LabelMap, cell_ranges, frame_axes};
use crate::scoring::{CpuScorer, PaintRequest, Painted, Scored, Scorer, ScoringPlan, check_paint, ms_since};

/// Labels the interpolation kernel holds in 48 KiB of shared memory (19 bytes each).
pub const MAX_LABELS: usize = 2048;
/// Candidates per fused cell (4 corners x top_k) the fusion kernel holds.
pub const MAX_FUSED_CANDIDATES: usize = 256;

struct Kernels {
    cost_dense: CudaFunction,
    keep_top_k: CudaFunction,
    cell_mass: CudaFunction,
    fuse_sparse: CudaFunction,
    softmax_cells: CudaFunction,
    upsample_argmax: CudaFunction,
    paint_labels: CudaFunction,
    nchw_to_pixel_major: CudaFunction,
}

/// The label set last uploaded, kept on the host too so a change is noticed.
struct DeviceLabels {
    host: (Vec<f32>, Vec<f32>, Vec<f32>),
    embeddings: CudaSlice<f32>,
    gain: CudaSlice<f32>,
    bias: CudaSlice<f32>,
}

/// A [`ScoreField`] on the device.
struct DeviceField {
    grid: Grid,
    capacity: usize,
    /// Every cell holds every label in id order (made by `cost_dense`).
    dense: bool,
    count: CudaSlice<u32>,
    label: CudaSlice<u32>,
    score: CudaSlice<f32>,
    /// Per cell, the labels left out as one score ([`ScoreField::rest`]); `None` where none are.
    rest: Option<CudaSlice<f32>>,
}

/// One level of pixel embeddings in device memory (pixel-major, L2-normalised).
pub struct DeviceLevel {
    grid: Grid,
    dim: usize,
    data: CudaSlice<f32>,
}

/// Bilinear neighbours per row or column, as the kernels read them.
struct DeviceAxis {
    index: CudaSlice<i32>,
    frac: CudaSlice<f32>,
}

pub struct CudaScorer {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    device: String,
    labels: Option<DeviceLabels>,
    /// Passed where a kernel takes a buffer it does not read in this mode.
    unused_f32: CudaSlice<f32>,
    unused_i32: CudaSlice<i32>,
    /// Plans past the kernels' limits (see [`MAX_LABELS`]) are scored here.
    cpu: CpuScorer,
    warned_limits: bool,
    preprocessor: super::CudaPreprocessor,
}

fn blocks(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

fn linear(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks(n, 256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

impl CudaScorer {
    /// Starts on device 0; the error says why when there is no driver, device or NVRTC.
    pub fn new() -> Result<Self> {
        let device = super::Device::open()?;
        let kernels = Kernels {
            cost_dense: device.function("cost_dense")?,
            keep_top_k: device.function("keep_top_k")?,
            cell_mass: device.function("cell_mass")?,
            fuse_sparse: device.function("fuse_sparse")?,
            softmax_cells: device.function("softmax_cells")?,
            upsample_argmax: device.function("upsample_argmax")?,
            paint_labels: device.function("paint_labels")?,
            nchw_to_pixel_major: device.function("nchw_to_pixel_major")?,
        };
        let preprocessor = super::CudaPreprocessor::on(&device)?;
        let stream = device.stream;
        let unused_f32 = stream.alloc_zeros::<f32>(1).map_err(|e| gpu("alloc", e))?;
        let unused_i32 = stream.alloc_zeros::<i32>(1).map_err(|e| gpu("alloc", e))?;
        Ok(CudaScorer {
            stream,
            kernels,
            device: device.name,
            labels: None,
            unused_f32,
            unused_i32,
            cpu: CpuScorer,
            warned_limits: false,
            preprocessor,
        })
    }

    /// Preprocessing on this scorer's device and stream.
    pub fn preprocessor(&mut self) -> &mut super::CudaPreprocessor {
        &mut self.preprocessor
    }

    pub fn device_name(&self) -> &str {
        &self.device
    }

    fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(data).map_err(|e| gpu("copy to device", e))
    }

    fn download<T: DeviceRepr>(&self, data: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(data).map_err(|e| gpu("copy from device", e))
    }

    fn alloc<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| gpu(&format!("allocating {n} elements"), e))
    }

    fn new_field(&self, grid: Grid, capacity: usize, dense: bool) -> Result<DeviceField> {
        let cells = grid.width * grid.height;
        Ok(DeviceField {
            grid,
            capacity,
            dense,
            count: self.alloc::<u32>(cells)?,
            label: self.alloc::<u32>(cells * capacity)?,
            score: self.alloc::<f32>(cells * capacity)?,
            rest: None,
        })
    }

    fn axis(&self, axis: &[(usize, usize, f32)]) -> Result<DeviceAxis> {
        let index: Vec<i32> = axis.iter().flat_map(|&(a, b, _)| [a as i32, b as i32]).collect();
        let frac: Vec<f32> = axis.iter().map(|a| a.2).collect();
        Ok(DeviceAxis { index: self.upload(&index)?, frac: self.upload(&frac)? })
    }

    fn upload_labels(&mut self, labels: &LabelSet) -> Result<()> {
        // Bit for bit: -0.0 == 0.0 would keep a stale copy, and NaN != NaN would upload every frame.
        let same_bits = |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        let same = self.labels.as_ref().is_some_and(|d| {
            same_bits(&d.host.0, &labels.embeddings) && same_bits(&d.host.1, &labels.gain) && same_bits(&d.host.2, &labels.bias)
        });
        if !same {
            self.labels = Some(DeviceLabels {
                embeddings: self.upload(&labels.embeddings)?,
                gain: self.upload(&labels.gain)?,
                bias: self.upload(&labels.bias)?,
                host: (labels.embeddings.clone(), labels.gain.clone(), labels.bias.clone()),
            });
        }
        Ok(())
    }

    fn device_labels(&self) -> Result<&DeviceLabels> {
        self.labels.as_ref().ok_or_else(|| EngineError::Gpu("labels not uploaded".into()))
    }

    /// Every label at every cell of `level`; with `fuse = Some((coarse, w_coarse, w_fine))` the
    /// dense coarse field is upsampled and added (fusion with no rejection).
    fn cost_dense(
        &self,
        level: &DeviceLevel,
        num_labels: usize,
        scale: f32,
        fuse: Option<(&DeviceField, f32, f32)>,
    ) -> Result<DeviceField> {
        let labels = self.device_labels()?;
        let cells = level.grid.width * level.grid.height;
        let mut out = self.new_field(level.grid, num_labels, true)?;
        let axes = match fuse {
            Some((coarse, _, _)) => {
                let (rows, cols) = fusion_axes(coarse.grid, level.grid);
                Some((self.axis(&rows)?, self.axis(&cols)?))
            }
            None => None,
        };
        let (cells_i, dim_i, k_i, width_i) = (cells as i32, level.dim as i32, num_labels as i32, level.grid.width as i32);
        let (fuse_flag, coarse_width, w_coarse, w_fine) = match fuse {
            Some((c, wc, wf)) => (1i32, c.grid.width as i32, wc, wf),
            None => (0i32, 0i32, 0.0f32, 0.0f32),
        };
        let coarse_score = fuse.map_or(&self.unused_f32, |(c, _, _)| &c.score);
        let (rows_i, rows_f, cols_i, cols_f) = match &axes {
            Some((r, c)) => (&r.index, &r.frac, &c.index, &c.frac),
            None => (&self.unused_i32, &self.unused_f32, &self.unused_i32, &self.unused_f32),
        };
        let cfg = LaunchConfig {
            grid_dim: (blocks(num_labels, 64), blocks(cells, 16), 1),
            block_dim: (16, 16, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.kernels.cost_dense);
        b.arg(&level.data).arg(&cells_i).arg(&dim_i);
        b.arg(&labels.embeddings).arg(&labels.gain).arg(&labels.bias).arg(&k_i).arg(&scale);
        b.arg(&fuse_flag).arg(coarse_score).arg(&coarse_width);
        b.arg(rows_i).arg(rows_f).arg(cols_i).arg(cols_f).arg(&width_i);
        b.arg(&w_coarse).arg(&w_fine);
        b.arg(&mut out.count).arg(&mut out.label).arg(&mut out.score);
        // SAFETY: arguments match cost_dense's parameter list in kernels.cu; buffer sizes are
        // cells x num_labels as the kernel indexes them.
        unsafe { b.launch(cfg) }.map_err(|e| gpu("cost_dense", e))?;
        Ok(out)
    }

    fn keep_top_k(&self, field: &DeviceField, k: usize) -> Result<DeviceField> {
        let cap = k.min(field.capacity).max(1);
        let cells = field.grid.width * field.grid.height;
        let mut out = self.new_field(field.grid, cap, false)?;
        let (cap_in, cells_i, cap_i) = (field.capacity as i32, cells as i32, cap as i32);
        let mut b = self.stream.launch_builder(&self.kernels.keep_top_k);
        b.arg(&field.count).arg(&field.label).arg(&field.score).arg(&cap_in).arg(&cells_i).arg(&cap_i);
        b.arg(&mut out.count).arg(&mut out.label).arg(&mut out.score);
        // SAFETY: matches keep_top_k in kernels.cu; outputs hold cells x cap.
        unsafe { b.launch(linear(cells)) }.map_err(|e| gpu("keep_top_k", e))?;
        Ok(out)
    }

    /// [`crate::costmap::cell_mass`] of `field`: per cell `[m, t, a]`, interleaved.
    fn cell_mass(&self, field: &DeviceField, num_labels: usize, gain: f32) -> Result<CudaSlice<f32>> {
        let cells = field.grid.width * field.grid.height;
        let mut mass = self.alloc::<f32>(3 * cells)?;
        let (cap_i, cells_i, has_rest, k_i) = (field.capacity as i32, cells as i32, field.rest.is_some() as i32, num_labels as i32);
        let mut b = self.stream.launch_builder(&self.kernels.cell_mass);
        b.arg(&field.count).arg(&field.score).arg(&cap_i).arg(field.rest.as_ref().unwrap_or(&self.unused_f32)).arg(&has_rest);
        b.arg(&cells_i).arg(&k_i).arg(&gain).arg(&mut mass);
        let cfg = LaunchConfig { grid_dim: (blocks(cells, 4), 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches cell_mass in kernels.cu (four warps a block, one cell each); `rest`
        // holds `cells` floats when has_rest, and `mass` 3 x cells.
        unsafe { b.launch(cfg) }.map_err(|e| gpu("cell_mass", e))?;
        Ok(mass)
    }

    #[allow(clippy::too_many_arguments)]
    fn fuse_sparse(
        &self,
        coarse: &DeviceField,
        kept: &DeviceField,
        level: &DeviceLevel,
        num_labels: usize,
        scale: f32,
        (w_coarse, w_fine, rest_gain): (f32, f32, f32),
    ) -> Result<DeviceField> {
        let labels = self.device_labels()?;
        let cap = (kept.capacity * 4).min(num_labels).max(1);
        let cells = level.grid.width * level.grid.height;
        let (rows, cols) = fusion_axes(coarse.grid, level.grid);
        let (rows, cols) = (self.axis(&rows)?, self.axis(&cols)?);
        let mass = self.cell_mass(coarse, num_labels, rest_gain)?;
        let mut out = self.new_field(level.grid, cap, false)?;
        let mut rest = self.alloc::<f32>(cells)?;
        let (k_cap, c_cap, c_dense, c_width) = (kept.capacity as i32, coarse.capacity as i32, coarse.dense as i32, coarse.grid.width as i32);
        let (width_i, cells_i, dim_i, cap_i) = (level.grid.width as i32, cells as i32, level.dim as i32, cap as i32);
        let mut b = self.stream.launch_builder(&self.kernels.fuse_sparse);
        b.arg(&kept.count).arg(&kept.label).arg(&k_cap);
        b.arg(&coarse.count).arg(&coarse.label).arg(&coarse.score).arg(&c_cap).arg(&c_dense).arg(&c_width);
        b.arg(&rows.index).arg(&rows.frac).arg(&cols.index).arg(&cols.frac).arg(&width_i).arg(&cells_i);
        b.arg(&level.data).arg(&dim_i).arg(&labels.embeddings).arg(&labels.gain).arg(&labels.bias);
        b.arg(&scale).arg(&w_coarse).arg(&w_fine).arg(&cap_i).arg(&mass).arg(&rest_gain);
        b.arg(&mut out.count).arg(&mut out.label).arg(&mut out.score).arg(&mut rest);
        let cfg = LaunchConfig { grid_dim: (blocks(cells, 4), 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches fuse_sparse in kernels.cu; cap <= MAX_FUSED_CANDIDATES (checked by
        // `within_limits`), outputs hold cells x cap, `rest` cells; `mass` is cell_mass's of `coarse`.
        unsafe { b.launch(cfg) }.map_err(|e| gpu("fuse_sparse", e))?;
        out.rest = Some(rest);
        Ok(out)
    }

    fn softmax(&self, field: &mut DeviceField) -> Result<()> {
        let cells = field.grid.width * field.grid.height;
        let (cap_i, cells_i, has_rest) = (field.capacity as i32, cells as i32, field.rest.is_some() as i32);
        let mut b = self.stream.launch_builder(&self.kernels.softmax_cells);
        b.arg(&field.count).arg(&mut field.score).arg(&cap_i);
        b.arg(field.rest.as_ref().unwrap_or(&self.unused_f32)).arg(&has_rest).arg(&cells_i);
        // SAFETY: matches softmax_cells in kernels.cu.
        unsafe { b.launch(linear(cells)) }.map_err(|e| gpu("softmax_cells", e))?;
        Ok(())
    }

    /// Copies levels to the device (a GPU image encoder would leave them there).
    pub fn upload_levels(&self, levels: &[EmbeddingMap]) -> Result<Vec<DeviceLevel>> {
        levels.iter().map(|l| Ok(DeviceLevel { grid: l.grid(), dim: l.dim, data: self.upload(&l.data)? })).collect()
    }

    /// Levels from an image encoder's outputs in device memory (`[1, dim, h, w]` each, coarse
    /// to fine, as `specs` lists them): transposed and L2-normalised on the device as
    /// [`crate::backend::nchw_to_pixel_major`] does on the host, bit for bit. Returns once the
    /// outputs have been read, so their owner may reuse them.
    pub fn levels_from_device(&self, outputs: &[DeviceTensor], specs: &[EmbeddingOutput]) -> Result<Vec<DeviceLevel>> {
        if outputs.len() != specs.len() {
            return Err(EngineError::Runtime(format!("image encoder returned {} levels, the manifest lists {}", outputs.len(), specs.len())));
        }
        let mut levels = Vec::with_capacity(outputs.len());
        for (output, spec) in outputs.iter().zip(specs) {
            let [_, dim, height, width] = output.dims;
            let pixels = width * height;
            let mut data = self.alloc::<f32>(dim * pixels)?;
            let (dim_i, pixels_i) = (dim as i32, pixels as i32);
            let mut b = self.stream.launch_builder(&self.kernels.nchw_to_pixel_major);
            b.arg(&output.ptr).arg(&dim_i).arg(&pixels_i).arg(&mut data);
            // SAFETY: matches nchw_to_pixel_major in kernels.cu; `output` holds dim x pixels
            // floats in this context (the backend's contract) and `data` as many.
            unsafe { b.launch(linear(pixels)) }.map_err(|e| gpu("nchw_to_pixel_major", e))?;
            levels.push(DeviceLevel { grid: Grid { stride: spec.stride, offset: spec.center_offset(), width, height }, dim, data });
        }
        self.stream.synchronize().map_err(|e| gpu("reading the encoder's outputs", e))?;
        Ok(levels)
    }

    /// A level copied back to the host (for parity checks).
    pub fn download_level(&self, level: &DeviceLevel) -> Result<EmbeddingMap> {
        let Grid { stride, offset, width, height } = level.grid;
        Ok(EmbeddingMap { stride, offset, width, height, dim: level.dim, data: self.download(&level.data)? })
    }

    /// Cost map, fusion, rejection and softmax, on the device.
    fn fuse(&mut self, levels: &[DeviceLevel], plan: &ScoringPlan) -> Result<DeviceField> {
        Self::check_limits(plan)?;
        plan.check_dims(levels.iter().map(|l| l.dim))?;
        self.upload_labels(plan.labels)?;
        let k = plan.labels.len();
        let scale = plan.logit_scale;
        let mut field = self.cost_dense(&levels[0], k, scale * plan.fusion_weights[0], None)?;
        for (i, (level, &weight)) in levels[1..].iter().zip(&plan.fusion_weights[1..]).enumerate() {
            field = match plan.rejection() {
                Some(top_k) => {
                    let kept = self.keep_top_k(&field, top_k)?;
                    let weights = (1.0, weight, rest_gain(plan.fusion_weights, i + 1));
                    self.fuse_sparse(&field, &kept, level, k, scale, weights)?
                }
                None => self.cost_dense(level, k, scale, Some((&field, 1.0, weight)))?,
            };
        }
        self.softmax(&mut field)?;
        Ok(field)
    }

    /// Scores levels already on the device; returns when the label map is back on the host.
    pub fn score_resident(&mut self, levels: &[DeviceLevel], plan: &ScoringPlan) -> Result<Scored> {
        let t = Instant::now();
        let field = self.fuse(levels, plan)?;
        self.stream.synchronize().map_err(|e| gpu("cost map", e))?;
        let cost_ms = ms_since(t);
        let t = Instant::now();
        let map = self.upsample(&field, plan)?;
        Ok(Scored { map, cost_ms, post_ms: ms_since(t) })
    }

    /// The finest level's per-cell probabilities, copied back (for parity checks).
    pub fn fused_probabilities(&mut self, levels: &[EmbeddingMap], plan: &ScoringPlan) -> Result<ScoreField> {
        let levels = self.upload_levels(levels)?;
        let field = self.fuse(&levels, plan)?;
        Ok(ScoreField {
            stride: field.grid.stride,
            offset: field.grid.offset,
            width: field.grid.width,
            height: field.grid.height,
            capacity: field.capacity,
            count: self.download(&field.count)?,
            label: self.download(&field.label)?,
            score: self.download(&field.score)?,
            // The softmax has taken the rest in, as the CPU's does.
            rest: Vec::new(),
        })
    }

    fn upsample(&self, field: &DeviceField, plan: &ScoringPlan) -> Result<LabelMap> {
        let (width, height) = (plan.width as usize, plan.height as usize);
        let (xs, ys) = frame_axes(field.grid, plan.content, plan.width, plan.height);
        // Frame pixels whose top-left neighbour is each cell.
        let ranges = |axis: &Axis, cells: usize| -> Vec<i32> {
            cell_ranges(axis, cells).into_iter().flat_map(|(a, b)| [a as i32, b as i32]).collect()
        };
        let col_range = self.upload(&ranges(&xs, field.grid.width))?;
        let row_range = self.upload(&ranges(&ys, field.grid.height))?;
        let col_f = self.upload(&xs.iter().map(|a| a.2).collect::<Vec<f32>>())?;
        let row_f = self.upload(&ys.iter().map(|a| a.2).collect::<Vec<f32>>())?;
        let mut labels = self.alloc::<u16>(width * height)?;
        let mut confidence = self.alloc::<f32>(width * height)?;
        let k = plan.labels.len();
        let (cap_i, fw, fh, k_i, width_i) =
            (field.capacity as i32, field.grid.width as i32, field.grid.height as i32, k as i32, width as i32);
        let threshold = plan.unknown_threshold;
        let mut b = self.stream.launch_builder(&self.kernels.upsample_argmax);
        b.arg(&field.count).arg(&field.label).arg(&field.score).arg(&cap_i).arg(&fw).arg(&fh).arg(&k_i);
        b.arg(&col_range).arg(&row_range).arg(&col_f).arg(&row_f).arg(&width_i).arg(&threshold);
        b.arg(&mut labels).arg(&mut confidence);
        let shared = 16 * k + k.div_ceil(2) * 2 + 2 * k;
        let cfg = LaunchConfig {
            grid_dim: ((field.grid.width * field.grid.height).max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        // SAFETY: matches upsample_argmax in kernels.cu; shared memory sized as it lays it out,
        // k <= MAX_LABELS keeps it under 48 KiB.
        unsafe { b.launch(cfg) }.map_err(|e| gpu("upsample_argmax", e))?;
        Ok(LabelMap {
            width: plan.width,
            height: plan.height,
            labels: self.download(&labels)?,
            confidence: self.download(&confidence)?,
        })
    }

    /// Peak single-precision instruction rate (multiplies or adds per second, one per lane per
    /// clock): the floor for kernels built without fused multiply-add. `None` where the device
    /// does not report its clock.
    pub fn peak_fp32_ops_per_s(&self) -> Option<f64> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let ctx = self.stream.context();
        let sms = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).ok()? as f64;
        let khz = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE).ok()? as f64;
        // FP32 lanes per multiprocessor: 64 on Volta, Turing and A100 (sm_80); 128 on later
        // Ampere (Orin included), Ada and Hopper.
        let lanes = match ctx.compute_capability().ok()? {
            (8, 0) => 64.0,
            (major, _) if major >= 8 => 128.0,
            _ => 64.0,
        };
        (khz > 0.0).then_some(sms * lanes * khz * 1e3)
    }

    /// Whether the kernels can take this plan (shared-memory sized tables).
    pub fn within_limits(plan: &ScoringPlan) -> bool {
        plan.labels.len() <= MAX_LABELS && plan.rejection().is_none_or(|k| 4 * k <= MAX_FUSED_CANDIDATES)
    }

    /// [`Self::within_limits`] as an error that gives the plan's figures and the limits.
    pub fn check_limits(plan: &ScoringPlan) -> Result<()> {
        if Self::within_limits(plan) {
            return Ok(());
        }
        Err(EngineError::Gpu(format!(
            "{} labels / top_k {} exceed the CUDA kernels' limits ({MAX_LABELS} labels, top_k {})",
            plan.labels.len(),
            plan.top_k,
            MAX_FUSED_CANDIDATES / 4
        )))
    }
}

impl Scorer for CudaScorer {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn cuda(&mut self) -> Option<&mut CudaScorer> {
        Some(self)
    }

    fn score(&mut self, levels: &[EmbeddingMap], plan: &ScoringPlan) -> Result<Scored> {
        if let Err(e) = Self::check_limits(plan) {
            if !self.warned_limits {
                tracing::warn!("{e}; scoring these frames on the CPU");
                self.warned_limits = true;
            }
            return self.cpu.score(levels, plan);
        }
        let t = Instant::now();
        let resident = self.upload_levels(levels)?;
        let upload_ms = ms_since(t);
        let mut scored = self.score_resident(&resident, plan)?;
        scored.cost_ms += upload_ms;
        Ok(scored)
    }

    /// `paint_labels` in kernels.cu: the label map (and the frame, for an overlay) go up, and
    /// each image asked for comes back in one copy.
    fn paint(&mut self, map: &LabelMap, request: &PaintRequest) -> Result<Painted> {
        check_paint(map, request)?;
        if !request.color && request.overlay.is_none() {
            return Ok(Painted::default());
        }
        let pixels = map.labels.len();
        let labels = self.upload(&map.labels)?;
        let palette: Vec<u8> = request.colors.iter().flatten().copied().collect();
        let palette = if palette.is_empty() { self.alloc::<u8>(3)? } else { self.upload(&palette)? };
        let (rgb, alpha) = match request.overlay {
            Some((rgb, alpha)) => (self.upload(rgb)?, alpha),
            None => (self.alloc::<u8>(1)?, 0.0),
        };
        let size = |wanted: bool| if wanted { 3 * pixels } else { 1 };
        let mut color = self.alloc::<u8>(size(request.color))?;
        let mut overlay = self.alloc::<u8>(size(request.overlay.is_some()))?;
        let (pixels_i, labels_i) = (pixels as i32, request.colors.len().min(i32::MAX as usize) as i32);
        let (want_color, want_overlay) = (i32::from(request.color), i32::from(request.overlay.is_some()));
        let mut b = self.stream.launch_builder(&self.kernels.paint_labels);
        b.arg(&labels).arg(&pixels_i).arg(&palette).arg(&labels_i).arg(&rgb).arg(&alpha);
        b.arg(&want_color).arg(&mut color).arg(&want_overlay).arg(&mut overlay);
        // SAFETY: matches paint_labels in kernels.cu; the outputs it writes hold 3 x pixels bytes
        // (it writes only those asked for), the frame 3 x pixels (checked by `check_paint`).
        unsafe { b.launch(linear(pixels)) }.map_err(|e| gpu("paint_labels", e))?;
        Ok(Painted {
            color: request.color.then(|| self.download(&color)).transpose()?,
            overlay: request.overlay.map(|_| self.download(&overlay)).transpose()?,
        })
    }
}
