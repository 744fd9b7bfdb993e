//! The ideal pinhole model that `sensor_msgs/CameraInfo` describes with its K matrix: what the
//! node uses for depth back-projection, and the linear part of every distorted [`crate::Camera`].
use nalgebra::{Point2, Point3, Unit, Vector3};

use crate::CalibrationError;

/// Ideal pinhole camera (ROS optical frame: x right, y down, z forward).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PinholeCamera {
    pub fx: f64,
    pub fy: f64,
    pub cx: f64,
    pub cy: f64,
    pub width: u32,
    pub height: u32,
}

impl PinholeCamera {
    pub fn new(fx: f64, fy: f64, cx: f64, cy: f64, width: u32, height: u32) -> Result<Self, CalibrationError> {
        let bad = |field, value: f64, reason| Err(CalibrationError::Invalid { field, value: value.to_string(), reason });
        if !(fx.is_finite() && fx > 0.0) {
            return bad("fx", fx, "focal length must be finite and > 0");
        }
        if !(fy.is_finite() && fy > 0.0) {
            return bad("fy", fy, "focal length must be finite and > 0");
        }
        if !cx.is_finite() {
            return bad("cx", cx, "principal point must be finite");
        }
        if !cy.is_finite() {
            return bad("cy", cy, "principal point must be finite");
        }
        if width == 0 || height == 0 {
            return Err(CalibrationError::Invalid {
                field: "width/height",
                value: format!("{width}x{height}"),
                reason: "image size must be positive",
            });
        }
        Ok(PinholeCamera { fx, fy, cx, cy, width, height })
    }

    /// From the row-major 3x3 `K` of `sensor_msgs/CameraInfo`.
    pub fn from_k(k: &[f64; 9], width: u32, height: u32) -> Result<Self, CalibrationError> {
        if k[1] != 0.0 || k[3] != 0.0 || k[6] != 0.0 || k[7] != 0.0 || k[8] != 1.0 {
            return Err(CalibrationError::Invalid {
                field: "K",
                value: format!("{k:?}"),
                reason: "expected [fx 0 cx; 0 fy cy; 0 0 1]",
            });
        }
        Self::new(k[0], k[4], k[2], k[5], width, height)
    }

    /// Pixel of a point in the camera frame; None behind the camera.
    pub fn project(&self, p: &Point3<f64>) -> Option<Point2<f64>> {
        (p.z > 0.0).then(|| Point2::new(self.fx * p.x / p.z + self.cx, self.fy * p.y / p.z + self.cy))
    }

    /// Unit viewing ray through a pixel.
    pub fn unproject(&self, px: &Point2<f64>) -> Unit<Vector3<f64>> {
        Unit::new_normalize(Vector3::new((px.x - self.cx) / self.fx, (px.y - self.cy) / self.fy, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_unproject_round_trip_over_the_image() {
        let cam = PinholeCamera::new(525.0, 520.0, 319.5, 239.5, 640, 480).unwrap();
        for y in (0..480).step_by(37) {
            for x in (0..640).step_by(41) {
                let px = Point2::new(x as f64 + 0.25, y as f64 + 0.75);
                let ray = cam.unproject(&px);
                let back = cam.project(&Point3::from(ray.into_inner() * 7.5)).unwrap();
                assert!((back - px).norm() < 1e-9, "{px} -> {back}");
            }
        }
        assert!(cam.project(&Point3::new(0.0, 0.0, -1.0)).is_none());
    }

    #[test]
    fn bad_intrinsics_name_the_field() {
        let e = PinholeCamera::new(0.0, 1.0, 0.0, 0.0, 1, 1).unwrap_err().to_string();
        assert!(e.contains("`fx` = 0"), "{e}");
        let e = PinholeCamera::new(1.0, -2.0, 0.0, 0.0, 1, 1).unwrap_err().to_string();
        assert!(e.contains("`fy` = -2"), "{e}");
        let e = PinholeCamera::new(1.0, 1.0, f64::NAN, 0.0, 1, 1).unwrap_err().to_string();
        assert!(e.contains("`cx`"), "{e}");
        let e = PinholeCamera::from_k(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], 4, 4).unwrap_err().to_string();
        assert!(e.contains("`K`"), "{e}");
        let cam = PinholeCamera::from_k(&[500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0], 640, 480).unwrap();
        assert_eq!((cam.fx, cam.cy), (500.0, 240.0));
    }
}
