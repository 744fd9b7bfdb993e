//! Stage 4: disparity selection from the aggregated costs S, row by row.
//!
//! In this order, per left pixel: winner-take-all (lowest S, ties to the smaller disparity);
//! uniqueness test; parabola through S(d-1), S(d), S(d+1) for the subpixel offset (not at
//! d = 0 or D-1); then the left-right check against the right image's winner-take-all
//! disparities, read from the same S (right pixel x at disparity d is left pixel x + d).
//! Invalid pixels are NaN.
use super::params::MAX_DISPARITIES;
use crate::isa::dispatch;

#[derive(Clone, Copy)]
pub(crate) struct Select {
    pub disps: usize,
    pub uniqueness: u8,
    pub lr_max_diff: Option<u16>,
}

/// Winner-take-all of the right image, built up from the left pixels' costs: per right pixel
/// the lowest of (cost << 16 | disparity), i.e. the lowest cost and, among equal costs, the
/// smallest disparity, whatever order the left pixels come in.
#[derive(Default)]
pub(crate) struct RightBest {
    packed: Vec<u32>,
}

/// Left pixels visit the right image's entries in this many interleaved passes (x = r, r +
/// STRIDE, ...): consecutive pixels then touch runs a whole vector apart, so each load meets
/// the store before it exactly. Pixel by pixel, each load would straddle two stores from the
/// pixel before, which the CPU cannot forward, and the loop stalled on them.
const STRIDE: usize = 8;

dispatch!(pub(crate) fn select_row => select_row_impl(sel: &Select, sum: &[u16], out: &mut [f32], right: &mut RightBest));

#[inline(always)]
fn select_row_impl(sel: &Select, sum: &[u16], out: &mut [f32], right: &mut RightBest) {
    let nd = sel.disps;
    for (x, o) in out.iter_mut().enumerate() {
        let s = &sum[x * nd..][..nd];
        let (min, best) = argmin(s);
        *o = if best > x || !unique(s, best, min, sel.uniqueness) { f32::NAN } else { subpixel(s, best) };
    }
    let Some(max_diff) = sel.lr_max_diff else { return };
    // Right image: right pixel xr at disparity d is left pixel xr + d. Stored mirrored
    // (entry w-1-xr) so that a left pixel's costs update a forward run of entries.
    let w = out.len();
    let packed = &mut right.packed;
    packed.clear();
    packed.resize(w, u32::MAX);
    for first in 0..STRIDE.min(w) {
        for x in (first..w).step_by(STRIDE) {
            let m = nd.min(x + 1);
            let run = &mut packed[w - 1 - x..][..m];
            for (d, (p, &v)) in run.iter_mut().zip(&sum[x * nd..][..m]).enumerate() {
                *p = (*p).min(pack(v, d));
            }
        }
    }
    for (x, o) in out.iter_mut().enumerate() {
        if o.is_nan() {
            continue;
        }
        // Round half up, written out so that the GPU port can do the same (floorf(d + 0.5f)).
        let d = (*o + 0.5).floor() as usize;
        if d > x || ((packed[w - 1 - (x - d)] & 0xFFFF) as u16).abs_diff(d as u16) > max_diff {
            *o = f32::NAN;
        }
    }
}

/// Cost in the high half, level in the low half: the smallest packed value is the lowest cost
/// and, among equal costs, the smallest disparity.
#[inline(always)]
fn pack(v: u16, d: usize) -> u32 {
    (u32::from(v) << 16) | d as u32
}

/// (lowest cost, its smallest disparity): the lowest cost, then the lowest level that has it,
/// two min reductions on 16-bit lanes (half the vector work of one on packed 32-bit values).
#[inline(always)]
fn argmin(s: &[u16]) -> (u16, usize) {
    let min = s.iter().copied().fold(u16::MAX, u16::min);
    let mut best = u16::MAX;
    for (&v, &d) in s.iter().zip(&LEVELS[..s.len()]) {
        best = best.min(if v == min { d } else { u16::MAX });
    }
    (min, usize::from(best))
}

/// 0, 1, 2, ...: each level's disparity, to zip with (an index counter would not vectorise
/// on 16-bit lanes).
static LEVELS: [u16; MAX_DISPARITIES] = {
    let mut levels = [0; MAX_DISPARITIES];
    let mut d = 0;
    while d < MAX_DISPARITIES {
        levels[d] = d as u16;
        d += 1;
    }
    levels
};

/// OpenCV's rule: every level more than one away from the best must cost at least
/// best * 100 / (100 - uniqueness). Counted in one pass over all levels (the levels that fall
/// short, less those next to the best), which vectorises where two partial minima did not.
#[inline(always)]
fn unique(s: &[u16], best: usize, min: u16, uniqueness: u8) -> bool {
    if uniqueness == 0 {
        return true;
    }
    // v * (100 - u) < min * 100  <=>  v < ceil(min * 100 / (100 - u))  <=>  v <= bound.
    let limit = (u32::from(min) * 100).div_ceil(100 - u32::from(uniqueness));
    let Some(bound) = limit.checked_sub(1) else { return true };
    let bound = bound.min(u32::from(u16::MAX)) as u16;
    let short = s.iter().fold(0u16, |n, &v| n + u16::from(v <= bound));
    let near = (best.saturating_sub(1)..(best + 2).min(s.len())).filter(|&d| s[d] <= bound).count() as u16;
    short == near
}

#[inline(always)]
fn subpixel(s: &[u16], best: usize) -> f32 {
    if best == 0 || best + 1 == s.len() {
        return best as f32;
    }
    let (c0, c1, c2) = (f32::from(s[best - 1]), f32::from(s[best]), f32::from(s[best + 1]));
    let denom = c0 - 2.0 * c1 + c2;
    // c1 is the minimum, so denom >= 0 and the offset lies in [-0.5, 0.5].
    if denom > 0.0 { best as f32 + (c0 - c2) / (2.0 * denom) } else { best as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parabola_vertex() {
        // S = 16 (d - 2.25)^2 sampled at 1, 2, 3 -> vertex at 2.25.
        let s = [100, 25, 1, 9, 100, 100, 100, 100];
        let v = subpixel(&s, 2);
        assert!((v - 2.25).abs() < 1e-6, "{v}");
        assert_eq!(subpixel(&s, 0), 0.0);
    }

    #[test]
    fn uniqueness_needs_a_margin_away_from_the_neighbours() {
        let s = [50, 10, 11, 60, 60, 60, 60, 60];
        assert!(unique(&s, 1, 10, 10)); // 11 is a neighbour, 50 is far above
        let s = [50, 10, 11, 60, 60, 60, 10, 60];
        assert!(!unique(&s, 1, 10, 10)); // a second minimum at d = 6
        assert!(unique(&s, 1, 10, 0));
    }
}
