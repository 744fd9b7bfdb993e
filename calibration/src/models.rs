//! Lens distortion under the ROS `sensor_msgs/CameraInfo` `distortion_model` names, with OpenCV's
//! formulas (plumb_bob and rational_polynomial: `cv::projectPoints`; equidistant: `cv::fisheye`),
//! so calibrations from `camera_calibration`/OpenCV/Kalibr mean here what they mean there.
//!
//! All functions work on normalized image coordinates (x/z, y/z before distortion, the same after
//! distortion and before K). Inversion is iterative; the models are only invertible up to the
//! radius where the distortion polynomial folds back on itself (strong barrel lenses, fisheye
//! models beyond their calibrated field), so [`Distortion::valid_limit`] finds that radius once
//! and the inverses refuse anything beyond it instead of returning a folded, wrong point.
use nalgebra::{Matrix2, Point2, Vector2, Vector3};

use crate::CalibrationError;

/// The accepted `distortion_model` values, for error messages.
pub const ACCEPTED_MODELS: &str =
    "\"plumb_bob\" (5 coefficients), \"rational_polynomial\" (8), \"equidistant\" (4), \"\" or \"none\" (no distortion)";

/// A lens distortion model; coefficient names and order are those of the ROS `D` vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distortion {
    /// Ideal pinhole.
    None,
    /// ROS `plumb_bob`: OpenCV radial-tangential with 3 radial terms; D = [k1, k2, p1, p2, k3].
    PlumbBob { k1: f64, k2: f64, p1: f64, p2: f64, k3: f64 },
    /// ROS `rational_polynomial`: OpenCV `CALIB_RATIONAL_MODEL`; D = [k1, k2, p1, p2, k3, k4, k5, k6].
    RationalPolynomial { k1: f64, k2: f64, p1: f64, p2: f64, k3: f64, k4: f64, k5: f64, k6: f64 },
    /// ROS `equidistant`: OpenCV fisheye (Kannala-Brandt); D = [k1, k2, k3, k4].
    Equidistant { k1: f64, k2: f64, k3: f64, k4: f64 },
}

/// Radial-tangential coefficients in one shape: plumb_bob is rational_polynomial with k4..k6 = 0.
#[derive(Debug, Clone, Copy)]
struct RadTan {
    k: [f64; 6],
    p1: f64,
    p2: f64,
}

enum Kind {
    None,
    RadTan(RadTan),
    Fisheye([f64; 4]),
}

/// Samples per scan when looking for the fold of a model (then refined by bisection).
const SCAN_STEPS: usize = 4096;

impl Distortion {
    /// From a ROS `distortion_model` and `D`. An empty `D` means "no distortion" for every model,
    /// as image_geometry reads it (uncalibrated drivers publish that).
    pub fn from_ros(model: &str, d: &[f64]) -> Result<Self, CalibrationError> {
        Self::from_ros_fields(model, d, "distortion_model", "d")
    }

