//! Incoming messages to engine inputs, with every rejection naming the field and its value.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engine::{Frame, PixelFormat};

use super::msgs::{CameraInfo, CompressedImage, Image};

/// Why a message was skipped. `kind` groups rejections for counting and log-once.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub kind: &'static str,
    pub message: String,
}

fn reject(kind: &'static str, message: impl Into<String>) -> Rejected {
    Rejected { kind, message: message.into() }
}

/// An image message from `topic` as a frame (its pixel buffer moves into the frame).
pub fn frame(msg: &mut Image, topic: &str) -> Result<Frame, Rejected> {
    if msg.width == 0 || msg.height == 0 {
        return Err(reject("zero_size", format!("{topic}: `width` x `height` = {}x{}; both must be > 0", msg.width, msg.height)));
    }
    let format = PixelFormat::from_encoding(&msg.encoding).map_err(|e| reject("encoding", format!("{topic}: {e}")))?;
    let frame = Frame { width: msg.width, height: msg.height, format, step: msg.step as usize, data: std::mem::take(&mut msg.data) };
    frame.validate().map_err(|e| {
        let kind = match &e {
            engine::EngineError::Frame { field: "step", .. } => "step",
            _ => "size",
        };
        reject(kind, format!("{topic}: {e}"))
    })?;
    Ok(frame)
}

/// Decodes a JPEG or PNG off the wire: sides over the engine's frame limit (16384) and anything
/// that would take over 512 MiB decoded (the image crate's default) are refused from the header,
/// before the pixels are allocated, and a decoder that panics on malformed data costs the frame,
/// not the processing thread.
fn decode_guarded(data: &[u8], format: Option<image::ImageFormat>) -> Result<image::DynamicImage, String> {
    let mut reader = match format {
        Some(format) => image::ImageReader::with_format(std::io::Cursor::new(data), format),
        None => image::ImageReader::new(std::io::Cursor::new(data)).with_guessed_format().map_err(|e| e.to_string())?,
    };
    if reader.format().is_none() {
        return Err("neither JPEG nor PNG".into());
    }
    let mut limits = image::Limits::default();
    (limits.max_image_width, limits.max_image_height) = (Some(engine::frame::MAX_FRAME_SIDE), Some(engine::frame::MAX_FRAME_SIDE));
    reader.limits(limits);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode())) {
        // The JPEG decoder ends its text with a line break.
        Ok(decoded) => decoded.map_err(|e| e.to_string().trim_end().to_string()),
        Err(_) => Err("the decoder failed on this data (it panicked)".into()),
    }
}

/// Encodings (before the `;` of `format`) whose compressed frames are not colour or gray
/// pictures: the raw path refuses them too.
fn not_a_picture(encoding: &str) -> bool {
    encoding.starts_with("bayer_") || encoding.ends_with("16") || matches!(encoding, "16UC1" | "32FC1" | "16SC1")
}

/// A compressed frame (JPEG or PNG, as image_transport's `compressed` transport sends it) from
/// `topic` as an rgb8 image, or mono8 where the file is gray, with the message's header.
pub fn decompress(msg: CompressedImage, topic: &str) -> Result<Image, Rejected> {
    let fail = |e: &dyn std::fmt::Display| reject("compressed", format!("{topic}: `format` '{}', {} bytes of `data`: {e}", msg.format, msg.data.len()));
    let encoding = msg.format.split(';').next().unwrap_or("").trim();
    if not_a_picture(encoding) {
        return Err(fail(&format!("'{encoding}' frames are not colour or gray pictures (bayer: debayer before compressing, e.g. with image_proc)")));
    }
    let decoded = decode_guarded(&msg.data, None).map_err(|e| fail(&e))?;
    let (width, height) = (decoded.width(), decoded.height());
    let (encoding, channels, data) = match decoded.color().channel_count() {
        1 | 2 => ("mono8", 1, decoded.into_luma8().into_raw()),
        _ => ("rgb8", 3, decoded.into_rgb8().into_raw()),
    };
    Ok(Image { header: msg.header, height, width, encoding: encoding.into(), is_bigendian: 0, step: width * channels, data })
}

/// Bytes before the PNG in a compressedDepth message: the format (i32) and two f32
/// quantization parameters (for 32FC1: depth = a / (stored - b)).
const DEPTH_HEADER_BYTES: usize = 12;

