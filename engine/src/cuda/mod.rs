//! CUDA through cudarc with dynamic loading: the build needs no CUDA toolkit, and a machine
//! without a driver or NVRTC gets a clear reason instead of a crash.
//!
//! NVRTC (`libnvrtc.so.13`) is found on the library path, or in `OVSEG_NVRTC_DIR` (for instance
//! the `nvidia/cu13/lib` folder of the `nvidia-cuda-nvrtc` Python wheel).
mod preprocess;
mod scorer;
mod stereo;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::{EngineError, Result};

pub use preprocess::{CudaPreprocessor, NetGeometry};
pub use scorer::{CudaScorer, DeviceLevel, MAX_FUSED_CANDIDATES, MAX_LABELS};
pub use stereo::{CudaStereoMatcher, STEREO_ENTRY_POINTS, STEREO_KERNELS};

/// The kernel source; [`compile`] turns it into PTX.
pub const KERNELS: &str = include_str!("kernels.cu");

/// Entry points the scorer loads from [`KERNELS`].
pub const ENTRY_POINTS: &[&str] = &[
    "cost_dense",
    "keep_top_k",
    "cell_mass",
    "fuse_sparse",
    "softmax_cells",
    "upsample_argmax",
    "paint_labels",
    "resize_rows",
    "resize_cols_normalize",
    "nchw_to_pixel_major",
];

/// Environment variable naming a folder that holds `libnvrtc.so.13`.
pub const NVRTC_DIR_ENV: &str = "OVSEG_NVRTC_DIR";

fn gpu(context: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Gpu(format!("{context}: {e}"))
}

/// Whether a CUDA driver library can be loaded (cudarc panics on first use otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A driver library that loads, or the error that says there is none.
fn require_driver() -> Result<()> {
    match driver_present() {
        true => Ok(()),
        false => Err(EngineError::Gpu("no CUDA driver (libcuda.so.1 not found)".into())),
    }
}

/// The primary context of device 0, or why there is none (no driver, no device).
fn device_zero() -> Result<std::sync::Arc<cudarc::driver::CudaContext>> {
    use cudarc::driver::CudaContext;
    require_driver()?;
    if CudaContext::device_count().map_err(|e| gpu("initialising the driver", e))? < 1 {
        return Err(EngineError::Gpu("the CUDA driver reports no device".into()));
    }
    CudaContext::new(0).map_err(|e| gpu("creating a context on device 0", e))
}

/// Makes NVRTC loadable: already on the library path, or preloaded from `dir` (or
/// `OVSEG_NVRTC_DIR`) so that cudarc's later load by name finds it by its soname.
pub fn ensure_nvrtc(dir: Option<&Path>) -> Result<()> {
    static LOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());
    // SAFETY: dlopen by name only.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    let dir = dir.map(Path::to_path_buf).or_else(|| std::env::var_os(NVRTC_DIR_ENV).map(PathBuf::from));
    let Some(dir) = dir else {
        return Err(EngineError::Gpu(format!(
            "libnvrtc.so.13 is not on the library path; put its folder on LD_LIBRARY_PATH or in {NVRTC_DIR_ENV}"
        )));
    };
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    // The builtins library first: libnvrtc looks for it by name when it compiles.
    for name in ["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"] {
        let path = dir.join(name);
        // SAFETY: loading NVIDIA's NVRTC libraries, whose initialisers have no preconditions.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| gpu(&format!("loading {}", path.display()), e))?;
        loaded.push(lib);
    }
    Ok(())
}

/// Compiles [`KERNELS`] with the options that keep them bit-identical to the CPU reference.
/// `arch` is a virtual architecture such as `compute_90`; `None` takes NVRTC's default.
pub fn compile(arch: Option<&str>) -> Result<Ptx> {
    compile_source(KERNELS, arch)
}

/// Compiles CUDA source with [`compile`]'s options; a rejection carries NVRTC's log.
pub fn compile_source(source: &str, arch: Option<&str>) -> Result<Ptx> {
    ensure_nvrtc(None)?;
    let mut options = vec!["--std=c++17".to_string()];
    if let Some(arch) = arch {
        options.push(format!("--gpu-architecture={arch}"));
    }
    let opts = CompileOptions {
        fmad: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        options,
        name: Some("ovseg_kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            EngineError::Gpu(format!("NVRTC rejected the kernels:\n{}", log.to_string_lossy()))
        }
        other => gpu("NVRTC", other),
    })
}

/// A context on device 0 with the kernels compiled for it.
pub(crate) struct Device {
    pub stream: std::sync::Arc<cudarc::driver::CudaStream>,
    pub module: std::sync::Arc<cudarc::driver::CudaModule>,
    /// Name and architecture, for logs.
    pub name: String,
}

