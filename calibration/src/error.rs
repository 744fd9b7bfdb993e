//! One error type for the crate, so callers (the ROS node) can log any failure as one line that
//! names the offending field and value.

/// Everything that can go wrong building or using a camera model, a camera_info file, a
/// rectification map or a ground plane. Each message names the field and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CalibrationError {
    /// A value outside its valid range (e.g. a focal length <= 0).
    #[error("camera: field `{field}` = {value}: {reason}")]
    Invalid { field: &'static str, value: String, reason: &'static str },
    /// A list with the wrong number of entries (e.g. 4 distortion coefficients for plumb_bob).
    #[error("`{field}` has {got} values, expected {expected}")]
    Count { field: &'static str, got: usize, expected: String },
    /// A `distortion_model` this crate does not implement.
    #[error("`{field}` = {value:?}: unknown distortion model, expected one of {accepted}")]
    UnknownModel { field: &'static str, value: String, accepted: &'static str },
    /// A YAML document that does not parse (syntax, missing field, wrong type); `kind` says
    /// which kind of file it was meant to be ("camera_info", "pose").
    #[error("{kind} YAML: {message}")]
    Yaml { kind: &'static str, message: String },
    /// Reading, parsing or writing a file failed; `message` is the underlying error.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// Input that cannot determine the result (too few points, all collinear, NaN, ...).
    #[error("{what}: {reason}")]
    Degenerate { what: &'static str, reason: String },
}

impl CalibrationError {
    pub(crate) fn yaml(kind: &'static str, message: impl std::fmt::Display) -> Self {
        CalibrationError::Yaml { kind, message: message.to_string() }
    }

    pub(crate) fn invalid(field: &'static str, value: impl std::fmt::Display, reason: &'static str) -> Self {
        CalibrationError::Invalid { field, value: value.to_string(), reason }
    }
}
