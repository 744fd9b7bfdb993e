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

/// How the caller's inputs name the two entries that can be wrong. The other entries checked
/// (fx, fy and cy shared by both cameras) are named by their index in P, `P[5] (fy)`, with the
/// caller's context saying which files or topics the two P come from.
pub struct StereoFields {
    pub left_fx: &'static str,
    pub right_tx: &'static str,
}

/// Largest baseline accepted, in metres. Rigs are centimetres to a metre or two apart; a
/// baseline in millimetres (P[0][3] = -fx * 120 for a 12 cm rig) lands far above this.
pub const MAX_BASELINE_M: f64 = 10.0;

/// How far the entries both rectified projections share may differ: 1e-3 px, or 1e-6 of the
/// value for large ones (calibration files print P with a handful of decimals).
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3_f64.max(1e-6 * a.abs().max(b.abs()))
}

impl StereoGeometry {
    /// From the left and right P (row-major 3x4). The right camera's P[0][3] is
    /// -fx * baseline (metres, 0 < baseline <= [`MAX_BASELINE_M`]); both P of a rectified pair
    /// share fx, fy and cy (cx may differ: that is `doffs`). Errors name the entry by `fields`.
    pub fn from_projections(left: &[f64; 12], right: &[f64; 12], fields: &StereoFields) -> Result<Self, CalibrationError> {
        let fx = left[0];
        if !(fx.is_finite() && fx > 0.0) {
            return Err(CalibrationError::invalid(fields.left_fx, fx, "the rectified focal length must be > 0"));
        }
        let fy = left[5];
        if !(fy.is_finite() && fy > 0.0) {
            return Err(CalibrationError::invalid("left P[5] (fy)", fy, "the rectified focal length must be > 0"));
        }
        for (index, name, what) in [(0, "P[0] (fx)", "fx"), (5, "P[5] (fy)", "fy"), (6, "P[6] (cy)", "cy")] {
            let (l, r) = (left[index], right[index]);
            if !(l.is_finite() && r.is_finite() && same(l, r)) {
                return Err(CalibrationError::Degenerate {
                    what: name,
                    reason: format!("left {l} and right {r} differ: the two projections of a rectified pair share {what} (not a rectified pair, or the files of two different calibrations)"),
                });
            }
        }
        for (cx, name) in [(left[2], "left P[2] (cx)"), (right[2], "right P[2] (cx)")] {
            if !cx.is_finite() {
                return Err(CalibrationError::invalid(name, cx, "the principal point must be finite"));
            }
        }
        let baseline = -right[3] / right[0];
        if !(baseline.is_finite() && baseline > 0.0) {
            return Err(CalibrationError::invalid(fields.right_tx, right[3], "a right camera's P[0][3] is -fx * baseline, so it must be < 0"));
        }
        if baseline > MAX_BASELINE_M {
            return Err(CalibrationError::invalid(
                fields.right_tx,
                right[3],
                "the baseline -P[0][3] / fx is more than 10 m; P[0][3] must be -fx * baseline in metres (millimetres?)",
            ));
        }
        Ok(StereoGeometry { focal_baseline: fx * baseline, doffs: right[2] - left[2] })
    }

    /// Refuses a principal-point offset (cx right - cx left) of a whole image width or more:
    /// every disparity would then give a depth on the wrong side of the camera or none.
    pub fn check_width(&self, width: u32) -> Result<(), CalibrationError> {
        if self.doffs.abs() >= f64::from(width) {
            return Err(CalibrationError::Degenerate {
                what: "P[2] (cx)",
                reason: format!("right cx - left cx = {} is at least the image width {width}: not a rectified pair of this size", self.doffs),
            });
        }
        Ok(())
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
        g.check_width(640).unwrap();
    }

    #[test]
    fn a_left_camera_as_right_or_a_zero_focal_length_is_refused_by_name() {
        let e = StereoGeometry::from_projections(&p(500.0, 320.0, 0.0), &p(500.0, 320.0, 0.0), &FIELDS).unwrap_err();
        assert!(e.to_string().contains("right tx"), "{e}");
        let e = StereoGeometry::from_projections(&p(0.0, 320.0, 0.0), &p(500.0, 320.0, -60.0), &FIELDS).unwrap_err();
        assert!(e.to_string().contains("left fx"), "{e}");
    }

    #[test]
    fn projections_that_do_not_share_fx_fy_cy_are_refused_naming_the_entry() {
        let (left, right) = (p(500.0, 320.0, 0.0), p(500.0, 330.0, -60.0));
        // Printed with a few decimals: equal within 1e-3 px is the same.
        let mut r = right;
        r[0] += 4e-4;
        r[5] += 4e-4;
        StereoGeometry::from_projections(&left, &r, &FIELDS).unwrap();
        for (index, name) in [(0, "P[0] (fx)"), (5, "P[5] (fy)"), (6, "P[6] (cy)")] {
            let mut r = right;
            r[index] += 2.0;
            let e = StereoGeometry::from_projections(&left, &r, &FIELDS).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(&format!("{}", right[index] + 2.0)), "{e}");
        }
        let mut l = left;
        l[5] = -500.0;
        let e = StereoGeometry::from_projections(&l, &right, &FIELDS).unwrap_err().to_string();
        assert!(e.contains("left P[5] (fy)") && e.contains("-500"), "{e}");
        let mut r = right;
        r[6] = f64::NAN;
        assert!(StereoGeometry::from_projections(&left, &r, &FIELDS).is_err());
        let mut r = right;
        r[2] = f64::INFINITY;
        let e = StereoGeometry::from_projections(&left, &r, &FIELDS).unwrap_err().to_string();
        assert!(e.contains("right P[2] (cx)"), "{e}");
    }

    #[test]
    fn absurd_baselines_and_principal_point_offsets_are_refused() {
        // 12 cm written as millimetres: baseline 120 "m".
        let e = StereoGeometry::from_projections(&p(500.0, 320.0, 0.0), &p(500.0, 320.0, -500.0 * 120.0), &FIELDS).unwrap_err().to_string();
        assert!(e.contains("right tx") && e.contains("-60000") && e.contains("10 m"), "{e}");
        let e = StereoGeometry::from_projections(&p(500.0, 320.0, 0.0), &p(500.0, 320.0, f64::NEG_INFINITY), &FIELDS).unwrap_err().to_string();
        assert!(e.contains("right tx"), "{e}");
        StereoGeometry::from_projections(&p(500.0, 320.0, 0.0), &p(500.0, 320.0, -500.0 * 9.9), &FIELDS).unwrap();
        let g = StereoGeometry::from_projections(&p(500.0, 320.0, 0.0), &p(500.0, 1000.0, -60.0), &FIELDS).unwrap();
        let e = g.check_width(640).unwrap_err().to_string();
        assert!(e.contains("680") && e.contains("640"), "{e}");
        g.check_width(700).unwrap();
    }
}
