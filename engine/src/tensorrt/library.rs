//! The one call into TensorRT's own library: its version, which keys the engine cache (an
//! engine serialized by one TensorRT release does not load in another). libnvinfer is opened at
//! run time, so nothing here needs the SDK to build.
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};

/// Where libnvinfer is looked for, first found wins: `OVSEG_NVINFER_PATH`, then the dynamic
/// loader's search path (JetPack installs TensorRT 10 as `libnvinfer.so.10`).
pub fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("OVSEG_NVINFER_PATH").filter(|p| !p.is_empty()).map(PathBuf::from).into_iter().collect();
    out.extend(["libnvinfer.so.10", "libnvinfer.so"].map(PathBuf::from));
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TensorRtVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for TensorRtVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl TensorRtVersion {
    /// The number `getInferLibVersion()` returns for this version.
    pub fn encoded(&self) -> u32 {
        let major_scale = if self.major >= 10 { 10_000 } else { 1000 };
        self.major * major_scale + self.minor * 100 + self.patch
    }

    /// Decodes `getInferLibVersion()`: major * 10000 + minor * 100 + patch from TensorRT 10 on,
    /// major * 1000 + minor * 100 + patch before (8.6.1 is 8601).
    pub fn from_encoded(v: i32) -> Option<Self> {
        let v = u32::try_from(v).ok().filter(|&v| v > 0)?;
        let (major, rest) = if v >= 100_000 { (v / 10_000, v % 10_000) } else { (v / 1000, v % 1000) };
        Some(TensorRtVersion { major, minor: rest / 100, patch: rest % 100 })
    }
}

/// The version of the first libnvinfer in `candidates` that opens. Errors name every file tried
/// and why, or the library and the missing symbol.
pub fn version(candidates: &[PathBuf]) -> Result<TensorRtVersion> {
    let mut tried = Vec::new();
    for path in candidates {
        match version_of(path) {
            Ok(v) => return Ok(v),
            Err(Open(reason)) => tried.push(format!("{} ({reason})", path.display())),
            Err(Broken(reason)) => return Err(EngineError::TensorRt(format!("library {}: {reason}", path.display()))),
        }
    }
    Err(EngineError::TensorRt(format!("libnvinfer not found: tried {}", tried.join(", "))))
}

enum Failure {
    /// Not there or not loadable: try the next candidate.
    Open(String),
    /// Loaded, but not a usable libnvinfer: stop and say so.
    Broken(String),
}
use Failure::{Broken, Open};

fn version_of(path: &Path) -> std::result::Result<TensorRtVersion, Failure> {
    // SAFETY: loading a shared library runs its initialisers; libnvinfer's are TensorRT's own.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| Open(e.to_string()))?;
    // SAFETY: TensorRT declares `extern "C" int32_t getInferLibVersion() noexcept`.
    let get: libloading::Symbol<unsafe extern "C" fn() -> i32> =
        unsafe { library.get(b"getInferLibVersion\0") }.map_err(|e| Broken(format!("no getInferLibVersion: {e}")))?;
    // SAFETY: no arguments, returns an integer; the library stays loaded for the call.
    let encoded = unsafe { get() };
    TensorRtVersion::from_encoded(encoded).ok_or_else(|| Broken(format!("getInferLibVersion() returned {encoded}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_version_encodings_decode() {
        assert_eq!(TensorRtVersion::from_encoded(100_300).map(|v| v.to_string()), Some("10.3.0".into()));
        assert_eq!(TensorRtVersion::from_encoded(101_302).map(|v| v.to_string()), Some("10.13.2".into()));
        assert_eq!(TensorRtVersion::from_encoded(8601).map(|v| v.to_string()), Some("8.6.1".into()));
        assert_eq!(TensorRtVersion::from_encoded(0), None);
        for v in [100_300, 101_302, 8601] {
            assert_eq!(TensorRtVersion::from_encoded(v).unwrap().encoded(), v as u32);
        }
        assert_eq!(TensorRtVersion::from_encoded(-5), None);
    }

    #[test]
    fn a_missing_library_names_every_file_tried() {
        let e = version(&[PathBuf::from("/nonexistent/libnvinfer.so.10"), PathBuf::from("libnvinfer-nonexistent.so")]).unwrap_err().to_string();
        assert!(e.contains("libnvinfer not found") && e.contains("/nonexistent/libnvinfer.so.10") && e.contains("libnvinfer-nonexistent.so"), "{e}");
    }
}