    pub(crate) fn from_ros_fields(
        model: &str,
        d: &[f64],
        model_field: &'static str,
        d_field: &'static str,
    ) -> Result<Self, CalibrationError> {
        let expected = match model {
            "" | "none" => 0,
            "plumb_bob" => 5,
            "rational_polynomial" => 8,
            "equidistant" => 4,
            _ => {
                return Err(CalibrationError::UnknownModel {
                    field: model_field,
                    value: model.to_string(),
                    accepted: ACCEPTED_MODELS,
                });
            }
        };
        if let Some((i, v)) = d.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CalibrationError::invalid(d_field, format!("{v} at index {i}"), "coefficients must be finite"));
        }
        Ok(match (expected, d) {
            (_, []) => Distortion::None,
            (0, d) if d.iter().all(|&v| v == 0.0) => Distortion::None,
            (5, &[k1, k2, p1, p2, k3]) => Distortion::PlumbBob { k1, k2, p1, p2, k3 },
            (8, &[k1, k2, p1, p2, k3, k4, k5, k6]) => Distortion::RationalPolynomial { k1, k2, p1, p2, k3, k4, k5, k6 },
            (4, &[k1, k2, k3, k4]) => Distortion::Equidistant { k1, k2, k3, k4 },
            _ => {
                let expected = if expected == 0 {
                    format!("0 (or all zero) for distortion_model {model:?}")
                } else {
                    format!("{expected} for distortion_model {model:?} (or 0 for none)")
                };
                return Err(CalibrationError::Count { field: d_field, got: d.len(), expected });
            }
        })
    }

    /// The ROS `distortion_model` name (`"none"` for [`Distortion::None`], which ROS has no name for).
    pub fn name(&self) -> &'static str {
        match self {
            Distortion::None => "none",
            Distortion::PlumbBob { .. } => "plumb_bob",
            Distortion::RationalPolynomial { .. } => "rational_polynomial",
            Distortion::Equidistant { .. } => "equidistant",
        }
    }

    /// The ROS `D` vector (empty for [`Distortion::None`]).
    pub fn coefficients(&self) -> Vec<f64> {
        match *self {
            Distortion::None => Vec::new(),
            Distortion::PlumbBob { k1, k2, p1, p2, k3 } => vec![k1, k2, p1, p2, k3],
            Distortion::RationalPolynomial { k1, k2, p1, p2, k3, k4, k5, k6 } => vec![k1, k2, p1, p2, k3, k4, k5, k6],
            Distortion::Equidistant { k1, k2, k3, k4 } => vec![k1, k2, k3, k4],
        }
    }

    /// `(distortion_model, D)` for a CameraInfo message or file. No distortion is written as
    /// plumb_bob with five zeros, the form every ROS consumer understands.
    pub fn to_ros(&self) -> (&'static str, Vec<f64>) {
        match self {
            Distortion::None => ("plumb_bob", vec![0.0; 5]),
            d => (d.name(), d.coefficients()),
        }
    }

    fn kind(&self) -> Kind {
        match *self {
            Distortion::None => Kind::None,
            Distortion::PlumbBob { k1, k2, p1, p2, k3 } => Kind::RadTan(RadTan { k: [k1, k2, k3, 0.0, 0.0, 0.0], p1, p2 }),
            Distortion::RationalPolynomial { k1, k2, p1, p2, k3, k4, k5, k6 } => {
                Kind::RadTan(RadTan { k: [k1, k2, k3, k4, k5, k6], p1, p2 })
            }
            Distortion::Equidistant { k1, k2, k3, k4 } => Kind::Fisheye([k1, k2, k3, k4]),
        }
    }

    /// Distorts a normalized point (x/z, y/z) with the model's formula, without any validity check
    /// (beyond the fold it returns the folded value, as OpenCV does).
    pub fn distort(&self, p: &Point2<f64>) -> Point2<f64> {
        let v = Vector2::new(p.x, p.y);
        Point2::from(match self.kind() {
            Kind::None => v,
            Kind::RadTan(rt) => rt.distort(&v),
            Kind::Fisheye(k) => {
                let r = v.norm();
                if r == 0.0 { v } else { v * (fisheye_theta_d(&k, r.atan()).0 / r) }
            }
        })
    }

    /// Where the model stops being invertible: for radial-tangential models the undistorted radius
    /// r = |(x/z, y/z)| where r·R(r²) stops increasing (at most tan(89.98°)); for equidistant the
    /// incidence angle θ where θd(θ) stops increasing (at most π); infinite for no distortion.
    pub fn valid_limit(&self) -> f64 {
        match self.kind() {
            Kind::None => f64::INFINITY,
            Kind::RadTan(rt) => {
                // Scan in angle so the whole front hemisphere is covered with even resolution.
                let step = std::f64::consts::FRAC_PI_2 / SCAN_STEPS as f64;
                first_failure((1..SCAN_STEPS).map(|i| (i as f64 * step).tan()), |r| rt.radial_ok(r))
            }
            Kind::Fisheye(k) => {
                let step = std::f64::consts::PI / SCAN_STEPS as f64;
                first_failure((1..=SCAN_STEPS).map(|i| i as f64 * step), |t| fisheye_theta_d(&k, t).1 > 0.0)
            }
        }
    }

    /// Normalized distorted point of a direction in the camera frame; None outside the valid
    /// region (`limit` from [`Self::valid_limit`]) or behind a non-fisheye camera.
    pub(crate) fn project_direction(&self, v: &Vector3<f64>, limit: f64) -> Option<Point2<f64>> {
        if !(v.x.is_finite() && v.y.is_finite() && v.z.is_finite()) {
            return None;
        }
        match self.kind() {
            Kind::None | Kind::RadTan(_) => {
                if v.z <= 0.0 {
                    return None;
                }
                let n = Point2::new(v.x / v.z, v.y / v.z);
                (n.coords.norm() <= limit).then(|| self.distort(&n))
            }
            Kind::Fisheye(k) => {
                let rho = v.x.hypot(v.y);
                if rho == 0.0 {
                    return (v.z > 0.0).then(Point2::origin);
                }
                let theta = rho.atan2(v.z);
                (theta < limit).then(|| Point2::from(v.xy() * (fisheye_theta_d(&k, theta).0 / rho)))
            }
        }
    }

    /// Viewing direction (not normalized) of a normalized distorted point; None where the inverse
    /// does not exist or does not converge.
    pub(crate) fn unproject_direction(&self, p: &Point2<f64>, limit: f64) -> Option<Vector3<f64>> {
        if !(p.x.is_finite() && p.y.is_finite()) {
            return None;
        }
        match self.kind() {
            Kind::None => Some(Vector3::new(p.x, p.y, 1.0)),
            Kind::RadTan(rt) => rt.undistort(&p.coords, limit).map(|u| Vector3::new(u.x, u.y, 1.0)),
            Kind::Fisheye(k) => {
                let rho_d = p.coords.norm();
                let theta = fisheye_theta(&k, rho_d, limit)?;
                if rho_d == 0.0 {
                    return Some(Vector3::z());
                }
                let s = theta.sin() / rho_d;
                Some(Vector3::new(p.x * s, p.y * s, theta.cos()))
            }
        }
    }

    /// Inverse of [`Self::distort`] within the valid region; None beyond it, for fisheye points at or
    /// beyond 90° (they have no x/z, y/z), or when the iteration does not converge.
    pub(crate) fn undistort(&self, p: &Point2<f64>, limit: f64) -> Option<Point2<f64>> {
        let v = self.unproject_direction(p, limit)?;
        (v.z > 0.0).then(|| Point2::new(v.x / v.z, v.y / v.z)).filter(|u| u.x.is_finite() && u.y.is_finite())
    }
}

