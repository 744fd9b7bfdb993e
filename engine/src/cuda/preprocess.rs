//! Frame -> network input on the GPU (`resize_rows`, `resize_cols_normalize` in kernels.cu),
//! bit-identical to [`crate::preprocess::preprocess`]: the filter taps are computed once on the
//! host by the same code and uploaded. The frame goes up from page-locked host memory.
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtrMut, LaunchConfig, PinnedHostSlice, PushKernelArg};

use super::{Device, gpu};
use crate::backend::DeviceTensor;
use crate::error::{EngineError, Result};
use crate::frame::{Frame, PixelFormat};
use crate::manifest::{ImageInputSpec, Layout};
use crate::preprocess::{ContentRect, NetInput, Taps, channel_order, plan, taps};

pub struct CudaPreprocessor {
    stream: Arc<CudaStream>,
    resize_rows: CudaFunction,
    resize_cols: CudaFunction,
    device: String,
    /// The last frame's bytes in page-locked memory and on the device; kept while frames keep
    /// their size. Page-locked memory goes up by DMA without the driver's staging copy.
    staging: Option<(PinnedHostSlice<u8>, CudaSlice<u8>)>,
}

/// Where [`CudaPreprocessor::preprocess_to`] put the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetGeometry {
    pub width: usize,
    pub height: usize,
    pub content: ContentRect,
}

/// Taps as the kernels read them: first source index, and weights in CSR form.
struct DeviceTaps {
    start: CudaSlice<i32>,
    offset: CudaSlice<i32>,
    weights: CudaSlice<f32>,
}

fn format_code(format: PixelFormat) -> i32 {
    match format {
        PixelFormat::Rgb8 => 0,
        PixelFormat::Bgr8 => 1,
        PixelFormat::Rgba8 => 2,
        PixelFormat::Bgra8 => 3,
        PixelFormat::Mono8 => 4,
        PixelFormat::Yuyv => 5,
        PixelFormat::Uyvy => 6,
        PixelFormat::Nv12 => 7,
    }
}

impl CudaPreprocessor {
    pub fn new() -> Result<Self> {
        Self::on(&Device::open()?)
    }

