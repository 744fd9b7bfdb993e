//! `ovseg devices`: what each accelerated backend finds on this machine, and what
//! `--backend auto` (the node's default) takes, with the reason for each part that is missing.
use anyhow::Result;
use serde_json::{Value, json};

/// `{"ok": true, "found": ...}`, or `{"ok": false, "why": ...}`.
#[cfg(any(feature = "cuda", feature = "burn-cuda", feature = "tensorrt"))]
fn probe<T>(result: engine::Result<T>, found: impl FnOnce(T) -> Value) -> Value {
    match result {
        Ok(v) => json!({ "ok": true, "found": found(v) }),
        Err(e) => json!({ "ok": false, "why": e.to_string() }),
    }
}

#[cfg(not(all(feature = "cuda", feature = "burn-cuda", feature = "tensorrt")))]
fn not_built(feature: &str) -> Value {
    json!({ "ok": false, "why": format!("this build does not have it (cargo feature `{feature}`)") })
}

#[cfg(feature = "cuda")]
fn cuda() -> Value {
    use engine::cuda;
    json!({
        "device": probe(cuda::device_identity(), |(name, (major, minor))| json!(format!("{name} (sm_{major}{minor})"))),
        "nvrtc": probe(cuda::nvrtc_version(), |(major, minor)| json!(format!("{major}.{minor}"))),
        "scoring_kernels": probe(cuda::CudaScorer::new(), |_| json!("compiled for the device")),
        "stereo_kernels": probe(cuda::CudaStereoMatcher::new(Default::default()), |_| json!("compiled for the device")),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Value {
    not_built("cuda")
}

#[cfg(feature = "burn-cuda")]
fn burn_cuda() -> Value {
    probe(engine::cuda::burn_cuda_ready(), |headers| json!({ "cuda_headers": headers }))
}

#[cfg(not(feature = "burn-cuda"))]
fn burn_cuda() -> Value {
    not_built("burn-cuda")
}

#[cfg(feature = "tensorrt")]
fn tensorrt() -> Value {
    use engine::tensorrt::{library, onnxruntime_providers};
    json!({
        "libnvinfer": probe(library::version(&library::candidates()), |v| json!(v.to_string())),
        "onnxruntime": probe(onnxruntime_providers(), |(library, tensorrt, cuda)| {
            json!({ "library": library, "tensorrt_provider": tensorrt, "cuda_provider": cuda })
        }),
    })
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt() -> Value {
    not_built("tensorrt")
}

pub fn run() -> Result<()> {
    let scoring = engine::scoring::scorer_for(engine::BackendKind::Auto)?.name();
    let stereo = engine::stereo::matcher_for("auto", &Default::default())?.device();
    eprintln!("backend auto: scoring on {scoring}, stereo on {stereo}");
    let mut report = json!({
        "auto": { "scoring": scoring, "stereo": stereo },
        "cuda": cuda(),
        "burn_cuda": burn_cuda(),
        "tensorrt": tensorrt(),
    });
    crate::render::stamp(&mut report, "devices");
    crate::render::emit_json(&report, None)
}