impl RadTan {
    /// R(s) = (1 + k1 s + k2 s² + k3 s³) / (1 + k4 s + k5 s² + k6 s³) with s = r², and dR/ds.
    fn radial(&self, s: f64) -> (f64, f64) {
        let k = &self.k;
        let num = 1.0 + s * (k[0] + s * (k[1] + s * k[2]));
        let dnum = k[0] + s * (2.0 * k[1] + s * 3.0 * k[2]);
        let den = 1.0 + s * (k[3] + s * (k[4] + s * k[5]));
        let dden = k[3] + s * (2.0 * k[4] + s * 3.0 * k[5]);
        (num / den, (dnum * den - num * dden) / (den * den))
    }

    /// Invertible at radius r: the denominator has not crossed zero and r·R(r²) still increases.
    fn radial_ok(&self, r: f64) -> bool {
        let s = r * r;
        let k = &self.k;
        let den = 1.0 + s * (k[3] + s * (k[4] + s * k[5]));
        let (rad, drad) = self.radial(s);
        den > 0.0 && rad + 2.0 * s * drad > 0.0
    }

    /// OpenCV: xd = x R + 2 p1 x y + p2 (r² + 2x²), yd = y R + p1 (r² + 2y²) + 2 p2 x y.
    fn distort(&self, v: &Vector2<f64>) -> Vector2<f64> {
        let (x, y) = (v.x, v.y);
        let r2 = x * x + y * y;
        let (rad, _) = self.radial(r2);
        Vector2::new(
            x * rad + 2.0 * self.p1 * x * y + self.p2 * (r2 + 2.0 * x * x),
            y * rad + self.p1 * (r2 + 2.0 * y * y) + 2.0 * self.p2 * x * y,
        )
    }

    /// d(xd, yd)/d(x, y), for Newton.
    fn jacobian(&self, v: &Vector2<f64>) -> Matrix2<f64> {
        let (x, y) = (v.x, v.y);
        let (rad, drad) = self.radial(x * x + y * y);
        let (p1, p2) = (self.p1, self.p2);
        let cross = 2.0 * x * y * drad + 2.0 * p1 * x + 2.0 * p2 * y;
        Matrix2::new(
            rad + 2.0 * x * x * drad + 2.0 * p1 * y + 6.0 * p2 * x,
            cross,
            cross,
            rad + 2.0 * y * y * drad + 6.0 * p1 * y + 2.0 * p2 * x,
        )
    }

