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
/// The part of the Motorcycle pair (x, y, width, height) stereo tests use on the emulator, which
/// runs a block's threads one at a time.
pub const STEREO_CROP: (u32, u32, u32, u32) = (110, 75, 160, 96);

pub struct CudaEmulator {
    dir: PathBuf,
}

impl CudaEmulator {
    /// Builds the emulator into `cuda-emulator` under `target_tmp` (a test's
    /// `CARGO_TARGET_TMPDIR`; file-locked, so parallel tests share one build). `None`,
    /// with the reason printed, where it cannot run: not x86-64 Linux (its fibers switch stacks in
    /// x86-64 assembly), or no C++ compiler (`CXX`, else `c++`) outside CI; under CI a missing
    /// compiler fails the test.
    pub fn build(target_tmp: &Path) -> Option<CudaEmulator> {
        let dir = &target_tmp.join("cuda-emulator");
        if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            eprintln!("CUDA emulator: skipped, its fibers are written for x86-64 Linux");
            return None;
        }
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda-emulator");
        std::fs::create_dir_all(dir).expect("creating the emulator folder");
        let lock = File::create(dir.join("build.lock")).expect("creating the emulator's lock file");
        lock.lock().expect("locking the emulator folder");
        // CXX may carry arguments ("ccache g++"), as the emulator's NVRTC allows too.
        let cxx = std::env::var("CXX").ok().filter(|c| !c.trim().is_empty()).unwrap_or_else(|| "c++".into());
        let mut words = cxx.split_whitespace();
        let built = dir.join(format!("libcuda.so.{}", std::process::id()));
        let status = Command::new(words.next().unwrap_or("c++"))
            .args(words)
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
        // The same library answers both names; each renamed into place, so a program that has
        // the old one loaded keeps it.
        let copy = dir.join(format!("libnvrtc.so.{}", std::process::id()));
        std::fs::copy(&built, &copy).expect("copying the emulator library");
        std::fs::rename(&copy, dir.join("libnvrtc.so")).expect("installing libnvrtc.so");
        std::fs::rename(&built, dir.join("libcuda.so")).expect("installing libcuda.so");
        Some(CudaEmulator { dir: dir.clone() })
    }

    /// Makes `cmd` run on the emulator (its libraries first on the library path, no NVRTC folder
    /// of the real one, its headers as `CUDA_PATH` for burn's CUDA backend, no failure injected
    /// unless the caller adds one), building kernels under `kernels`.
    pub fn apply<'a>(&self, cmd: &'a mut Command, kernels: &Path) -> &'a mut Command {
        std::fs::create_dir_all(kernels).expect("creating the kernels folder");
        let mut library_path = OsString::from(&self.dir);
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
            library_path.push(":");
            library_path.push(old);
        }
        cmd.env("LD_LIBRARY_PATH", library_path)
            .env(KERNELS_ENV, kernels)
            .env("CUDA_PATH", Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda-emulator"))
            .env_remove(engine::cuda::NVRTC_DIR_ENV)
            .env_remove(FAIL_ENV)
    }

    /// Runs `tests` of the running test binary again in a child process on the emulator (see
    /// [`Self::apply`]), one at a time with their output shown and `env` set; panics unless every
    /// one passes. Returns what the child printed: standard output, standard error.
    pub fn run_tests(&self, tests: &[&str], kernels: &Path, env: &[(&str, &Path)]) -> (String, String) {
        let mut child = Command::new(std::env::current_exe().expect("the test binary's path"));
        child.args(tests).args(["--exact", "--test-threads", "1", "--nocapture"]).envs(env.iter().copied());
        let out = self.apply(&mut child, kernels).output().expect("running tests on the CUDA emulator");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "tests on the CUDA emulator failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains(&format!("test result: ok. {} passed", tests.len())), "{stdout}");
        (stdout, stderr)
    }
}
