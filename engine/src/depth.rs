//! Depth conditioned on the segmentation: no depth where the label says there can be none
//! (unknown, sky), noise filtered and small holes filled only among pixels of one label, so
//! depth never bleeds across an object border.
use rayon::prelude::*;

use crate::post::UNKNOWN;

/// Labels that get no depth unless the user says otherwise: never obstacles.
pub const DEFAULT_NO_DEPTH_LABELS: &[&str] = &["sky"];

/// Per label name, whether it is in `list` (lower-case names), ignoring case and surrounding
/// spaces in the label.
pub fn labels_in(names: &[String], list: &[impl AsRef<str>]) -> Vec<bool> {
    names.iter().map(|n| {
        let n = n.trim().to_lowercase();
        list.iter().any(|l| l.as_ref() == n)
    }).collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct DepthConditioning {
    /// Half-size of the per-label median window (0 = no filtering).
    pub median_radius: usize,
    /// Half-size of the window a hole is filled from (0 = no filling).
    pub fill_radius: usize,
    /// Same-label measurements a hole needs around it before it is filled.
    pub fill_min_neighbours: usize,
}

impl Default for DepthConditioning {
    fn default() -> Self {
        DepthConditioning { median_radius: 1, fill_radius: 2, fill_min_neighbours: 3 }
    }
}

/// Conditions `metres` (row-major `width` x `height`, NaN = no measurement) on `labels` (same
/// size). `no_depth[id]` marks labels that never get depth (e.g. sky); unknown pixels never do.
pub fn condition(metres: &[f32], labels: &[u16], width: usize, no_depth: &[bool], params: &DepthConditioning) -> Vec<f32> {
    let keeps = |l: u16| l != UNKNOWN && !no_depth.get(l as usize).copied().unwrap_or(false);
    let valid: Vec<f32> = metres
        .iter()
        .zip(labels)
        .map(|(&m, &l)| if keeps(l) && m.is_finite() && m > 0.0 { m } else { f32::NAN })
        .collect();
    // The median only where there is a measurement; filling only where there is none (and
    // only for labels that may have depth).
    let filtered = same_label_pass(&valid, labels, width, params.median_radius, |own| !own.is_nan(), |_, near| median(near));
    same_label_pass(&filtered, labels, width, params.fill_radius, f32::is_nan, |own, near| {
        if near.len() < params.fill_min_neighbours { own } else { median(near) }
    })
    .into_iter()
    .zip(labels)
    .map(|(d, &l)| if keeps(l) { d } else { f32::NAN })
    .collect()
}

/// For every pixel where `wanted(own value)`, `f(own value, finite values of same-label pixels
/// in the window)`; other pixels keep their value.
fn same_label_pass(
    values: &[f32],
    labels: &[u16],
    width: usize,
    radius: usize,
    wanted: impl Fn(f32) -> bool + Sync,
    f: impl Fn(f32, &mut [f32]) -> f32 + Sync,
) -> Vec<f32> {
    if radius == 0 || width == 0 {
        return values.to_vec();
    }
    let height = values.len() / width;
    let mut out = vec![0.0f32; values.len()];
    out.par_chunks_mut(width).enumerate().for_each(|(y, row)| {
        let mut near = Vec::with_capacity((2 * radius + 1).pow(2));
        for (x, o) in row.iter_mut().enumerate() {
            let i = y * width + x;
            if !wanted(values[i]) {
                *o = values[i];
                continue;
            }
            near.clear();
            for ny in y.saturating_sub(radius)..(y + radius + 1).min(height) {
                for nx in x.saturating_sub(radius)..(x + radius + 1).min(width) {
                    let j = ny * width + nx;
                    if labels[j] == labels[i] && values[j].is_finite() {
                        near.push(values[j]);
                    }
                }
            }
            *o = f(values[i], &mut near);
        }
    });
    out
}

/// Median of a non-empty list (the lower middle for even lengths, so it is always a measured value).
fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    let mid = (v.len() - 1) / 2;
    *v.select_nth_unstable_by(mid, f32::total_cmp).1
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAN: f32 = f32::NAN;

    fn same(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x.is_nan() && y.is_nan()) || x == y)
    }

    #[test]
    fn unknown_and_no_depth_labels_lose_depth_and_zero_is_no_measurement() {
        let metres = [1.0, 2.0, 0.0, 4.0];
        let labels = [0, UNKNOWN, 0, 1];
        let params = DepthConditioning { median_radius: 0, fill_radius: 0, fill_min_neighbours: 1 };
        let out = condition(&metres, &labels, 4, &[false, true], &params);
        assert!(same(&out, &[1.0, NAN, NAN, NAN]), "{out:?}");
    }

    #[test]
    fn median_stays_inside_a_label_and_removes_a_spike() {
        // 5x3: label 0 on the left three columns at 2 m with a 9 m spike, label 1 at 5 m.
        let labels = [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1];
        let metres = [2.0, 2.0, 2.0, 5.0, 5.0, 2.0, 9.0, 2.0, 5.0, 5.0, 2.0, 2.0, 2.0, 5.0, 5.0];
        let params = DepthConditioning { median_radius: 1, fill_radius: 0, fill_min_neighbours: 1 };
        let out = condition(&metres, &labels, 5, &[], &params);
        let expect: Vec<f32> = labels.iter().map(|&l| if l == 0 { 2.0 } else { 5.0 }).collect();
        // The border column keeps 2 m: a plain median would pull in the 5 m label next to it.
        assert!(same(&out, &expect), "{out:?}");
    }

    #[test]
    fn holes_fill_from_their_own_label_only() {
        // 3x3 of label 0 at 3 m with a hole in the middle; a label-1 pixel next to it at 8 m.
        let labels = [0, 0, 0, 0, 0, 1, 0, 0, 0];
        let metres = [3.0, 3.0, 3.0, 3.0, NAN, 8.0, 3.0, 3.0, 3.0];
        let params = DepthConditioning { median_radius: 0, fill_radius: 1, fill_min_neighbours: 3 };
        let out = condition(&metres, &labels, 3, &[], &params);
        assert_eq!(out[4], 3.0);
        assert_eq!(out[5], 8.0);
        // Too few same-label neighbours: the hole stays.
        let params = DepthConditioning { fill_min_neighbours: 8, ..params };
        assert!(condition(&metres, &labels, 3, &[], &params)[4].is_nan());
    }
}
