//! Rigid transforms between sensor frames (e.g. a depth camera's optical frame to the colour
//! camera's, or a camera to `base_link`): from parameters (x y z roll pitch yaw, as URDF and
//! tf2 write them), a quaternion, a 4x4 matrix, or a small YAML file; anything that is not a
//! proper rotation is refused by field name instead of silently bending the geometry.
use std::path::Path;

use nalgebra::{Isometry3, Matrix3, Point3, Quaternion, Rotation3, Translation3, UnitQuaternion, Vector3};
use serde::Deserialize;

use crate::CalibrationError;

/// The pose of a source frame in a target frame: maps points given in the source frame to the
/// target frame (`target_p = rotation * source_p + translation`), as a tf2 lookup of
/// `target <- source` does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extrinsics {
    pub isometry: Isometry3<f64>,
}

/// How far `RᵀR` may be from the identity, and `det R` from 1, for a matrix to count as a rotation
/// (written files carry about 1e-9 of rounding; a scaled or sheared matrix is far off).
const ROTATION_TOLERANCE: f64 = 1e-6;

/// What YAML errors call these files: camera poses and sensor extrinsics alike.
const KIND: &str = "pose";

impl Extrinsics {
    pub fn identity() -> Self {
        Extrinsics { isometry: Isometry3::identity() }
    }

    /// From a translation (metres) and fixed-axis roll, pitch, yaw (radians): `R = Rz(yaw)
    /// Ry(pitch) Rx(roll)`, the convention of URDF `rpy` and tf2's `setRPY`.
    pub fn from_xyz_rpy(xyz: [f64; 3], rpy: [f64; 3]) -> Result<Self, CalibrationError> {
        check_finite("translation", &xyz)?;
        check_finite("rotation_rpy", &rpy)?;
        let rotation = UnitQuaternion::from_euler_angles(rpy[0], rpy[1], rpy[2]);
        Ok(Extrinsics { isometry: Isometry3::from_parts(Translation3::from(Vector3::from(xyz)), rotation) })
    }

    /// From a translation and a quaternion `[x, y, z, w]` (tf2 order). The quaternion is
    /// normalized; one of (near) zero length is no rotation at all and is refused.
    pub fn from_xyz_quaternion(xyz: [f64; 3], xyzw: [f64; 4]) -> Result<Self, CalibrationError> {
        check_finite("translation", &xyz)?;
        check_finite("rotation_quaternion", &xyzw)?;
        let q = Quaternion::new(xyzw[3], xyzw[0], xyzw[1], xyzw[2]);
        if q.norm() < 1e-6 {
            return Err(CalibrationError::invalid("rotation_quaternion", format!("{xyzw:?}"), "a zero quaternion is not a rotation"));
        }
        Ok(Extrinsics { isometry: Isometry3::from_parts(Translation3::from(Vector3::from(xyz)), UnitQuaternion::from_quaternion(q)) })
    }

    /// From a row-major 4x4 homogeneous matrix `[R t; 0 0 0 1]` (OpenCV / Kalibr style). The
    /// 3x3 block must be a rotation: orthonormal with determinant +1.
    pub fn from_matrix(rows: &[f64]) -> Result<Self, CalibrationError> {
        const FIELD: &str = "matrix";
        if rows.len() != 16 {
            return Err(CalibrationError::Count { field: FIELD, got: rows.len(), expected: "16 (4x4, row-major)".into() });
        }
        check_finite(FIELD, rows)?;
        if rows[12..] != [0.0, 0.0, 0.0, 1.0] {
            return Err(CalibrationError::invalid(FIELD, format!("{:?}", &rows[12..]), "the last row of a rigid transform is [0, 0, 0, 1]"));
        }
        let r = Matrix3::new(rows[0], rows[1], rows[2], rows[4], rows[5], rows[6], rows[8], rows[9], rows[10]);
        let orthonormal = (r.transpose() * r - Matrix3::identity()).abs().max() <= ROTATION_TOLERANCE;
        let det = r.determinant();
        if !orthonormal || (det - 1.0).abs() > ROTATION_TOLERANCE {
            return Err(CalibrationError::invalid(
                FIELD,
                format!("rotation block {:?} (det {det})", [rows[0], rows[1], rows[2], rows[4], rows[5], rows[6], rows[8], rows[9], rows[10]]),
                "not a rotation: it must be orthonormal with determinant +1 (no scale, shear or mirroring)",
            ));
        }
        let rotation = UnitQuaternion::from_rotation_matrix(&Rotation3::from_matrix_unchecked(r));
        Ok(Extrinsics { isometry: Isometry3::from_parts(Translation3::new(rows[3], rows[7], rows[11]), rotation) })
    }

