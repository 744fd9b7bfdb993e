//! Camera frames as they arrive (any size, a few pixel layouts) and their validation.
use crate::error::{EngineError, Result};

/// Pixel layouts accepted by the pipeline. Names follow `sensor_msgs/Image` encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Rgb8,
    Bgr8,
    Rgba8,
    Bgra8,
    Mono8,
    /// YUV 4:2:2 packed as Y0 U Y1 V (`yuyv`, ROS `yuv422_yuy2`).
    Yuyv,
    /// YUV 4:2:2 packed as U Y0 V Y1 (ROS `yuv422`, also `uyvy`).
    Uyvy,
    /// YUV 4:2:0: a full-size Y plane, then a half-size interleaved UV plane, both with `step`.
    Nv12,
}

impl PixelFormat {
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => 4,
            PixelFormat::Yuyv | PixelFormat::Uyvy => 2,
            // Bytes per pixel in the Y plane; the UV plane follows it.
            PixelFormat::Mono8 | PixelFormat::Nv12 => 1,
        }
    }

    /// Whether width must be even (chroma shared by pixel pairs); NV12 needs an even height too.
    fn chroma_subsampled(self) -> bool {
        matches!(self, PixelFormat::Yuyv | PixelFormat::Uyvy | PixelFormat::Nv12)
    }

    /// The `sensor_msgs/Image` encoding string.
    pub fn encoding(self) -> &'static str {
        match self {
            PixelFormat::Rgb8 => "rgb8",
            PixelFormat::Bgr8 => "bgr8",
            PixelFormat::Rgba8 => "rgba8",
            PixelFormat::Bgra8 => "bgra8",
            PixelFormat::Mono8 => "mono8",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Uyvy => "yuv422",
            PixelFormat::Nv12 => "nv12",
        }
    }

    pub fn from_encoding(encoding: &str) -> Result<Self> {
        Ok(match encoding {
            "rgb8" => PixelFormat::Rgb8,
            "bgr8" => PixelFormat::Bgr8,
            "rgba8" => PixelFormat::Rgba8,
            "bgra8" => PixelFormat::Bgra8,
            "mono8" | "8UC1" => PixelFormat::Mono8,
            "yuyv" | "yuv422_yuy2" => PixelFormat::Yuyv,
            "yuv422" | "uyvy" => PixelFormat::Uyvy,
            "nv12" => PixelFormat::Nv12,
            other => {
                return Err(EngineError::frame(
                    "encoding",
                    other,
                    "unsupported; expected one of rgb8, bgr8, rgba8, bgra8, mono8, yuyv (yuv422_yuy2), yuv422 (uyvy), nv12",
                ));
            }
        })
    }
}

/// One image. `step` is the row length in bytes (>= width * bytes per pixel), as in ROS.
#[derive(Debug, Clone)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    pub step: usize,
    pub data: Vec<u8>,
}

/// Largest side accepted; beyond this a frame is almost certainly a corrupt header.
pub const MAX_FRAME_SIDE: u32 = 16384;

impl Frame {
    /// A tightly packed frame (step = width * bytes per pixel), validated.
    pub fn packed(width: u32, height: u32, format: PixelFormat, data: Vec<u8>) -> Result<Self> {
        let step = width as usize * format.bytes_per_pixel();
        let frame = Frame { width, height, format, step, data };
        frame.validate()?;
        Ok(frame)
    }

    pub fn from_rgb_image(image: &image::RgbImage) -> Self {
        Frame {
            width: image.width(),
            height: image.height(),
            format: PixelFormat::Rgb8,
            step: image.width() as usize * 3,
            data: image.as_raw().clone(),
        }
    }

    /// Checks sizes against the buffer; every error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.width > MAX_FRAME_SIDE {
            return Err(EngineError::frame("width", self.width, format!("must be 1..={MAX_FRAME_SIDE}")));
        }
        if self.height == 0 || self.height > MAX_FRAME_SIDE {
            return Err(EngineError::frame("height", self.height, format!("must be 1..={MAX_FRAME_SIDE}")));
        }
        let row = self.width as usize * self.format.bytes_per_pixel();
        if self.step < row {
            return Err(EngineError::frame(
                "step",
                self.step,
                format!("shorter than width * {} bytes = {row}", self.format.bytes_per_pixel()),
            ));
        }
        if self.format.chroma_subsampled() && !self.width.is_multiple_of(2) {
            return Err(EngineError::frame("width", self.width, format!("must be even for {}", self.format.encoding())));
        }
        if self.format == PixelFormat::Nv12 && !self.height.is_multiple_of(2) {
            return Err(EngineError::frame("height", self.height, "must be even for nv12"));
        }
        let rows = match self.format {
            PixelFormat::Nv12 => self.height as usize * 3 / 2,
            _ => self.height as usize,
        };
        let needed = self.step * (rows - 1) + row;
        if self.data.len() < needed {
            return Err(EngineError::frame(
                "data",
                format!("{} bytes", self.data.len()),
                format!("{}x{} {} with step {} needs {needed}", self.width, self.height, self.format.encoding(), self.step),
            ));
        }
        Ok(())
    }

    /// RGB of pixel (x, y); callers stay in bounds.
    #[inline]
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let bpp = self.format.bytes_per_pixel();
        let i = y * self.step + x * bpp;
        let p = &self.data[i..i + bpp];
        match self.format {
            PixelFormat::Rgb8 | PixelFormat::Rgba8 => [p[0], p[1], p[2]],
            PixelFormat::Bgr8 | PixelFormat::Bgra8 => [p[2], p[1], p[0]],
            PixelFormat::Mono8 => [p[0], p[0], p[0]],
            PixelFormat::Yuyv => {
                let pair = y * self.step + (x & !1) * 2;
                let d = &self.data[pair..pair + 4];
                yuv_to_rgb(d[(x & 1) * 2], d[1], d[3])
            }
            PixelFormat::Uyvy => {
                let pair = y * self.step + (x & !1) * 2;
                let d = &self.data[pair..pair + 4];
                yuv_to_rgb(d[1 + (x & 1) * 2], d[0], d[2])
            }
            PixelFormat::Nv12 => {
                let uv = (self.height as usize + y / 2) * self.step + (x & !1);
                yuv_to_rgb(p[0], self.data[uv], self.data[uv + 1])
            }
        }
    }

    /// The frame as packed RGB8 (for overlays).
    pub fn to_rgb8(&self) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                out.extend_from_slice(&self.rgb(x, y));
            }
        }
        out
    }
}

