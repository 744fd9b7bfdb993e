//! Frame -> network input: colour conversion, anti-aliased resize, normalisation, layout.
//!
//! The resampler is written here rather than taken from a crate so that a GPU kernel can
//! reproduce its weights exactly (a triangle filter widened by the scale factor when shrinking).
use crate::frame::Frame;
use crate::manifest::{ColorOrder, ImageInputSpec, Layout, ResizeMode};

/// Where the frame's content sits inside the network input (letterbox leaves borders).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContentRect {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

#[derive(Debug, Clone)]
pub struct NetInput {
    pub width: usize,
    pub height: usize,
    pub layout: Layout,
    /// `1 x 3 x H x W` or `1 x H x W x 3`, normalised.
    pub data: Vec<f32>,
    pub content: ContentRect,
}

/// Network input size and content placement for a frame of `w x h`.
pub fn plan(w: u32, h: u32, spec: &ImageInputSpec) -> (usize, usize, ContentRect) {
    let (w, h) = (w as f32, h as f32);
    match spec.size {
        Some([nw, nh]) => {
            let (nw, nh) = (nw as f32, nh as f32);
            match spec.resize {
                ResizeMode::Stretch => (nw as usize, nh as usize, ContentRect { x: 0.0, y: 0.0, width: nw, height: nh }),
                ResizeMode::Letterbox => {
                    let s = (nw / w).min(nh / h);
                    let (cw, ch) = ((w * s).round().max(1.0), (h * s).round().max(1.0));
                    let (x, y) = (((nw - cw) / 2.0).floor(), ((nh - ch) / 2.0).floor());
                    (nw as usize, nh as usize, ContentRect { x, y, width: cw, height: ch })
                }
            }
        }
        None => {
            let s = (spec.max_side as f32 / w.max(h)).min(1.0);
            let m = spec.size_multiple as f32;
            let (nw, nh) = (((w * s) / m).round().max(1.0) * m, ((h * s) / m).round().max(1.0) * m);
            (nw as usize, nh as usize, ContentRect { x: 0.0, y: 0.0, width: nw, height: nh })
        }
    }
}

/// Resampling taps for one output axis: for each output index, the first source index and weights.
pub(crate) struct Taps {
    pub(crate) start: Vec<usize>,
    pub(crate) weights: Vec<Vec<f32>>,
}

pub(crate) fn taps(src: usize, dst: usize) -> Taps {
    let scale = src as f32 / dst as f32;
    let support = scale.max(1.0);
    let mut start = Vec::with_capacity(dst);
    let mut weights = Vec::with_capacity(dst);
    for o in 0..dst {
        let centre = (o as f32 + 0.5) * scale;
        let lo = ((centre - support).floor().max(0.0)) as usize;
        let hi = ((centre + support).ceil() as usize).min(src);
        let mut w: Vec<f32> = (lo..hi)
            .map(|i| (1.0 - ((i as f32 + 0.5 - centre) / support).abs()).max(0.0))
            .collect();
        let sum: f32 = w.iter().sum();
        if sum > 0.0 {
            w.iter_mut().for_each(|x| *x /= sum);
        } else {
            // Degenerate (1-pixel source): take the nearest pixel.
            w = vec![1.0];
        }
        start.push(lo.min(src - 1));
        weights.push(w);
    }
    Taps { start, weights }
}

/// Source RGB channel of each network input channel.
pub(crate) fn channel_order(color: ColorOrder) -> [usize; 3] {
    match color {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    }
}