    /// Reads the YAML form (see [`Extrinsics::from_yaml`]); errors name the file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, CalibrationError> {
        let file = |message: String| CalibrationError::File { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        Self::from_yaml(&text).map_err(|e| file(e.to_string()))
    }

    /// Parses
    /// ```yaml
    /// translation: [x, y, z]             # metres
    /// rotation_rpy: [roll, pitch, yaw]   # radians, fixed axes, or:
    /// rotation_quaternion: [x, y, z, w]  # or, instead of both:
    /// matrix: [16 values, row-major 4x4]
    /// ```
    /// Exactly one rotation form; unknown keys are refused (a misspelt key would otherwise
    /// silently mean "no rotation").
    pub fn from_yaml(text: &str) -> Result<Self, CalibrationError> {
        // `expecting` keeps the private struct name out of type errors ("expected struct Raw").
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, expecting = "a pose mapping (translation + rotation_rpy | rotation_quaternion, or matrix)")]
        struct Raw {
            translation: Option<Vec<f64>>,
            rotation_rpy: Option<Vec<f64>>,
            rotation_quaternion: Option<Vec<f64>>,
            matrix: Option<Vec<f64>>,
        }
        let raw: Raw = serde_yaml_ng::from_str(text).map_err(|e| CalibrationError::yaml(KIND, e))?;
        let translation = |v: Option<Vec<f64>>| -> Result<[f64; 3], CalibrationError> {
            let v = v.ok_or_else(|| CalibrationError::yaml(KIND, "missing `translation` (or give `matrix`)"))?;
            array("translation", &v)
        };
        match (raw.matrix, raw.rotation_rpy, raw.rotation_quaternion) {
            (Some(m), None, None) if raw.translation.is_none() => Self::from_matrix(&m),
            (None, Some(rpy), None) => Self::from_xyz_rpy(translation(raw.translation)?, array("rotation_rpy", &rpy)?),
            (None, None, Some(q)) => Self::from_xyz_quaternion(translation(raw.translation)?, array("rotation_quaternion", &q)?),
            _ => Err(CalibrationError::yaml(
                KIND,
                "give exactly one of `rotation_rpy` or `rotation_quaternion` (with `translation`), or `matrix` alone",
            )),
        }
    }

    /// The YAML form with `translation` and `rotation_quaternion`, floats in shortest
    /// round-trip form, so [`Extrinsics::from_yaml`] gives the same transform back exactly.
    pub fn to_yaml(&self) -> String {
        let t = self.isometry.translation.vector;
        let q = self.isometry.rotation.coords; // [i, j, k, w]
        format!("translation: [{:?}, {:?}, {:?}]\nrotation_quaternion: [{:?}, {:?}, {:?}, {:?}]\n", t.x, t.y, t.z, q.x, q.y, q.z, q.w)
    }

    /// Roll, pitch, yaw (radians) of the rotation, the inverse of [`Extrinsics::from_xyz_rpy`].
    pub fn rpy(&self) -> [f64; 3] {
        let (r, p, y) = self.isometry.rotation.euler_angles();
        [r, p, y]
    }

    pub fn transform(&self, p: &Point3<f64>) -> Point3<f64> {
        self.isometry.transform_point(p)
    }

    pub fn inverse(&self) -> Self {
        Extrinsics { isometry: self.isometry.inverse() }
    }
}

fn check_finite(field: &'static str, values: &[f64]) -> Result<(), CalibrationError> {
    match values.iter().find(|v| !v.is_finite()) {
        Some(v) => Err(CalibrationError::invalid(field, v, "must be finite")),
        None => Ok(()),
    }
}

