//! camera_info YAML files as camera_info_manager reads and writes them (the
//! camera_calibration_parsers format), so calibrations from `camera_calibration` can be used and
//! calibrations made here can be loaded by any ROS camera driver.
//!
//! Reading follows camera_calibration_parsers: `camera_name` defaults to "unknown",
//! `distortion_model` to "plumb_bob"; unknown keys are ignored. Writing is canonical and exact:
//! floats in Rust's shortest round-trip form (always with a `.`, so YAML 1.1 readers such as
//! PyYAML see floats), hence `parse(to_yaml(x)) == x` and `to_yaml` of that is byte-identical.
use std::path::Path;

use nalgebra::{Matrix3, Matrix3x4};
use serde::Deserialize;

use crate::camera::FieldNames;
use crate::{CalibrationError, Camera};

/// The contents of a camera_info YAML file. Matrices are row-major, as in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraInfoYaml {
    pub image_width: u32,
    pub image_height: u32,
    pub camera_name: String,
    /// K (3x3).
    pub camera_matrix: [f64; 9],
    pub distortion_model: String,
    /// D (1xN).
    pub distortion_coefficients: Vec<f64>,
    /// R (3x3): camera frame to rectified frame.
    pub rectification_matrix: [f64; 9],
    /// P (3x4): projection of the rectified frame.
    pub projection_matrix: [f64; 12],
}

// `expecting` keeps the private struct names out of type errors ("expected struct RawFile").
#[derive(Deserialize)]
#[serde(expecting = "a matrix mapping with rows, cols and data")]
struct RawMatrix {
    rows: i64,
    cols: i64,
    data: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(expecting = "a camera_info mapping (image_width, image_height, camera_matrix, ...)")]
struct RawFile {
    image_width: u32,
    image_height: u32,
    camera_name: Option<String>,
    camera_matrix: RawMatrix,
    distortion_model: Option<String>,
    distortion_coefficients: RawMatrix,
    rectification_matrix: RawMatrix,
    projection_matrix: RawMatrix,
}

/// Names of one matrix's fields, for error messages.
struct MatrixFields {
    rows: &'static str,
    cols: &'static str,
    data: &'static str,
    shape: &'static str,
}

const K_FIELDS: MatrixFields = MatrixFields {
    rows: "camera_matrix.rows",
    cols: "camera_matrix.cols",
    data: "camera_matrix.data",
    shape: "camera_matrix is 3x3",
};
const D_FIELDS: MatrixFields = MatrixFields {
    rows: "distortion_coefficients.rows",
    cols: "distortion_coefficients.cols",
    data: "distortion_coefficients.data",
    shape: "distortion_coefficients is a 1xN (or Nx1) vector",
};
const R_FIELDS: MatrixFields = MatrixFields {
    rows: "rectification_matrix.rows",
    cols: "rectification_matrix.cols",
    data: "rectification_matrix.data",
    shape: "rectification_matrix is 3x3",
};
const P_FIELDS: MatrixFields = MatrixFields {
    rows: "projection_matrix.rows",
    cols: "projection_matrix.cols",
    data: "projection_matrix.data",
    shape: "projection_matrix is 3x4",
};

const YAML_NAMES: FieldNames = FieldNames {
    model: "distortion_model",
    d: "distortion_coefficients.data",
    k: "camera_matrix.data",
    fx: "camera_matrix.data[0] (fx)",
    fy: "camera_matrix.data[4] (fy)",
    cx: "camera_matrix.data[2] (cx)",
    cy: "camera_matrix.data[5] (cy)",
    width: "image_width",
    height: "image_height",
};