/// BT.601 video range (Y 16..235) to RGB in integer arithmetic (the usual camera convention),
/// so every implementation of this conversion can agree to the bit.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (y as i32 - 16);
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [clamp(c + 409 * e), clamp(c - 100 * d - 208 * e), clamp(c + 516 * d)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgr_and_rgba_read_as_rgb() {
        let bgr = Frame::packed(1, 1, PixelFormat::Bgr8, vec![1, 2, 3]).unwrap();
        assert_eq!(bgr.rgb(0, 0), [3, 2, 1]);
        let bgra = Frame::packed(1, 1, PixelFormat::Bgra8, vec![1, 2, 3, 4]).unwrap();
        assert_eq!(bgra.rgb(0, 0), [3, 2, 1]);
        let mono = Frame::packed(1, 1, PixelFormat::Mono8, vec![9]).unwrap();
        assert_eq!(mono.rgb(0, 0), [9, 9, 9]);
    }

    #[test]
    fn padded_rows_are_honoured() {
        // 2x2 rgb8 with 2 bytes of padding per row
        let data = vec![1, 1, 1, 2, 2, 2, 0, 0, 3, 3, 3, 4, 4, 4, 0, 0];
        let f = Frame { width: 2, height: 2, format: PixelFormat::Rgb8, step: 8, data };
        f.validate().unwrap();
        assert_eq!(f.rgb(1, 1), [4, 4, 4]);
        assert_eq!(f.to_rgb8(), vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
    }

    #[test]
    fn bad_frames_name_the_field() {
        let e = Frame::packed(4, 4, PixelFormat::Rgb8, vec![0; 10]).unwrap_err().to_string();
        assert!(e.contains("`data`") && e.contains("10 bytes") && e.contains("needs 48"), "{e}");
        let e = Frame::packed(0, 4, PixelFormat::Rgb8, vec![]).unwrap_err().to_string();
        assert!(e.contains("`width` = 0"), "{e}");
        let f = Frame { width: 4, height: 1, format: PixelFormat::Rgb8, step: 5, data: vec![0; 12] };
        assert!(f.validate().unwrap_err().to_string().contains("`step` = 5"));
        let e = PixelFormat::from_encoding("yuv444").unwrap_err().to_string();
        assert!(e.contains("`encoding` = yuv444"), "{e}");
        let e = Frame::packed(3, 2, PixelFormat::Yuyv, vec![0; 12]).unwrap_err().to_string();
        assert!(e.contains("`width` = 3") && e.contains("even"), "{e}");
        let e = Frame::packed(4, 4, PixelFormat::Nv12, vec![0; 16]).unwrap_err().to_string();
        assert!(e.contains("needs 24"), "{e}");
    }

    #[test]
    fn yuv_layouts_decode_the_same_pixels() {
        // Two pixels: white-ish and a saturated red, as BT.601 video-range YUV.
        let (white, red) = ([235u8, 128, 128], [81u8, 90, 240]);
        assert_eq!(yuv_to_rgb(white[0], white[1], white[2]), [255, 255, 255]);
        let r = yuv_to_rgb(red[0], red[1], red[2]);
        assert!(r[0] > 250 && r[1] < 5 && r[2] < 5, "{r:?}");
        // One pixel pair sharing chroma (u, v) = (128, 128): pure greys.
        let yuyv = Frame::packed(2, 1, PixelFormat::Yuyv, vec![16, 128, 235, 128]).unwrap();
        assert_eq!(yuyv.to_rgb8(), vec![0, 0, 0, 255, 255, 255]);
        let uyvy = Frame::packed(2, 1, PixelFormat::Uyvy, vec![128, 16, 128, 235]).unwrap();
        assert_eq!(uyvy.to_rgb8(), vec![0, 0, 0, 255, 255, 255]);
        // 2x2 NV12: Y plane then one UV pair for the whole 2x2 block.
        let nv12 = Frame::packed(2, 2, PixelFormat::Nv12, vec![81, 81, 81, 81, 90, 240]).unwrap();
        assert!(nv12.to_rgb8().chunks(3).all(|p| p == r));
    }
}