/// A depth image as compressed_depth_image_transport sends it (`format` "16UC1; compressedDepth
/// png" or "32FC1; compressedDepth png": a 12-byte header, then a 16-bit gray PNG holding
/// millimetres, or for 32FC1 quantized inverse depth with 0 for none) as a 16UC1 or 32FC1 image.
pub fn decompress_depth(msg: CompressedImage, topic: &str) -> Result<Image, Rejected> {
    let fail = |e: &dyn std::fmt::Display| reject("compressed_depth", format!("{topic}: `format` '{}', {} bytes of `data`: {e}", msg.format, msg.data.len()));
    let mut parts = msg.format.split(';').map(str::trim);
    let (encoding, scheme) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if scheme.contains("rvl") {
        return Err(fail(&"RVL is not supported; set the publisher's compressedDepth format to png"));
    }
    if msg.data.len() < DEPTH_HEADER_BYTES {
        return Err(fail(&format!("shorter than the {DEPTH_HEADER_BYTES}-byte compressedDepth header")));
    }
    let param = |at: usize| f32::from_le_bytes([msg.data[at], msg.data[at + 1], msg.data[at + 2], msg.data[at + 3]]);
    let (a, b) = (param(4), param(8));
    let image::DynamicImage::ImageLuma16(stored) = decode_guarded(&msg.data[DEPTH_HEADER_BYTES..], Some(image::ImageFormat::Png)).map_err(|e| fail(&e))? else {
        return Err(fail(&"the PNG is not 16-bit gray"));
    };
    let (width, height) = stored.dimensions();
    let (step, data) = match encoding {
        "16UC1" | "mono16" => (2 * width, stored.into_raw().iter().flat_map(|v| v.to_le_bytes()).collect()),
        "32FC1" => {
            if !(a.is_finite() && b.is_finite() && a != 0.0) {
                return Err(fail(&format!("quantization parameters {a}, {b} in the header are not usable")));
            }
            let metres = |v: u16| if v == 0 { f32::NAN } else { a / (v as f32 - b) };
            (4 * width, stored.into_raw().into_iter().flat_map(|v| metres(v).to_le_bytes()).collect())
        }
        other => return Err(fail(&format!("depth encoding '{other}' (before ';'): expected 16UC1 or 32FC1"))),
    };
    let encoding = if encoding == "32FC1" { "32FC1" } else { "16UC1" };
    Ok(Image { header: msg.header, height, width, encoding: encoding.into(), is_bigendian: 0, step, data })
}

/// Whether `info` (as published, see [`super::outputs::as_published`]) describes a
/// `width` x `height` image from `topic`.
pub fn check_info_size(info: &CameraInfo, info_topic: &str, topic: &str, width: u32, height: u32) -> Result<(), Rejected> {
    if (info.width, info.height) == (width, height) {
        return Ok(());
    }
    Err(reject(
        "size_mismatch",
        format!("{topic}: {width}x{height} but {info_topic} `width` x `height` = {}x{} (after binning and region of interest)", info.width, info.height),
    ))
}

/// Reads one depth sample (raw bytes, big-endian?) as metres.
type ReadDepth = fn([u8; 4], bool) -> f32;