impl CameraInfoYaml {
    /// Parses and validates (shapes, finite values, and that [`Self::camera`] succeeds).
    pub fn parse(text: &str) -> Result<Self, CalibrationError> {
        // A byte order mark (some Windows editors write one) is not YAML.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| CalibrationError::yaml("camera_info", e))?;
        let d = &raw.distortion_coefficients;
        if !(d.rows == 1 || d.cols == 1 || d.data.is_empty()) {
            return Err(CalibrationError::invalid(D_FIELDS.rows, d.rows, D_FIELDS.shape));
        }
        let info = CameraInfoYaml {
            image_width: raw.image_width,
            image_height: raw.image_height,
            camera_name: raw.camera_name.unwrap_or_else(|| "unknown".to_string()),
            camera_matrix: matrix(&raw.camera_matrix, 3, 3, &K_FIELDS)?,
            distortion_model: raw.distortion_model.unwrap_or_else(|| "plumb_bob".to_string()),
            distortion_coefficients: matrix_data(d, d.rows, d.cols, &D_FIELDS)?.to_vec(),
            rectification_matrix: matrix(&raw.rectification_matrix, 3, 3, &R_FIELDS)?,
            projection_matrix: matrix(&raw.projection_matrix, 3, 4, &P_FIELDS)?,
        };
        info.validate()?;
        Ok(info)
    }

    /// Checks what the types cannot: finite matrices and a usable camera.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        finite(&self.rectification_matrix, R_FIELDS.data)?;
        finite(&self.projection_matrix, P_FIELDS.data)?;
        self.camera().map(|_| ())
    }

    /// Reads and parses a file; errors carry the path.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CalibrationError> {
        let path = path.as_ref();
        let file_error = |message: String| CalibrationError::File { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        Self::parse(&text).map_err(|e| file_error(e.to_string()))
    }

    /// Writes [`Self::to_yaml`] to a file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CalibrationError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_yaml())
            .map_err(|e| CalibrationError::File { path: path.display().to_string(), message: e.to_string() })
    }

    /// The canonical text, in camera_calibration_parsers' key order and layout.
    pub fn to_yaml(&self) -> String {
        let mut out = format!(
            "image_width: {}\nimage_height: {}\ncamera_name: {}\n",
            self.image_width,
            self.image_height,
            yaml_string(&self.camera_name)
        );
        let block = |name: &str, rows: usize, data: &[f64]| {
            let cols = data.len().checked_div(rows).unwrap_or(0);
            let values: Vec<String> = data.iter().map(|&v| yaml_float(v)).collect();
            format!("{name}:\n  rows: {rows}\n  cols: {cols}\n  data: [{}]\n", values.join(", "))
        };
        out += &block("camera_matrix", 3, &self.camera_matrix);
        out += &format!("distortion_model: {}\n", yaml_string(&self.distortion_model));
        out += &block("distortion_coefficients", 1, &self.distortion_coefficients);
        out += &block("rectification_matrix", 3, &self.rectification_matrix);
        out += &block("projection_matrix", 3, &self.projection_matrix);
        out
    }

    /// The camera model; errors name the YAML field (`camera_matrix.data[0] (fx)`, ...).
    pub fn camera(&self) -> Result<Camera, CalibrationError> {
        Camera::from_parts(
            &self.distortion_model,
            &self.distortion_coefficients,
            &self.camera_matrix,
            self.image_width,
            self.image_height,
            &YAML_NAMES,
        )
    }

    /// A file for an unrectified monocular camera: R = I, P = [K | 0].
    pub fn from_camera(camera_name: &str, camera: &Camera) -> Self {
        let (model, d) = camera.distortion().to_ros();
        let k = camera.k();
        let mut p = [0.0; 12];
        for r in 0..3 {
            for c in 0..3 {
                p[r * 4 + c] = k[(r, c)];
            }
        }
        CameraInfoYaml {
            image_width: camera.width(),
            image_height: camera.height(),
            camera_name: camera_name.to_string(),
            camera_matrix: std::array::from_fn(|i| k[(i / 3, i % 3)]),
            distortion_model: model.to_string(),
            distortion_coefficients: d,
            rectification_matrix: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            projection_matrix: p,
        }
    }

    pub fn rectification(&self) -> Matrix3<f64> {
        Matrix3::from_row_slice(&self.rectification_matrix)
    }

    pub fn projection(&self) -> Matrix3x4<f64> {
        Matrix3x4::from_row_slice(&self.projection_matrix)
    }
}