    /// On an open device (the scorer's, so both share its stream).
    pub(crate) fn on(device: &Device) -> Result<Self> {
        Ok(CudaPreprocessor {
            resize_rows: device.function("resize_rows")?,
            resize_cols: device.function("resize_cols_normalize")?,
            stream: device.stream.clone(),
            device: device.name.clone(),
            staging: None,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device
    }

    fn upload_taps(&self, t: &Taps) -> Result<DeviceTaps> {
        let start: Vec<i32> = t.start.iter().map(|&s| s as i32).collect();
        let mut offset = vec![0i32];
        for w in &t.weights {
            offset.push(offset.last().copied().unwrap_or(0) + w.len() as i32);
        }
        let weights: Vec<f32> = t.weights.concat();
        let up = |e| gpu("copy to device", e);
        Ok(DeviceTaps {
            start: self.stream.clone_htod(&start).map_err(up)?,
            offset: self.stream.clone_htod(&offset).map_err(up)?,
            weights: self.stream.clone_htod(&weights).map_err(up)?,
        })
    }

    /// The frame's bytes on the device, through the page-locked staging buffer.
    fn upload_frame(&mut self, frame: &Frame) -> Result<()> {
        let n = frame.data.len();
        if self.staging.as_ref().is_none_or(|(host, _)| host.len() != n) {
            self.staging = None; // frees the old pair before allocating the new one
            // SAFETY: the page-locked buffer is written in full below before anything reads it.
            let host = unsafe { self.stream.context().alloc_pinned::<u8>(n.max(1)) }.map_err(|e| gpu("page-locked frame buffer", e))?;
            let device = self.stream.alloc_zeros::<u8>(n.max(1)).map_err(|e| gpu("frame buffer", e))?;
            self.staging = Some((host, device));
        }
        let Some((host, device)) = self.staging.as_mut() else {
            return Err(EngineError::Gpu("frame buffer missing".into()));
        };
        host.as_mut_slice().map_err(|e| gpu("page-locked frame buffer", e))?[..n].copy_from_slice(&frame.data);
        self.stream.memcpy_htod(host, device).map_err(|e| gpu("copy frame", e))
    }

    /// Converts, resizes and normalises a validated frame into `dst`, a device buffer of the
    /// network input's shape for this frame (zeroed first, for a letterbox's border); returns
    /// once the input is written.
    pub fn preprocess_to(&mut self, frame: &Frame, spec: &ImageInputSpec, dst: DeviceTensor) -> Result<NetGeometry> {
        frame.validate()?;
        let (width, height, content) = plan(frame.width, frame.height, spec);
        if dst.len() != 3 * width * height {
            return Err(EngineError::Gpu(format!(
                "network input buffer {:?} holds {} floats, a {width}x{height} input needs {}",
                dst.dims,
                dst.len(),
                3 * width * height
            )));
        }
        // The raw call below does not make the context current itself (cudarc's calls do); the
        // pipeline may run on a thread that has none yet.
        self.stream.context().bind_to_thread().map_err(|e| gpu("making the context current", e))?;
        // SAFETY: `dst` is a live device buffer of `dst.len()` floats (the caller's contract).
        unsafe { cudarc::driver::result::memset_d8_async(dst.ptr, 0, 4 * dst.len(), self.stream.cu_stream()) }.map_err(|e| gpu("clearing the input", e))?;
        self.launch(frame, spec, (width, height, content), dst.ptr)?;
        self.stream.synchronize().map_err(|e| gpu("preprocessing", e))?;
        Ok(NetGeometry { width, height, content })
    }

    /// Converts, resizes and normalises a validated frame; the result is copied back.
    pub fn preprocess(&mut self, frame: &Frame, spec: &ImageInputSpec) -> Result<NetInput> {
        frame.validate()?;
        let (nw, nh, content) = plan(frame.width, frame.height, spec);
        let mut out = self.stream.alloc_zeros::<f32>(3 * nw * nh).map_err(|e| gpu("alloc", e))?;
        {
            let stream = self.stream.clone();
            let (ptr, _record) = out.device_ptr_mut(&stream);
            self.launch(frame, spec, (nw, nh, content), ptr)?;
        }
        let data = self.stream.clone_dtoh(&out).map_err(|e| gpu("copy from device", e))?;
        Ok(NetInput { width: nw, height: nh, layout: spec.layout, data, content })
    }

    /// Queues both passes for a validated frame, writing the network input at device address
    /// `out` (zeroed, of the size `plan` gave the caller).
    fn launch(&mut self, frame: &Frame, spec: &ImageInputSpec, (nw, nh, content): (usize, usize, ContentRect), out: u64) -> Result<()> {
        let (cw, ch) = (content.width as usize, content.height as usize);
        let (fw, fh) = (frame.width as usize, frame.height as usize);
        let (tx, ty) = (self.upload_taps(&taps(fw, cw))?, self.upload_taps(&taps(fh, ch))?);
        self.upload_frame(frame)?;
        let Some((_, data)) = self.staging.as_ref() else {
            return Err(EngineError::Gpu("frame buffer missing".into()));
        };
        let mut rows = self.stream.alloc_zeros::<f32>((fh * cw * 3).max(1)).map_err(|e| gpu("alloc", e))?;

        let (format, step, height, cw_i) = (format_code(frame.format), frame.step as i32, fh as i32, cw as i32);
        let mut b = self.stream.launch_builder(&self.resize_rows);
        b.arg(data).arg(&format).arg(&step).arg(&height);
        b.arg(&tx.start).arg(&tx.offset).arg(&tx.weights).arg(&cw_i).arg(&mut rows);
        let cfg = LaunchConfig { grid_dim: (cw.div_ceil(128) as u32, fh as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches resize_rows in kernels.cu; `rows` holds fh x cw x 3 floats and the taps
        // stay inside the frame (built by `taps` for this frame's size).
        unsafe { b.launch(cfg) }.map_err(|e| gpu("resize_rows", e))?;

        let order = channel_order(spec.color).map(|c| c as i32);
        let layout = match spec.layout {
            Layout::Nchw => 0i32,
            Layout::Nhwc => 1i32,
        };
        let (ch_i, nw_i, nh_i, x0, y0) = (ch as i32, nw as i32, nh as i32, content.x as i32, content.y as i32);
        let mut b = self.stream.launch_builder(&self.resize_cols);
        b.arg(&rows).arg(&cw_i).arg(&ty.start).arg(&ty.offset).arg(&ty.weights).arg(&ch_i);
        b.arg(&order[0]).arg(&order[1]).arg(&order[2]);
        b.arg(&spec.mean[0]).arg(&spec.mean[1]).arg(&spec.mean[2]).arg(&spec.std[0]).arg(&spec.std[1]).arg(&spec.std[2]);
        b.arg(&layout).arg(&nw_i).arg(&nh_i).arg(&x0).arg(&y0).arg(&out);
        let cfg = LaunchConfig { grid_dim: (cw.div_ceil(128) as u32, ch as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: matches resize_cols_normalize in kernels.cu; `out` holds the nw x nh x 3 input
        // (the callers' contract) and the content rectangle lies inside it (from `plan`).
        unsafe { b.launch(cfg) }.map_err(|e| gpu("resize_cols_normalize", e))?;
        // The taps and the row buffer are freed when this returns; cudarc orders the frees after
        // the launches on this stream.
        Ok(())
    }
}