/// A registered depth image in metres (NaN where there is no measurement), resampled by
/// nearest neighbour to `width` x `height` if it has another size.
pub fn depth_metres(msg: &Image, topic: &str, width: u32, height: u32) -> Result<Vec<f32>, Rejected> {
    let (w, h) = (msg.width as usize, msg.height as usize);
    if w == 0 || h == 0 {
        return Err(reject("depth_zero_size", format!("{topic}: `width` x `height` = {w}x{h}")));
    }
    let (bytes, read): (usize, ReadDepth) = match msg.encoding.as_str() {
        "16UC1" | "mono16" => (2, |b, be| {
            let mm = if be { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) };
            if mm == 0 { f32::NAN } else { mm as f32 / 1000.0 }
        }),
        "32FC1" => (4, |b, be| {
            let m = if be { f32::from_be_bytes(b) } else { f32::from_le_bytes(b) };
            if m.is_finite() && m > 0.0 { m } else { f32::NAN }
        }),
        other => {
            return Err(reject(
                "depth_encoding",
                format!("{topic}: `encoding` = {other:?}; expected 16UC1 (millimetres) or 32FC1 (metres)"),
            ));
        }
    };
    // Another resolution of the same view is resampled; another shape cannot be registered.
    if (w * height as usize).abs_diff(h * width as usize) * 100 > w * height as usize {
        return Err(reject(
            "depth_size",
            format!("{topic}: {w}x{h} has another aspect ratio than the {width}x{height} image it is registered to"),
        ));
    }
    let step = msg.step as usize;
    if step < w * bytes {
        return Err(reject("depth_step", format!("{topic}: `step` = {step}, shorter than width * {bytes} = {}", w * bytes)));
    }
    if msg.data.len() < step * (h - 1) + w * bytes {
        return Err(reject(
            "depth_size",
            format!("{topic}: `data` is {} bytes; {w}x{h} with step {step} needs {}", msg.data.len(), step * (h - 1) + w * bytes),
        ));
    }
    let big_endian = msg.is_bigendian != 0;
    let (ow, oh) = (width as usize, height as usize);
    let mut out = Vec::with_capacity(ow * oh);
    for y in 0..oh {
        let sy = y * h / oh;
        for x in 0..ow {
            let sx = x * w / ow;
            let i = sy * step + sx * bytes;
            let mut b = [0u8; 4];
            b[..bytes].copy_from_slice(&msg.data[i..i + bytes]);
            out.push(read(b, big_endian));
        }
    }
    Ok(out)
}

/// How often a kind of problem that goes on is logged again.
const RELOG_EVERY: Duration = Duration::from_secs(30);

/// Counts problems per kind and says when one is to be logged: the first time its kind is seen,
/// then at most every [`RELOG_EVERY`] while it goes on, with the count since.
#[derive(Debug, Default, Clone)]
pub struct RejectCounter {
    counts: BTreeMap<&'static str, u64>,
    logged: BTreeMap<&'static str, (Instant, u64)>,
    /// The latest problem's message, for /diagnostics.
    last: Option<String>,
}

impl RejectCounter {
    /// Counts `r`; `Some(n)` when it should be logged, with `n` problems of its kind since it last
    /// was (0 the first time).
    pub fn count(&mut self, r: &Rejected) -> Option<u64> {
        self.count_at(r, Instant::now())
    }

    fn count_at(&mut self, r: &Rejected, now: Instant) -> Option<u64> {
        let n = self.counts.entry(r.kind).or_insert(0);
        *n += 1;
        let total = *n;
        self.last = Some(r.message.clone());
        match self.logged.get_mut(r.kind) {
            None => {
                self.logged.insert(r.kind, (now, total));
                Some(0)
            }
            Some((at, seen)) if now.duration_since(*at) >= RELOG_EVERY => {
                let since = total - 1 - *seen;
                (*at, *seen) = (now, total);
                Some(since)
            }
            Some(_) => None,
        }
    }

