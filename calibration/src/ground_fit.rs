//! The ground plane fitted to measured depth (RGB-D or stereo) of pixels labelled as ground, and
//! depth holes on the ground filled from it: textureless road defeats stereo and far ground
//! outruns a depth camera, yet the plane still says where the ground is.
use nalgebra::Point3;

use crate::{CalibrationError, GroundPlane, PixelRays};

/// A fitted plane and how well the depth agreed with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthGroundFit {
    pub plane: GroundPlane,
    /// Points within the tolerance of the plane, of `points` used.
    pub inliers: usize,
    pub points: usize,
}

/// Points used per fit: RANSAC's cost grows with them, the plane's accuracy hardly does past this.
pub const MAX_FIT_POINTS: usize = 4000;
/// Fewer ground points than this give no trustworthy plane.
pub const MIN_FIT_POINTS: usize = 50;
const ITERATIONS: usize = 200;
const WHAT: &str = "ground fit";

/// Fits the ground to the z-depth `metres` (row-major, NaN = none) of the pixels where
/// `on_ground` is true, seen along `rays` (pixel centres). Refuses fewer than
/// [`MIN_FIT_POINTS`] points and planes that fewer than half of them lie within `tolerance`
/// metres of (the "ground" is then not flat, or not ground).
pub fn fit_ground_to_depth(rays: &PixelRays, metres: &[f32], on_ground: &[bool], tolerance: f64) -> Result<DepthGroundFit, CalibrationError> {
    let (w, h) = rays.size();
    for (field, len) in [("depth", metres.len()), ("on_ground", on_ground.len())] {
        if len != w * h {
            return Err(CalibrationError::Count { field, got: len, expected: format!("{w} x {h} = {}", w * h) });
        }
    }
    let measured: Vec<usize> = (0..metres.len()).filter(|&i| on_ground[i] && metres[i].is_finite() && metres[i] > 0.0).collect();
    let points: Vec<Point3<f64>> = measured
        .iter()
        .step_by(measured.len().div_ceil(MAX_FIT_POINTS).max(1))
        .filter_map(|&i| rays.at(i % w, i / w).map(|ray| Point3::from(ray * metres[i] as f64)))
        .collect();
    if points.len() < MIN_FIT_POINTS {
        let reason = format!("{} ground pixels with depth, at least {MIN_FIT_POINTS} needed", points.len());
        return Err(CalibrationError::Degenerate { what: WHAT, reason });
    }
    let plane = GroundPlane::fit_ransac(&points, ITERATIONS, tolerance, 0)?;
    let inliers = points.iter().filter(|p| plane.signed_distance(p).abs() <= tolerance).count();
    if inliers * 2 < points.len() {
        let reason = format!("only {inliers} of {} ground points lie within {tolerance} m of one plane", points.len());
        return Err(CalibrationError::Degenerate { what: WHAT, reason });
    }
    Ok(DepthGroundFit { plane, inliers, points: points.len() })
}

/// Gives ground pixels without depth (NaN) the z-depth where their ray meets `plane`; returns
/// how many were filled. Pixels whose ray misses the plane (above the horizon) stay NaN.
pub fn fill_from_plane(rays: &PixelRays, metres: &mut [f32], on_ground: &[bool], plane: &GroundPlane) -> usize {
    let w = rays.size().0;
    let mut filled = 0;
    for (i, m) in metres.iter_mut().enumerate() {
        if m.is_nan()
            && on_ground.get(i).copied().unwrap_or(false)
            && let Some(z) = rays.at(i % w, i / w).and_then(|ray| plane.ray_intersection(&ray))
        {
            *m = z as f32;
            filled += 1;
        }
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Camera, PinholeCamera};

    fn rays() -> PixelRays {
        PixelRays::centres(&Camera::from(PinholeCamera::new(200.0, 200.0, 79.5, 59.5, 160, 120).unwrap()))
    }

    /// Depth of `plane` along every ray (NaN above the horizon).
    fn rendered(rays: &PixelRays, plane: &GroundPlane) -> Vec<f32> {
        let (w, h) = rays.size();
        (0..w * h).map(|i| rays.at(i % w, i / w).and_then(|r| plane.ray_intersection(&r)).map_or(f32::NAN, |z| z as f32)).collect()
    }

    #[test]
    fn the_mounting_comes_back_and_holes_get_the_plane_depth() {
        let rays = rays();
        let truth = GroundPlane::from_extrinsics(0.9, 0.4, 0.05).unwrap();
        let full = rendered(&rays, &truth);
        let mut depth = full.clone();
        // Holes in the lower half; the top rows are not ground (a wall at 3 m, off the plane).
        let on_ground: Vec<bool> = (0..depth.len()).map(|i| i / 160 >= 20).collect();
        for (i, d) in depth.iter_mut().enumerate() {
            if i / 160 < 20 {
                *d = 3.0;
            } else if i % 9 == 0 {
                *d = f32::NAN;
            }
        }
        let fit = fit_ground_to_depth(&rays, &depth, &on_ground, 0.01).unwrap();
        let [h, pitch, roll] = fit.plane.mounting();
        assert!((h - 0.9).abs() < 1e-4 && (pitch - 0.4).abs() < 1e-4 && (roll - 0.05).abs() < 1e-4, "{h} {pitch} {roll}");
        assert_eq!(fit.inliers, fit.points);
        let filled = fill_from_plane(&rays, &mut depth, &on_ground, &fit.plane);
        assert!(filled > 1500, "{filled}");
        for i in (0..depth.len()).filter(|i| i / 160 >= 20 && i % 9 == 0) {
            assert!(((depth[i] - full[i]) / full[i]).abs() < 1e-4, "pixel {i}: {} vs {}", depth[i], full[i]);
        }
        assert_eq!(depth[9 * 3], 3.0, "a non-ground pixel is left alone");
    }

    #[test]
    fn too_few_points_or_no_plane_are_refused_with_the_reason() {
        let rays = rays();
        let depth = rendered(&rays, &GroundPlane::from_extrinsics(0.9, 0.4, 0.0).unwrap());
        let few: Vec<bool> = (0..depth.len()).map(|i| i < 30).collect();
        let e = fit_ground_to_depth(&rays, &depth, &few, 0.01).unwrap_err().to_string();
        assert!(e.contains("at least 50"), "{e}");
        // A terraced "ground": three parallel surfaces, a third of the points on each.
        let bumpy: Vec<f32> = depth.iter().enumerate().map(|(i, d)| d * [0.6, 0.8, 1.0][(i / 7) % 3]).collect();
        let e = fit_ground_to_depth(&rays, &bumpy, &vec![true; depth.len()], 0.01).unwrap_err().to_string();
        assert!(e.contains("within 0.01 m of one plane"), "{e}");
        let e = fit_ground_to_depth(&rays, &depth[1..], &vec![true; depth.len()], 0.01).unwrap_err().to_string();
        assert!(e.contains("depth") && e.contains("160 x 120"), "{e}");
    }
}