/// Converts, resizes and normalises a validated frame for the image encoder.
pub fn preprocess(frame: &Frame, spec: &ImageInputSpec) -> NetInput {
    let (nw, nh, content) = plan(frame.width, frame.height, spec);
    let (cw, ch) = (content.width as usize, content.height as usize);
    let (fw, fh) = (frame.width as usize, frame.height as usize);

    // Horizontal pass into f32 RGB rows, then vertical pass; separable filtering.
    let tx = taps(fw, cw);
    let mut rows = vec![0.0f32; fh * cw * 3];
    for y in 0..fh {
        for (ox, (&s, w)) in tx.start.iter().zip(&tx.weights).enumerate() {
            let mut acc = [0.0f32; 3];
            for (j, wj) in w.iter().enumerate() {
                let p = frame.rgb(s + j, y);
                for c in 0..3 {
                    acc[c] += wj * p[c] as f32;
                }
            }
            rows[(y * cw + ox) * 3..(y * cw + ox) * 3 + 3].copy_from_slice(&acc);
        }
    }
    let ty = taps(fh, ch);
    let order = channel_order(spec.color);
    let mut data = vec![0.0f32; 3 * nw * nh]; // 0 is the mean colour after normalisation
    let (x0, y0) = (content.x as usize, content.y as usize);
    for (oy, (&s, w)) in ty.start.iter().zip(&ty.weights).enumerate() {
        for ox in 0..cw {
            let mut acc = [0.0f32; 3];
            for (j, wj) in w.iter().enumerate() {
                let r = &rows[((s + j) * cw + ox) * 3..((s + j) * cw + ox) * 3 + 3];
                for c in 0..3 {
                    acc[c] += wj * r[c];
                }
            }
            let (px, py) = (x0 + ox, y0 + oy);
            for (dst_c, &src_c) in order.iter().enumerate() {
                let v = (acc[src_c] - spec.mean[dst_c]) / spec.std[dst_c];
                let at = match spec.layout {
                    Layout::Nchw => dst_c * nw * nh + py * nw + px,
                    Layout::Nhwc => (py * nw + px) * 3 + dst_c,
                };
                data[at] = v;
            }
        }
    }
    NetInput { width: nw, height: nh, layout: spec.layout, data, content }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::PixelFormat;

    fn spec(size: Option<[u32; 2]>, resize: ResizeMode) -> ImageInputSpec {
        ImageInputSpec {
            name: "image".into(),
            layout: Layout::Nchw,
            color: ColorOrder::Rgb,
            mean: [127.5; 3],
            std: [127.5; 3],
            resize,
            size,
            max_side: 64,
            size_multiple: 1,
        }
    }

    #[test]
    fn constant_image_stays_constant_and_normalised() {
        let f = Frame::packed(100, 50, PixelFormat::Bgr8, [255u8, 0, 0].repeat(5000)).unwrap();
        let n = preprocess(&f, &spec(None, ResizeMode::Stretch));
        assert_eq!((n.width, n.height), (64, 32));
        let plane = n.width * n.height;
        // bgr8 blue -> RGB (0, 0, 255) -> (-1, -1, 1)
        assert!(n.data[..plane].iter().all(|v| (v + 1.0).abs() < 1e-5));
        assert!(n.data[2 * plane..].iter().all(|v| (v - 1.0).abs() < 1e-5));
    }

    #[test]
    fn small_frames_are_not_upscaled() {
        let (w, h, _) = plan(40, 30, &spec(None, ResizeMode::Stretch));
        assert_eq!((w, h), (40, 30));
    }

    #[test]
    fn dynamic_sizes_round_to_the_multiple() {
        let mut s = spec(None, ResizeMode::Stretch);
        s.max_side = 512;
        s.size_multiple = 32;
        assert_eq!((plan(640, 480, &s).0, plan(640, 480, &s).1), (512, 384));
        assert_eq!((plan(320, 240, &s).0, plan(320, 240, &s).1), (320, 256));
        assert_eq!((plan(10, 10, &s).0, plan(10, 10, &s).1), (32, 32));
    }

    #[test]
    fn letterbox_centres_content_and_pads_with_mean() {
        let f = Frame::packed(20, 10, PixelFormat::Mono8, vec![255; 200]).unwrap();
        let n = preprocess(&f, &spec(Some([32, 32]), ResizeMode::Letterbox));
        assert_eq!(n.content, ContentRect { x: 0.0, y: 8.0, width: 32.0, height: 16.0 });
        assert_eq!(n.data[0], 0.0); // border row
        assert!((n.data[8 * 32] - 1.0).abs() < 1e-5); // first content row
    }

    #[test]
    fn downscale_averages_instead_of_aliasing() {
        // A 1-pixel checkerboard shrunk 4x must come out mid-grey, not black or white.
        let data: Vec<u8> = (0..64 * 64).map(|i| if (i % 64 + i / 64) % 2 == 0 { 255 } else { 0 }).collect();
        let f = Frame::packed(64, 64, PixelFormat::Mono8, data).unwrap();
        let mut s = spec(Some([16, 16]), ResizeMode::Stretch);
        s.mean = [0.0; 3];
        s.std = [1.0; 3];
        let n = preprocess(&f, &s);
        assert!(n.data.iter().all(|v| (v - 127.5).abs() < 20.0), "{:?}", &n.data[..8]);
    }

    #[test]
    fn nhwc_layout_interleaves() {
        let f = Frame::packed(2, 1, PixelFormat::Rgb8, vec![255, 0, 0, 255, 0, 0]).unwrap();
        let mut s = spec(None, ResizeMode::Stretch);
        s.layout = Layout::Nhwc;
        let n = preprocess(&f, &s);
        assert_eq!(n.data.len(), 6);
        assert!((n.data[0] - 1.0).abs() < 1e-5 && (n.data[1] + 1.0).abs() < 1e-5);
    }
}