impl std::str::FromStr for CameraInfoYaml {
    type Err = CalibrationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn matrix<const N: usize>(m: &RawMatrix, rows: i64, cols: i64, f: &MatrixFields) -> Result<[f64; N], CalibrationError> {
    if m.rows != rows {
        return Err(CalibrationError::invalid(f.rows, m.rows, f.shape));
    }
    if m.cols != cols {
        return Err(CalibrationError::invalid(f.cols, m.cols, f.shape));
    }
    let data = matrix_data(m, rows, cols, f)?;
    let mut out = [0.0; N];
    out.copy_from_slice(data);
    Ok(out)
}

/// The data of a rows x cols matrix, checked for length and finiteness.
fn matrix_data<'a>(m: &'a RawMatrix, rows: i64, cols: i64, f: &MatrixFields) -> Result<&'a [f64], CalibrationError> {
    if rows < 0 || cols < 0 {
        let (field, v) = if rows < 0 { (f.rows, rows) } else { (f.cols, cols) };
        return Err(CalibrationError::invalid(field, v, "must not be negative"));
    }
    let expected = rows.saturating_mul(cols);
    if m.data.len() as i64 != expected {
        let expected = format!("{expected} ({rows}x{cols})");
        return Err(CalibrationError::Count { field: f.data, got: m.data.len(), expected });
    }
    finite(&m.data, f.data)?;
    Ok(&m.data)
}

fn finite(data: &[f64], field: &'static str) -> Result<(), CalibrationError> {
    match data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, v)) => Err(CalibrationError::invalid(field, format!("{v} at index {i}"), "values must be finite")),
        None => Ok(()),
    }
}

/// Shortest round-trip form, with a `.` in the mantissa and a sign in the exponent so YAML 1.1
/// parsers (PyYAML) read a float, not a string: 1e-5 -> "1.0e-5".
fn yaml_float(v: f64) -> String {
    if v.is_nan() {
        return ".nan".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { ".inf" } else { "-.inf" }.to_string();
    }
    let s = format!("{v:?}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let dot = if mantissa.contains('.') { "" } else { ".0" };
            let sign = if exp.starts_with('-') { "" } else { "+" };
            format!("{mantissa}{dot}e{sign}{exp}")
        }
        None => s,
    }
}

/// Plain when it cannot be read as anything but this string, double-quoted otherwise.
fn yaml_string(s: &str) -> String {
    const RESERVED: [&str; 12] = ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf", "infinity"];
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_yaml_1_1_floats() {
        assert_eq!(yaml_float(1e-5), "1.0e-5");
        assert_eq!(yaml_float(1.5e-7), "1.5e-7");
        assert_eq!(yaml_float(1e16), "1.0e+16");
        assert_eq!(yaml_float(525.0), "525.0");
        assert_eq!(yaml_float(-0.0), "-0.0");
        assert_eq!(yaml_float(f64::NEG_INFINITY), "-.inf");
    }

    #[test]
    fn strings_are_quoted_when_they_could_mean_something_else() {
        assert_eq!(yaml_string("narrow_stereo/left"), "narrow_stereo/left");
        assert_eq!(yaml_string(""), "\"\"");
        assert_eq!(yaml_string("yes"), "\"yes\"");
        assert_eq!(yaml_string("0123"), "\"0123\"");
        assert_eq!(yaml_string("a: \"b\"\n"), "\"a: \\\"b\\\"\\n\"");
    }

    #[test]
    fn type_errors_name_the_file_kind_not_internal_types() {
        let e = CameraInfoYaml::parse("just some notes").unwrap_err().to_string();
        assert!(e.starts_with("camera_info YAML: invalid type") && e.contains("expected a camera_info mapping"), "{e}");
        let e = CameraInfoYaml::parse("image_width: 1\nimage_height: 1\ncamera_matrix: 3\n").unwrap_err().to_string();
        assert!(e.contains("expected a matrix mapping") && !e.contains("Raw"), "{e}");
    }
}
