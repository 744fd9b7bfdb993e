//! What turns the disparity of a rectified stereo pair into depth, from the two rectified
//! projections P (camera_info's `p`, camera_info YAML's `projection_matrix`).
use crate::CalibrationError;

/// `Z = focal_baseline / (d + doffs)` for disparity `d` in pixels of the left image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StereoGeometry {
    /// Rectified focal length (pixels) times baseline (metres).
    pub focal_baseline: f64,
    /// cx(right) - cx(left) of the rectified projections.
    pub doffs: f64,
}

/// How the caller's inputs name the two entries that can be wrong.
pub struct StereoFields {
    pub left_fx: &'static str,
    pub right_tx: &'static str,
}

impl StereoGeometry {
    /// From the left and right P (row-major 3x4). The right camera's P[0][3] is
    /// -fx * baseline; errors name the entry by `fields`.
    pub fn from_projections(left: &[f64; 12], right: &[f64; 12], fields: &StereoFields) -> Result<Self, CalibrationError> {
        let fx = left[0];
        if !(fx.is_finite() && fx > 0.0) {
            return Err(CalibrationError::invalid(fields.left_fx, fx, "the rectified focal length must be > 0"));
        }
        let baseline = -right[3] / right[0];
        if !(baseline.is_finite() && baseline > 0.0) {
            return Err(CalibrationError::invalid(fields.right_tx, right[3], "a right camera's P[0][3] is -fx * baseline, so it must be < 0"));
        }
        Ok(StereoGeometry { focal_baseline: fx * baseline, doffs: right[2] - left[2] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: StereoFields = StereoFields { left_fx: "left fx", right_tx: "right tx" };

    fn p(f: f64, cx: f64, tx: f64) -> [f64; 12] {
        [f, 0.0, cx, tx, 0.0, f, 100.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    }

    #[test]
    fn baseline_and_principal_point_offset_come_from_the_right_p() {
        let g = StereoGeometry::from_projections(&p(500.0, 320.0, 0.0), &p(500.0, 330.0, -60.0), &FIELDS).unwrap();
        assert!((g.focal_baseline - 60.0).abs() < 1e-12);
        assert_eq!(g.doffs, 10.0);
    }

    #[test]
    fn a_left_camera_as_right_or_a_zero_focal_length_is_refused_by_name() {
        let e = StereoGeometry::from_projections(&p(500.0, 320.0, 0.0), &p(500.0, 320.0, 0.0), &FIELDS).unwrap_err();
        assert!(e.to_string().contains("right tx"), "{e}");
        let e = StereoGeometry::from_projections(&p(0.0, 320.0, 0.0), &p(500.0, 320.0, -60.0), &FIELDS).unwrap_err();
        assert!(e.to_string().contains("left fx"), "{e}");
    }
}
