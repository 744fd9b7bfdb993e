//! A calibrated camera: pinhole intrinsics plus a [`Distortion`] model, built from what a
//! `sensor_msgs/CameraInfo` carries, with projection and back-projection that refuse points
//! outside the region where the model can be inverted.
use nalgebra::{Matrix3, Point2, Point3, Unit, Vector3};

use crate::{CalibrationError, Distortion, PinholeCamera};

/// Focal lengths and principal point in pixels (the K matrix without skew).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intrinsics {
    pub fx: f64,
    pub fy: f64,
    pub cx: f64,
    pub cy: f64,
}

impl Intrinsics {
    /// Row-major [fx 0 cx; 0 fy cy; 0 0 1].
    pub fn k(&self) -> Matrix3<f64> {
        Matrix3::new(self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0)
    }
}

/// A camera with distortion (ROS optical frame: x right, y down, z forward).
///
/// Fields are private so that every `Camera` has been validated and carries the limit of its
/// model's invertible region, computed once here rather than on every projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera {
    intrinsics: Intrinsics,
    distortion: Distortion,
    width: u32,
    height: u32,
    /// [`Distortion::valid_limit`] of `distortion`.
    limit: f64,
}

/// Field names for error messages, so the same validation reads right for a CameraInfo message
/// and for a camera_info YAML file.
pub(crate) struct FieldNames {
    pub model: &'static str,
    pub d: &'static str,
    pub k: &'static str,
    pub fx: &'static str,
    pub fy: &'static str,
    pub cx: &'static str,
    pub cy: &'static str,
    pub width: &'static str,
    pub height: &'static str,
}

const PLAIN: FieldNames = FieldNames {
    model: "distortion",
    d: "distortion",
    k: "K",
    fx: "fx",
    fy: "fy",
    cx: "cx",
    cy: "cy",
    width: "width",
    height: "height",
};

const MESSAGE: FieldNames = FieldNames {
    model: "distortion_model",
    d: "d",
    k: "k",
    fx: "k[0] (fx)",
    fy: "k[4] (fy)",
    cx: "k[2] (cx)",
    cy: "k[5] (cy)",
    width: "width",
    height: "height",
};

impl Camera {
    /// Validates intrinsics (finite, focal lengths > 0), coefficients (finite) and size (> 0).
    pub fn new(intrinsics: Intrinsics, distortion: Distortion, width: u32, height: u32) -> Result<Self, CalibrationError> {
        Self::validated(intrinsics, distortion, width, height, &PLAIN)
    }

    /// From the fields of a `sensor_msgs/CameraInfo` (`k` row-major, zero skew); errors name the
    /// message field (`k[0] (fx)`, `d`, `distortion_model`, ...) and the value.
    pub fn from_camera_info(
        distortion_model: &str,
        d: &[f64],
        k: &[f64; 9],
        width: u32,
        height: u32,
    ) -> Result<Self, CalibrationError> {
        Self::from_parts(distortion_model, d, k, width, height, &MESSAGE)
    }

    pub(crate) fn from_parts(
        distortion_model: &str,
        d: &[f64],
        k: &[f64; 9],
        width: u32,
        height: u32,
        names: &FieldNames,
    ) -> Result<Self, CalibrationError> {
        let distortion = Distortion::from_ros_fields(distortion_model, d, names.model, names.d)?;
        if k[1] != 0.0 || k[3] != 0.0 || k[6] != 0.0 || k[7] != 0.0 || k[8] != 1.0 {
            return Err(CalibrationError::invalid(names.k, format!("{k:?}"), "expected [fx 0 cx; 0 fy cy; 0 0 1]"));
        }
        let intrinsics = Intrinsics { fx: k[0], fy: k[4], cx: k[2], cy: k[5] };
        Self::validated(intrinsics, distortion, width, height, names)
    }