    pub fn by_kind(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    pub fn last(&self) -> Option<&str> {
        self.last.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed(img: image::DynamicImage, format: image::ImageFormat) -> CompressedImage {
        let mut data = std::io::Cursor::new(Vec::new());
        img.write_to(&mut data, format).unwrap();
        let header = super::super::msgs::Header { frame_id: "cam".into(), ..Default::default() };
        CompressedImage { header, format: "rgb8; png compressed rgb8".into(), data: data.into_inner() }
    }

    #[test]
    fn compressed_frames_decode_to_rgb8_or_mono8_and_bad_ones_are_named() {
        let rgb = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let back = decompress(compressed(rgb.clone().into(), image::ImageFormat::Png), "image/compressed").unwrap();
        assert_eq!((back.width, back.height, back.encoding.as_str(), back.step), (5, 3, "rgb8", 15));
        assert_eq!(back.data, rgb.into_raw(), "PNG is lossless");
        assert_eq!(back.header.frame_id, "cam");
        // Colour order: a red JPEG stays red.
        let red = image::RgbImage::from_pixel(16, 16, image::Rgb([230, 10, 10]));
        let back = decompress(compressed(red.into(), image::ImageFormat::Jpeg), "image/compressed").unwrap();
        assert!(back.data.chunks(3).all(|p| p[0] > 200 && p[1] < 50 && p[2] < 50), "{:?}", &back.data[..3]);
        let gray = image::GrayImage::from_fn(16, 8, |x, _| image::Luma([x as u8 * 16]));
        let back = decompress(compressed(gray.into(), image::ImageFormat::Jpeg), "image/compressed").unwrap();
        assert_eq!((back.encoding.as_str(), back.step, back.data.len()), ("mono8", 16, 128));

        let mut bad = compressed(image::GrayImage::new(4, 4).into(), image::ImageFormat::Png);
        bad.data.truncate(20);
        let e = decompress(bad, "image/compressed").unwrap_err();
        assert!(e.kind == "compressed" && e.message.contains("image/compressed: `format` 'rgb8; png compressed rgb8', 20 bytes"), "{e:?}");
        let e = decompress(CompressedImage { format: "jpeg".into(), data: b"not an image".to_vec(), ..Default::default() }, "image/compressed").unwrap_err();
        assert!(e.message.contains("neither JPEG nor PNG"), "{e:?}");
        // Refused from its header, before the pixels are decoded.
        let wide = compressed(image::GrayImage::new(engine::frame::MAX_FRAME_SIDE + 1, 1).into(), image::ImageFormat::Png);
        let e = decompress(wide, "image/compressed").unwrap_err();
        assert!(e.message.contains("limit") && !e.message.ends_with('\n'), "{e:?}");
        let mosaic = CompressedImage { format: "bayer_rggb8; jpeg compressed ".into(), ..compressed(image::GrayImage::new(4, 4).into(), image::ImageFormat::Jpeg) };
        let e = decompress(mosaic, "image/compressed").unwrap_err();
        assert!(e.message.contains("'bayer_rggb8' frames are not colour"), "{e:?}");
    }

    /// A compressedDepth message as compressed_depth_image_transport writes it.
    fn compressed_depth(format: &str, params: [f32; 2], stored: image::ImageBuffer<image::Luma<u16>, Vec<u16>>) -> CompressedImage {
        let mut data = 0i32.to_le_bytes().to_vec();
        data.extend(params.iter().flat_map(|p| p.to_le_bytes()));
        let mut png = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageLuma16(stored).write_to(&mut png, image::ImageFormat::Png).unwrap();
        data.extend(png.into_inner());
        CompressedImage { format: format.into(), data, ..Default::default() }
    }

    #[test]
    fn compressed_depth_decodes_millimetres_and_inverse_depth() {
        let mm = image::ImageBuffer::from_fn(4, 2, |x, y| image::Luma([if x == 0 { 0 } else { 1000 + 10 * x as u16 + y as u16 }]));
        let back = decompress_depth(compressed_depth("16UC1; compressedDepth png", [0.0; 2], mm.clone()), "depth_registered/compressedDepth").unwrap();
        assert_eq!((back.encoding.as_str(), back.width, back.height, back.step), ("16UC1", 4, 2, 8));
        let values: Vec<u16> = back.data.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(values, mm.into_raw());
        // 32FC1 as the publisher quantizes it by default (z0 = 100, 10 m): a = z0 (z0 + 1), b = 1 - a / 10.
        let (a, b) = (100.0f32 * 101.0, 1.0 - 100.0 * 101.0 / 10.0);
        // Stored: a / depth + b, so 1 m is 9091 and 10 m is 1 (0 is kept for no depth).
        let inverse = image::ImageBuffer::from_fn(3, 1, |x, _| image::Luma([[0u16, 9091, 1][x as usize]]));
        let back = decompress_depth(compressed_depth("32FC1; compressedDepth png", [a, b], inverse), "d").unwrap();
        let metres: Vec<f32> = back.data.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!((back.encoding.as_str(), back.step), ("32FC1", 12));
        assert!(metres[0].is_nan(), "0 stands for no depth");
        assert_eq!(metres[1..], [1.0, 10.0]);

        let e = decompress_depth(CompressedImage { format: "16UC1; compressedDepth rvl".into(), data: vec![0; 40], ..Default::default() }, "d").unwrap_err();
        assert!(e.kind == "compressed_depth" && e.message.contains("RVL"), "{e:?}");
        let e = decompress_depth(CompressedImage { format: "16UC1; compressedDepth png".into(), data: vec![0; 5], ..Default::default() }, "d").unwrap_err();
        assert!(e.message.contains("'16UC1; compressedDepth png', 5 bytes") && e.message.contains("12-byte"), "{e:?}");
        let e = decompress_depth(compressed_depth("bgr8; compressedDepth png", [0.0; 2], image::ImageBuffer::new(2, 2)), "d").unwrap_err();
        assert!(e.message.contains("depth encoding 'bgr8'"), "{e:?}");
    }

    fn image(w: u32, h: u32, encoding: &str, step: u32, len: usize) -> Image {
        Image { height: h, width: w, encoding: encoding.into(), step, data: vec![7; len], ..Default::default() }
    }

    #[test]
    fn good_frames_decode_and_bad_ones_name_field_and_value() {
        assert!(frame(&mut image(4, 2, "rgb8", 12, 24), "image").is_ok());
        let r = frame(&mut image(4, 2, "rgb8", 10, 24), "image").unwrap_err();
        assert_eq!(r.kind, "step");
        assert!(r.message.contains("`step` = 10"), "{}", r.message);
        let r = frame(&mut image(4, 2, "rgb8", 12, 20), "image").unwrap_err();
        assert_eq!(r.kind, "size");
        assert!(r.message.contains("20 bytes"), "{}", r.message);
        let r = frame(&mut image(4, 2, "bayer_rggb8", 4, 8), "right/image").unwrap_err();
        assert_eq!(r.kind, "encoding");
        assert!(r.message.starts_with("right/image: ") && r.message.contains("bayer_rggb8"), "{}", r.message);
        let r = frame(&mut image(0, 2, "rgb8", 0, 0), "image").unwrap_err();
        assert_eq!(r.kind, "zero_size");
        assert!(frame(&mut image(4, 2, "nv12", 4, 12), "image").is_ok());
        let info = CameraInfo { width: 640, height: 480, ..Default::default() };
        assert!(check_info_size(&info, "camera_info", "image", 640, 480).is_ok());
        let r = check_info_size(&info, "camera_info", "image", 4, 2).unwrap_err();
        assert_eq!(r.kind, "size_mismatch");
        assert!(r.message.contains("image: 4x2 but camera_info `width` x `height` = 640x480"), "{}", r.message);
    }

    #[test]
    fn depth_converts_units_marks_holes_and_resamples() {
        let mut mm = image(2, 1, "16UC1", 4, 4);
        mm.data = [1500u16.to_le_bytes(), 0u16.to_le_bytes()].concat();
        let d = depth_metres(&mm, "depth_registered", 2, 1).unwrap();
        assert_eq!(d[0], 1.5);
        assert!(d[1].is_nan());
        let mut m = image(1, 1, "32FC1", 4, 4);
        m.data = 2.25f32.to_le_bytes().to_vec();
        assert_eq!(depth_metres(&m, "depth_registered", 2, 2).unwrap(), vec![2.25; 4]);
        let r = depth_metres(&image(1, 2, "32FC1", 4, 8), "depth_registered", 2, 2).unwrap_err();
        assert!(r.kind == "depth_size" && r.message.contains("1x2 has another aspect ratio than the 2x2 image"), "{}", r.message);
        let r = depth_metres(&image(1, 1, "rgb8", 3, 3), "depth/image", 1, 1).unwrap_err();
        assert!(r.message.contains("\"rgb8\""), "{}", r.message);
    }

    #[test]
    fn each_kind_is_logged_once_then_again_after_a_while_with_the_count_since() {
        let mut c = RejectCounter::default();
        let t0 = Instant::now();
        let r = reject("step", "x");
        assert_eq!(c.count_at(&r, t0), Some(0));
        assert_eq!(c.count_at(&r, t0 + Duration::from_secs(1)), None);
        assert_eq!(c.count_at(&reject("size", "y"), t0), Some(0));
        assert_eq!(c.count_at(&r, t0 + Duration::from_secs(2)), None);
        assert_eq!(c.count_at(&r, t0 + RELOG_EVERY), Some(2));
        assert_eq!(c.count_at(&r, t0 + RELOG_EVERY + Duration::from_secs(1)), None);
        assert_eq!(c.by_kind().values().sum::<u64>(), 6);
        assert_eq!(c.by_kind()["step"], 5);
        assert_eq!(c.last(), Some("x"));
    }
}
