//! Rolling per-stage latency percentiles for /diagnostics.
use std::collections::VecDeque;

use engine::StageTimings;

/// Frames kept per stage: about 10 s at 30 Hz.
const WINDOW: usize = 300;

#[derive(Debug, Default)]
pub struct Latencies {
    stages: [VecDeque<f64>; 5],
}

const STAGES: [&str; 5] = ["preprocess", "image_encoder", "cost_map", "post", "total"];

impl Latencies {
    /// One frame's stage timings plus its time from arrival to outputs built (`total`).
    pub fn record(&mut self, t: &StageTimings, total_ms: f64) {
        for (window, v) in self.stages.iter_mut().zip([t.preprocess_ms, t.image_encoder_ms, t.cost_map_ms, t.post_ms, total_ms]) {
            if window.len() == WINDOW {
                window.pop_front();
            }
            window.push_back(v);
        }
    }

    /// `latency_ms.<stage>.p50` / `.p99` over the window.
    pub fn summary(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (name, window) in STAGES.iter().zip(&self.stages) {
            if window.is_empty() {
                continue;
            }
            let mut sorted: Vec<f64> = window.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            out.push((format!("latency_ms.{name}.p50"), percentile(&sorted, 0.50)));
            out.push((format!("latency_ms.{name}.p99"), percentile(&sorted, 0.99)));
        }
        out
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_a_rolling_window() {
        let mut l = Latencies::default();
        for i in 1..=400 {
            let t = StageTimings { preprocess_ms: i as f64, ..Default::default() };
            l.record(&t, 1.0);
        }
        let s: std::collections::HashMap<_, _> = l.summary().into_iter().collect();
        // the window holds 101..=400
        assert_eq!(s["latency_ms.preprocess.p50"], 250.0);
        assert_eq!(s["latency_ms.preprocess.p99"], 397.0);
        assert_eq!(s["latency_ms.total.p99"], 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