    fn validated(
        intrinsics: Intrinsics,
        distortion: Distortion,
        width: u32,
        height: u32,
        names: &FieldNames,
    ) -> Result<Self, CalibrationError> {
        let Intrinsics { fx, fy, cx, cy } = intrinsics;
        for (field, v) in [(names.fx, fx), (names.fy, fy)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(CalibrationError::invalid(field, v, "focal length must be finite and > 0"));
            }
        }
        for (field, v) in [(names.cx, cx), (names.cy, cy)] {
            if !v.is_finite() {
                return Err(CalibrationError::invalid(field, v, "principal point must be finite"));
            }
        }
        for (field, v) in [(names.width, width), (names.height, height)] {
            if v == 0 {
                return Err(CalibrationError::invalid(field, v, "image size must be positive"));
            }
        }
        if let Some(v) = distortion.coefficients().iter().find(|v| !v.is_finite()) {
            return Err(CalibrationError::invalid(names.d, v, "coefficients must be finite"));
        }
        Ok(Camera { intrinsics, distortion, width, height, limit: distortion.valid_limit() })
    }

    pub fn intrinsics(&self) -> Intrinsics {
        self.intrinsics
    }

    pub fn distortion(&self) -> Distortion {
        self.distortion
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// The camera matrix K.
    pub fn k(&self) -> Matrix3<f64> {
        self.intrinsics.k()
    }

    /// The same intrinsics without distortion (what the node's depth back-projection uses).
    pub fn pinhole(&self) -> PinholeCamera {
        let Intrinsics { fx, fy, cx, cy } = self.intrinsics;
        PinholeCamera { fx, fy, cx, cy, width: self.width, height: self.height }
    }

    /// Largest angle from the optical axis (radians) that [`Self::project`] accepts: π/2 at most
    /// for pinhole and radial-tangential models, up to π for equidistant (fisheye lenses see
    /// beyond 180°), less where the model folds back on itself.
    pub fn max_incidence_angle(&self) -> f64 {
        match self.distortion {
            Distortion::Equidistant { .. } => self.limit,
            _ => self.limit.atan(),
        }
    }

    /// Normalized (x/z, y/z) to distorted normalized coordinates, the model's formula as is.
    pub fn distort(&self, normalized: &Point2<f64>) -> Point2<f64> {
        self.distortion.distort(normalized)
    }

    /// Distorted normalized to undistorted normalized coordinates, iteratively; None outside the
    /// invertible region, where the iteration does not converge, or (equidistant) at or beyond 90°.
    pub fn undistort(&self, distorted: &Point2<f64>) -> Option<Point2<f64>> {
        self.distortion.undistort(distorted, self.limit)
    }

    /// Pixel of a point in the camera frame; None behind the camera (beyond
    /// [`Self::max_incidence_angle`]) or at the origin. The pixel may lie outside the image.
    pub fn project(&self, p: &Point3<f64>) -> Option<Point2<f64>> {
        let n = self.distortion.project_direction(&p.coords, self.limit)?;
        let Intrinsics { fx, fy, cx, cy } = self.intrinsics;
        Some(Point2::new(fx * n.x + cx, fy * n.y + cy))
    }

    /// Unit viewing ray through a pixel; None outside the invertible region (e.g. beyond a
    /// fisheye's image circle).
    pub fn unproject(&self, px: &Point2<f64>) -> Option<Unit<Vector3<f64>>> {
        let Intrinsics { fx, fy, cx, cy } = self.intrinsics;
        let n = Point2::new((px.x - cx) / fx, (px.y - cy) / fy);
        self.distortion.unproject_direction(&n, self.limit).map(Unit::new_normalize)
    }
}

impl From<PinholeCamera> for Camera {
    fn from(p: PinholeCamera) -> Self {
        let intrinsics = Intrinsics { fx: p.fx, fy: p.fy, cx: p.cx, cy: p.cy };
        Camera { intrinsics, distortion: Distortion::None, width: p.width, height: p.height, limit: f64::INFINITY }
    }
}
