//! Undistortion/rectification maps (OpenCV `initUndistortRectifyMap` semantics) and a bilinear
//! remap for packed u8 images, so the node can rectify frames without OpenCV.
use nalgebra::{Matrix3, Matrix3x4, Point3};

use crate::{CalibrationError, Camera};

/// Map value for output pixels whose source does not exist (behind the camera, beyond the
/// invertible region). Outside every image, so [`remap_gray8`]/[`remap_rgb8`] (and OpenCV's
/// `remap` with a constant border) fill those pixels.
pub const INVALID_SOURCE: f32 = -1.0;

/// For each pixel of an `out_width` x `out_height` rectified image, the pixel of the raw image
/// that it comes from: `(map_x, map_y)`, row-major.
///
/// `r` is CameraInfo's R (camera frame to rectified frame), `p` its P; P's fourth column (the
/// stereo baseline term) does not move pixels within one image and is ignored, as OpenCV does.
/// With R = I and P = [K | 0] this is plain undistortion. Errors when P·R is singular or not
/// finite.
pub fn rectify_map(
    camera: &Camera,
    r: &Matrix3<f64>,
    p: &Matrix3x4<f64>,
    out_width: u32,
    out_height: u32,
) -> Result<(Vec<f32>, Vec<f32>), CalibrationError> {
    let pr: Matrix3<f64> = p.fixed_view::<3, 3>(0, 0) * r;
    let inverse = pr
        .try_inverse()
        .filter(|m| m.iter().all(|v| v.is_finite()))
        .ok_or_else(|| CalibrationError::invalid("P[:, :3] * R", format!("{pr:?}"), "must be finite and invertible"))?;
    let n = out_width as usize * out_height as usize;
    let (mut map_x, mut map_y) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for v in 0..out_height {
        for u in 0..out_width {
            // The output pixel's ray, in the raw camera's frame: (P R)^-1 [u v 1]^T.
            let ray = inverse * nalgebra::Vector3::new(u as f64, v as f64, 1.0);
            match camera.project(&Point3::from(ray)) {
                Some(src) => {
                    map_x.push(src.x as f32);
                    map_y.push(src.y as f32);
                }
                None => {
                    map_x.push(INVALID_SOURCE);
                    map_y.push(INVALID_SOURCE);
                }
            }
        }
    }
    Ok((map_x, map_y))
}

/// Bilinear remap of a packed 8-bit gray image: `out[i] = src(map_x[i], map_y[i])`.
/// Sources outside [0, width-1] x [0, height-1] by more than 1e-5 px (or NaN) give 0.
pub fn remap_gray8(src: &[u8], width: u32, height: u32, map_x: &[f32], map_y: &[f32]) -> Result<Vec<u8>, CalibrationError> {
    remap::<1>(src, width, height, map_x, map_y)
}

/// Bilinear remap of a packed rgb8 image (3 bytes a pixel); like [`remap_gray8`] per channel.
pub fn remap_rgb8(src: &[u8], width: u32, height: u32, map_x: &[f32], map_y: &[f32]) -> Result<Vec<u8>, CalibrationError> {
    remap::<3>(src, width, height, map_x, map_y)
}

fn remap<const C: usize>(
    src: &[u8],
    width: u32,
    height: u32,
    map_x: &[f32],
    map_y: &[f32],
) -> Result<Vec<u8>, CalibrationError> {
    let (w, h) = (width as usize, height as usize);
    if src.len() != w * h * C {
        let expected = format!("{} ({width}x{height}, {C} byte(s) a pixel)", w * h * C);
        return Err(CalibrationError::Count { field: "src", got: src.len(), expected });
    }
    if map_y.len() != map_x.len() {
        return Err(CalibrationError::Count { field: "map_y", got: map_y.len(), expected: format!("{} (as map_x)", map_x.len()) });
    }
    let mut out = vec![0u8; map_x.len() * C];
    let (max_x, max_y) = (w as f32 - 1.0, h as f32 - 1.0);
    // Sources this close outside the image are its edge pixels: maps computed through K^-1
    // and K land a rounding error beyond the last column or row.
    const EDGE: f32 = 1e-5;
    for (i, (&x, &y)) in map_x.iter().zip(map_y).enumerate() {
        // `contains` is false for NaN too.
        if !((-EDGE..=max_x + EDGE).contains(&x) && (-EDGE..=max_y + EDGE).contains(&y)) {
            continue;
        }
        let (x, y) = (x.clamp(0.0, max_x), y.clamp(0.0, max_y));
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (ax, ay) = (x - x0 as f32, y - y0 as f32);
        let px = |xx: usize, yy: usize, c: usize| src[(yy * w + xx) * C + c] as f32;
        for c in 0..C {
            let top = px(x0, y0, c) * (1.0 - ax) + px(x1, y0, c) * ax;
            let bottom = px(x0, y1, c) * (1.0 - ax) + px(x1, y1, c) * ax;
            out[i * C + c] = (top * (1.0 - ay) + bottom * ay).round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}
