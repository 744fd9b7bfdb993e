//! An image encoder that keeps frames flowing when the backend asked for fails: candidates are
//! tried in order at start-up, and an error while running moves on to the next candidate for
//! that frame and the ones after it. Each failure is logged and kept as the reason, which the
//! node publishes on /diagnostics.
use crate::backend::{Encoded, ImageBackend};
use crate::error::{EngineError, Result};
use crate::preprocess::NetInput;

/// Opens one backend (only when it is needed).
pub type Opener = Box<dyn FnOnce() -> Result<Box<dyn ImageBackend>> + Send>;

pub struct FallbackBackend {
    current: Box<dyn ImageBackend>,
    /// Not yet tried, in order.
    rest: Vec<(&'static str, Opener)>,
    /// What failed, in order, as "name: error".
    failures: Vec<String>,
    reason: Option<String>,
}

impl FallbackBackend {
    /// The first candidate that opens; an error naming every failure when none does.
    pub fn start(candidates: Vec<(&'static str, Opener)>) -> Result<Self> {
        let mut rest = candidates;
        rest.reverse(); // popped from the end
        let mut failures = Vec::new();
        let current = next(&mut rest, &mut failures)?;
        let mut backend = FallbackBackend { current, rest, failures, reason: None };
        backend.update_reason();
        Ok(backend)
    }

    fn update_reason(&mut self) {
        self.reason = (!self.failures.is_empty()).then(|| format!("running on {}: {}", self.current.name(), self.failures.join("; ")));
    }
}

/// Opens candidates from the end of `rest` until one works, logging and keeping each failure.
fn next(rest: &mut Vec<(&'static str, Opener)>, failures: &mut Vec<String>) -> Result<Box<dyn ImageBackend>> {
    while let Some((name, open)) = rest.pop() {
        match open() {
            Ok(backend) => {
                if !failures.is_empty() {
                    tracing::warn!("image encoder on {name} ({})", failures.join("; "));
                }
                return Ok(backend);
            }
            Err(e) => {
                tracing::warn!("image encoder: {name} unavailable: {e}");
                failures.push(format!("{name} unavailable: {e}"));
            }
        }
    }
    Err(EngineError::Runtime(format!("no image encoder backend could be opened: {}", failures.join("; "))))
}

impl ImageBackend for FallbackBackend {
    fn name(&self) -> &'static str {
        self.current.name()
    }

    fn encode(&mut self, input: &NetInput) -> Result<Encoded> {
        loop {
            match self.current.encode(input) {
                Ok(maps) => return Ok(maps),
                Err(e) if self.rest.is_empty() => return Err(e),
                Err(e) => {
                    let failed = self.current.name();
                    tracing::error!("image encoder on {failed} failed mid-run ({e}); moving to the next backend");
                    self.failures.push(format!("{failed} failed while running: {e}"));
                    self.current = next(&mut self.rest, &mut self.failures)?;
                    self.update_reason();
                }
            }
        }
    }

    fn fallback_reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The current backend's; a failure here does not move along the chain (the caller goes on
    /// through host memory and [`Self::encode`], which does).
    fn device_input(&mut self, width: usize, height: usize) -> Option<Result<crate::backend::DeviceTensor>> {
        self.current.device_input(width, height)
    }

    fn encode_device(&mut self, take: &mut dyn FnMut(&[crate::backend::DeviceTensor]) -> Result<()>) -> Result<Option<crate::costmap::EmbeddingMap>> {
        self.current.encode_device(take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::costmap::EmbeddingMap;
    use crate::manifest::Layout;
    use crate::preprocess::ContentRect;

    /// Stands in for a GPU backend (none exists here): answers `ok_calls` times, then fails as a
    /// lost device would. The real CPU backend is exercised through the pipeline's tests.
    struct StandIn {
        name: &'static str,
        ok_calls: usize,
        value: f32,
    }

    impl ImageBackend for StandIn {
        fn name(&self) -> &'static str {
            self.name
        }
        fn encode(&mut self, _input: &NetInput) -> Result<Encoded> {
            if self.ok_calls == 0 {
                return Err(EngineError::Gpu("device lost".into()));
            }
            self.ok_calls -= 1;
            let levels = vec![EmbeddingMap { stride: 1, offset: 0.0, width: 1, height: 1, dim: 1, data: vec![self.value] }];
            Ok(Encoded { levels, depth: None })
        }
    }

    fn stand_in(name: &'static str, ok_calls: usize, value: f32) -> (&'static str, Opener) {
        (name, Box::new(move || Ok(Box::new(StandIn { name, ok_calls, value }) as Box<dyn ImageBackend>)))
    }

    fn input() -> NetInput {
        NetInput { width: 1, height: 1, layout: Layout::Nchw, data: vec![0.0; 3], content: ContentRect { x: 0.0, y: 0.0, width: 1.0, height: 1.0 } }
    }

    #[test]
    fn a_backend_that_will_not_open_is_skipped_with_its_reason() {
        let failing: (&'static str, Opener) = ("tensorrt", Box::new(|| Err(EngineError::TensorRt("libnvinfer not found".into()))));
        let mut b = FallbackBackend::start(vec![failing, stand_in("cpu", 10, 2.0)]).unwrap();
        assert_eq!(b.name(), "cpu");
        assert_eq!(b.encode(&input()).unwrap().levels[0].data, [2.0]);
        let reason = b.fallback_reason().unwrap();
        assert!(reason.contains("running on cpu") && reason.contains("tensorrt unavailable: TensorRT: libnvinfer not found"), "{reason}");
    }

    #[test]
    fn a_failure_while_running_moves_on_and_the_frame_still_comes_out() {
        let mut b = FallbackBackend::start(vec![stand_in("tensorrt", 2, 1.0), stand_in("cpu", 10, 2.0)]).unwrap();
        assert!(b.fallback_reason().is_none());
        let values: Vec<f32> = (0..4).map(|_| b.encode(&input()).unwrap().levels[0].data[0]).collect();
        assert_eq!(values, [1.0, 1.0, 2.0, 2.0], "third frame re-run on the next backend");
        assert_eq!(b.name(), "cpu");
        assert!(b.fallback_reason().unwrap().contains("tensorrt failed while running: CUDA: device lost"));
    }

    #[test]
    fn when_nothing_opens_every_failure_is_named() {
        let a: (&'static str, Opener) = ("tensorrt", Box::new(|| Err(EngineError::TensorRt("no GPU".into()))));
        let b: (&'static str, Opener) = ("cpu", Box::new(|| Err(EngineError::Runtime("library missing".into()))));
        let e = FallbackBackend::start(vec![a, b]).err().unwrap().to_string();
        assert!(e.contains("tensorrt unavailable: TensorRT: no GPU") && e.contains("cpu unavailable: ONNX Runtime: library missing"), "{e}");
    }
}
