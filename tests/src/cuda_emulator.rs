//! The CUDA emulator of `tests/cuda-emulator` (a stand-in libcuda/libnvrtc that runs the kernels
//! on the CPU), built with the host C++ compiler for tests that run a program on it.
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the emulator's NVRTC puts the kernel libraries it builds; set for programs run on it.
pub const KERNELS_ENV: &str = "OVSEG_CUDA_EMULATOR_DIR";
/// `kernel:n`: the n-th launch of that kernel fails as a lost device does, and all after it.
pub const FAIL_ENV: &str = "OVSEG_CUDA_EMULATOR_FAIL";
/// Its device name, as cudarc reports it.
pub const DEVICE_NAME: &str = "CUDA emulator on the CPU";

pub struct CudaEmulator {
    dir: PathBuf,
}

impl CudaEmulator {
    /// Builds the emulator into `dir` (file-locked, so parallel tests share one build). `None`,
    /// with the reason printed, where it cannot run: not x86-64 Linux (its fibers switch stacks in
    /// x86-64 assembly), or no C++ compiler (`CXX`, else `c++`) outside CI; under CI a missing
    /// compiler fails the test.
    pub fn build(dir: &Path) -> Option<CudaEmulator> {
        if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            eprintln!("CUDA emulator: skipped, its fibers are written for x86-64 Linux");
            return None;
        }
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda-emulator");
        std::fs::create_dir_all(dir).expect("creating the emulator folder");
        let lock = File::create(dir.join("build.lock")).expect("creating the emulator's lock file");
        lock.lock().expect("locking the emulator folder");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let built = dir.join(format!("libcuda.so.{}", std::process::id()));
        let status = Command::new(&cxx)
            .args(["-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Werror"])
            .arg(format!("-DEMU_SOURCE_DIR=\"{}\"", source.display()))
            .arg("-o")
            .arg(&built)
            .arg(source.join("driver.cpp"))
            .status();
        match status {
            Err(e) => {
                assert!(std::env::var_os("CI").is_none(), "CI must have a C++ compiler for the CUDA emulator ({cxx}: {e})");
                eprintln!("CUDA emulator: skipped, no C++ compiler ({cxx}: {e})");
                return None;
            }
            Ok(s) => assert!(s.success(), "{cxx} could not build tests/cuda-emulator/driver.cpp"),
        }
        // The same library answers both names; renamed into place, so a program that has the old
        // one loaded keeps it.
        std::fs::copy(&built, dir.join("libnvrtc.so")).expect("installing libnvrtc.so");
        std::fs::rename(&built, dir.join("libcuda.so")).expect("installing libcuda.so");
        Some(CudaEmulator { dir: dir.to_path_buf() })
    }

    /// Makes `cmd` run on the emulator (its libraries first on the library path, no NVRTC folder
    /// of the real one), building kernels under `kernels`.
    pub fn apply<'a>(&self, cmd: &'a mut Command, kernels: &Path) -> &'a mut Command {
        std::fs::create_dir_all(kernels).expect("creating the kernels folder");
        let mut library_path = OsString::from(&self.dir);
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
            library_path.push(":");
            library_path.push(old);
        }
        cmd.env("LD_LIBRARY_PATH", library_path).env(KERNELS_ENV, kernels).env_remove(engine::cuda::NVRTC_DIR_ENV)
    }
}