impl Device {
    /// Says why when there is no driver, device or NVRTC.
    pub fn open() -> Result<Device> {
        Self::open_with(KERNELS)
    }

    /// A context on device 0 with `source` compiled for it.
    pub fn open_with(source: &str) -> Result<Device> {
        let ctx = device_zero()?;
        let (major, minor) = ctx.compute_capability().map_err(|e| gpu("compute capability", e))?;
        let ptx = compile_source(source, Some(&format!("compute_{major}{minor}")))?;
        let module = ctx.load_module(ptx).map_err(|e| gpu("loading the kernels", e))?;
        let name = ctx.name().map_err(|e| gpu("device name", e))?;
        Ok(Device { stream: ctx.default_stream(), module, name: format!("{name} (sm_{major}{minor})") })
    }

    pub fn function(&self, name: &str) -> Result<cudarc::driver::CudaFunction> {
        self.module.load_function(name).map_err(|e| gpu(&format!("kernel {name}"), e))
    }
}

/// What burn's CUDA backend needs before it is started, which would otherwise panic deep inside
/// it: a driver, NVRTC (found as for the project's kernels, `OVSEG_NVRTC_DIR` included), and the
/// CUDA headers it compiles every kernel with (see [`cuda_headers`]). Returns the CUDA root
/// whose headers it will use.
pub fn burn_cuda_ready() -> Result<PathBuf> {
    require_driver()?;
    ensure_nvrtc(None)?;
    cuda_headers(std::env::var_os("CUDA_PATH").map(PathBuf::from))
}

/// The CUDA root whose `include/` holds `cuda_runtime.h` and `crt/mma.h` (burn's matrix kernels
/// include `mma.h`, which needs it), looked up as burn's CUDA runtime (cubecl) does: `cuda_path`
/// (the `CUDA_PATH` variable) if given, else the first of /usr/local/cuda and /opt/cuda that
/// exists, else /usr where /usr/bin/nvcc exists.
pub fn cuda_headers(cuda_path: Option<PathBuf>) -> Result<PathBuf> {
    const HINT: &str = "install the CUDA toolkit's headers, or set CUDA_PATH to a folder whose include/ holds them \
                        (the nvidia/cu13 folder of the nvidia-cuda-runtime, nvidia-cuda-crt and nvidia-cuda-cccl wheels)";
    let from_env = cuda_path.is_some();
    let root = cuda_path
        .or_else(|| ["/usr/local/cuda", "/opt/cuda"].into_iter().map(PathBuf::from).find(|p| p.exists()))
        .or_else(|| Path::new("/usr/bin/nvcc").exists().then(|| PathBuf::from("/usr")));
    let Some(root) = root else {
        return Err(EngineError::Gpu(format!(
            "burn's CUDA backend compiles its kernels with the CUDA headers, and there are none (CUDA_PATH is not set, and there is no /usr/local/cuda, /opt/cuda or /usr/bin/nvcc): {HINT}"
        )));
    };
    for header in ["include/cuda_runtime.h", "include/crt/mma.h"].map(|h| root.join(h)) {
        if !header.is_file() {
            let source = if from_env { " (CUDA_PATH)" } else { "" };
            return Err(EngineError::Gpu(format!(
                "burn's CUDA backend compiles its kernels with the CUDA headers, and {}{source} has no {}: {HINT}",
                root.display(),
                header.display()
            )));
        }
    }
    Ok(root)
}

/// Name and compute capability of device 0, without compiling anything.
pub fn device_identity() -> Result<(String, (i32, i32))> {
    let ctx = device_zero()?;
    let capability = ctx.compute_capability().map_err(|e| gpu("compute capability", e))?;
    Ok((ctx.name().map_err(|e| gpu("device name", e))?, capability))
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc(None)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the pointers are to live locals.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    match status {
        cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS => Ok((major, minor)),
        other => Err(gpu("NVRTC version", format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_headers_come_from_cuda_path_or_are_refused_naming_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = cuda_headers(Some(dir.path().into())).unwrap_err().to_string();
        assert!(err.contains("(CUDA_PATH) has no") && err.contains("include/cuda_runtime.h") && err.contains("nvidia-cuda-crt"), "{err}");
        std::fs::create_dir_all(dir.path().join("include/crt")).unwrap();
        std::fs::write(dir.path().join("include/cuda_runtime.h"), "").unwrap();
        // The runtime headers alone (as the nvidia-cuda-runtime wheel has them) are not enough.
        let err = cuda_headers(Some(dir.path().into())).unwrap_err().to_string();
        assert!(err.contains("include/crt/mma.h"), "{err}");
        std::fs::write(dir.path().join("include/crt/mma.h"), "").unwrap();
        assert_eq!(cuda_headers(Some(dir.path().into())).unwrap(), dir.path());
    }
}