    /// Newton on the full 2-D model, started from the radial-only solution on the first branch
    /// (which a 1-D bracketed solve finds reliably), so it cannot wander onto a folded branch.
    fn undistort(&self, target: &Vector2<f64>, limit: f64) -> Option<Vector2<f64>> {
        let rd = target.norm();
        let g = |r: f64| {
            let (rad, drad) = self.radial(r * r);
            (r * rad, rad + 2.0 * r * r * drad)
        };
        let r0 = if g(limit).0 <= rd { limit } else { solve_increasing(g, rd, 0.0, limit, rd.min(limit))? };
        let mut x = if rd > 0.0 { target * (r0 / rd) } else { *target };
        let tol = 1e-14 * rd.max(1.0);
        let mut err = (self.distort(&x) - target).norm();
        for _ in 0..60 {
            if err <= tol {
                return (x.norm() <= limit * (1.0 + 1e-12)).then_some(x);
            }
            let step = self.jacobian(&x).lu().solve(&(self.distort(&x) - target))?;
            // Backtracking keeps every accepted step a decrease in the residual.
            let mut t = 1.0;
            loop {
                let next = x - step * t;
                let next_err = (self.distort(&next) - target).norm();
                if next_err < err {
                    (x, err) = (next, next_err);
                    break;
                }
                t *= 0.5;
                if t < 1e-10 {
                    return None;
                }
            }
        }
        None
    }
}

/// θd = θ (1 + k1 θ² + k2 θ⁴ + k3 θ⁶ + k4 θ⁸) and dθd/dθ (OpenCV fisheye).
fn fisheye_theta_d(k: &[f64; 4], theta: f64) -> (f64, f64) {
    let t2 = theta * theta;
    let poly = 1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3])));
    let dpoly = 1.0 + t2 * (3.0 * k[0] + t2 * (5.0 * k[1] + t2 * (7.0 * k[2] + t2 * 9.0 * k[3])));
    (theta * poly, dpoly)
}

/// Incidence angle θ < `limit` with θd(θ) = `theta_d`; None beyond the image circle.
fn fisheye_theta(k: &[f64; 4], theta_d: f64, limit: f64) -> Option<f64> {
    if theta_d == 0.0 {
        return Some(0.0);
    }
    if fisheye_theta_d(k, limit).0 <= theta_d {
        return None;
    }
    let theta = solve_increasing(|t| fisheye_theta_d(k, t), theta_d, 0.0, limit, theta_d.min(limit))?;
    (theta < limit).then_some(theta)
}

/// Solves f(x) = target for x in [lo, hi] where f is increasing and f(lo) <= target <= f(hi):
/// Newton steps, bisection whenever a step would leave the bracket. `f` returns (value, slope).
/// None when it does not converge in 200 steps.
fn solve_increasing(f: impl Fn(f64) -> (f64, f64), target: f64, mut lo: f64, mut hi: f64, x0: f64) -> Option<f64> {
    let tol = 1e-15 * target.abs().max(1.0);
    let mut x = x0.clamp(lo, hi);
    for _ in 0..200 {
        let (fx, slope) = f(x);
        let e = fx - target;
        if e.abs() <= tol {
            return Some(x);
        }
        if e < 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        if hi - lo <= 4.0 * f64::EPSILON * hi.abs() {
            return Some(0.5 * (lo + hi));
        }
        let newton = x - e / slope;
        x = if slope > 0.0 && newton > lo && newton < hi { newton } else { 0.5 * (lo + hi) };
    }
    None
}

/// The last value where `ok` holds before it first fails, scanning `samples` (increasing, from 0)
/// and refining the failing interval by bisection; the last sample if it never fails.
fn first_failure(samples: impl Iterator<Item = f64>, ok: impl Fn(f64) -> bool) -> f64 {
    let mut prev = 0.0;
    for s in samples {
        if !ok(s) {
            let (mut good, mut bad) = (prev, s);
            for _ in 0..100 {
                let mid = 0.5 * (good + bad);
                if ok(mid) {
                    good = mid;
                } else {
                    bad = mid;
                }
            }
            return good;
        }
        prev = s;
    }
    prev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solver_finds_roots_and_brackets() {
        let cube = |x: f64| (x * x * x, 3.0 * x * x);
        let r = solve_increasing(cube, 8.0, 0.0, 10.0, 0.0).unwrap();
        assert!((r - 2.0).abs() < 1e-14, "{r}");
        let r = solve_increasing(cube, 0.0, 0.0, 10.0, 5.0).unwrap();
        assert!(r.abs() < 1e-5, "{r}");
    }

    #[test]
    fn fold_of_a_strong_barrel_is_found() {
        // r (1 - 0.5 r²): derivative 1 - 1.5 r² vanishes at r = sqrt(2/3).
        let rt = RadTan { k: [-0.5, 0.0, 0.0, 0.0, 0.0, 0.0], p1: 0.0, p2: 0.0 };
        let step = std::f64::consts::FRAC_PI_2 / SCAN_STEPS as f64;
        let limit = first_failure((1..SCAN_STEPS).map(|i| (i as f64 * step).tan()), |r| rt.radial_ok(r));
        assert!((limit - (2.0f64 / 3.0).sqrt()).abs() < 1e-12, "{limit}");
    }
}