fn array<const N: usize>(field: &'static str, v: &[f64]) -> Result<[f64; N], CalibrationError> {
    v.try_into().map_err(|_| CalibrationError::Count { field, got: v.len(), expected: N.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpy_follows_the_urdf_convention_and_round_trips() {
        // Yaw 90° alone turns x into y.
        let e = Extrinsics::from_xyz_rpy([1.0, 2.0, 3.0], [0.0, 0.0, std::f64::consts::FRAC_PI_2]).unwrap();
        let p = e.transform(&Point3::new(1.0, 0.0, 0.0));
        assert!((p - Point3::new(1.0, 3.0, 3.0)).norm() < 1e-12, "{p}");
        // Rz(yaw) Ry(pitch) Rx(roll), built from axis-angle rotations independently.
        let (r, pi, y) = (0.3, -0.2, 1.1);
        let e = Extrinsics::from_xyz_rpy([0.0; 3], [r, pi, y]).unwrap();
        let want = Rotation3::from_axis_angle(&Vector3::z_axis(), y)
            * Rotation3::from_axis_angle(&Vector3::y_axis(), pi)
            * Rotation3::from_axis_angle(&Vector3::x_axis(), r);
        assert!((e.isometry.rotation.to_rotation_matrix().matrix() - want.matrix()).abs().max() < 1e-12);
        let back = e.rpy();
        assert!((back[0] - r).abs() < 1e-12 && (back[1] - pi).abs() < 1e-12 && (back[2] - y).abs() < 1e-12, "{back:?}");
    }

    #[test]
    fn yaml_forms_agree_and_writing_round_trips_exactly() {
        let rpy = Extrinsics::from_yaml("translation: [0.05, -0.01, 0.002]\nrotation_rpy: [0.01, -0.02, 0.03]\n").unwrap();
        let written = rpy.to_yaml();
        let back = Extrinsics::from_yaml(&written).unwrap();
        assert_eq!(back, rpy);
        assert_eq!(back.to_yaml(), written);
        let m = rpy.isometry.to_homogeneous();
        let rows: Vec<f64> = (0..4).flat_map(|r| (0..4).map(move |c| m[(r, c)])).collect();
        let from_matrix = Extrinsics::from_yaml(&format!("matrix: {rows:?}\n")).unwrap();
        let p = Point3::new(0.3, 1.2, 4.0);
        assert!((from_matrix.transform(&p) - rpy.transform(&p)).norm() < 1e-12);
    }

    #[test]
    fn singular_or_malformed_transforms_are_refused_by_field() {
        let err = |yaml: &str| Extrinsics::from_yaml(yaml).unwrap_err().to_string();
        let e = err("translation: [0, 0, 0]\nrotation_quaternion: [0, 0, 0, 0]\n");
        assert!(e.contains("rotation_quaternion") && e.contains("zero quaternion"), "{e}");
        let scaled = "matrix: [2, 0, 0, 0,  0, 2, 0, 0,  0, 0, 2, 0,  0, 0, 0, 1]\n";
        assert!(err(scaled).contains("not a rotation"), "{}", err(scaled));
        let mirrored = "matrix: [-1, 0, 0, 0,  0, 1, 0, 0,  0, 0, 1, 0,  0, 0, 0, 1]\n";
        assert!(err(mirrored).contains("det -1"), "{}", err(mirrored));
        let singular = "matrix: [1, 0, 0, 0,  1, 0, 0, 0,  0, 0, 1, 0,  0, 0, 0, 1]\n";
        assert!(err(singular).contains("not a rotation"), "{}", err(singular));
        assert!(err("translation: [0, 0]\nrotation_rpy: [0, 0, 0]\n").contains("`translation` has 2 values"));
        assert!(err("translation: [0, 0, .nan]\nrotation_rpy: [0, 0, 0]\n").contains("must be finite"));
        assert!(err("translation: [0, 0, 0]\nrotation_ypr: [0, 0, 0]\n").contains("rotation_ypr"));
        assert!(err("translation: [0, 0, 0]\n").contains("exactly one"));
        let e = Extrinsics::from_yaml_file(Path::new("/nonexistent/extrinsics.yaml")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/extrinsics.yaml"), "{e}");
    }

    #[test]
    fn yaml_errors_name_a_pose_file_not_internal_types() {
        let dir = std::env::temp_dir().join(format!("ovseg-extrinsics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let typo = write("typo.yaml", "translaton: [0, 0, 1]\nrotation_rpy: [0, 0, 0]\n");
        let e = Extrinsics::from_yaml_file(&typo).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: pose YAML: unknown field `translaton`, expected one of", typo.display())), "{e}");
        let text = write("notes.txt", "just some notes\n");
        let e = Extrinsics::from_yaml_file(&text).unwrap_err().to_string();
        assert!(e.contains("pose YAML") && e.contains("expected a pose mapping"), "{e}");
        for yaml in ["[1, 2, 3]", "translation: [0, 0, 0]\n"] {
            let e = Extrinsics::from_yaml(yaml).unwrap_err().to_string();
            assert!(e.starts_with("pose YAML: ") && !e.contains("Raw") && !e.contains("camera_info"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
