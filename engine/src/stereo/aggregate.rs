//! Stage 3: semi-global aggregation (Hirschmüller 2008), the path maths; `schedule.rs` says in
//! what order the rows are worked through.
//!
//! Along each path direction r: L_r(p, d) = C(p, d) + min(L_r(q, d), L_r(q, d±1) + P1,
//! min_k L_r(q, k) + P2) - min_k L_r(q, k), with q the predecessor of p on the path; a path
//! starts with L_r = C where q falls outside the image. S(p, d) = sum over paths of L_r(p, d).
//! Each L_r is at most bits + P2, so S fits a u16 (see `MAX_PENALTY`): at 640x480 with D = 128
//! S takes 78 MB. Everything is integer, so the order in which paths are added does not change
//! S.
use rayon::prelude::*;

use crate::isa::{Isa, dispatch};
use super::params::StereoParams;

/// P1/P2 for the step between two neighbouring left-image pixels.
#[derive(Clone, Copy)]
pub(crate) struct Penalties<'a> {
    left: &'a [u8],
    labels: Option<&'a [u16]>,
    p1: u16,
    p2: u16,
    gradient: Option<u16>,
    border_p1: u16,
    border_p2: u16,
}

impl<'a> Penalties<'a> {
    pub(crate) fn new(params: &StereoParams, left: &'a [u8], labels: Option<&'a [u16]>) -> Self {
        Penalties {
            left,
            labels,
            p1: params.p1,
            p2: params.p2,
            gradient: params.p2_gradient,
            border_p1: params.label_border_p1,
            border_p2: params.label_border_p2,
        }
    }

    /// (P1, P2) between pixel `p` and its predecessor `q` (linear image indices).
    #[inline(always)]
    fn at(&self, p: usize, q: usize) -> (u16, u16) {
        if let Some(labels) = self.labels
            && labels[p] != labels[q]
        {
            return (self.border_p1, self.border_p2);
        }
        let p2 = match self.gradient {
            None => self.p2,
            Some(g) => {
                let (g, diff) = (u32::from(g), u32::from(self.left[p].abs_diff(self.left[q])));
                // Integer division: the GPU port must reproduce it exactly.
                ((u32::from(self.p2) * g / (g + diff)) as u16).max(self.p1)
            }
        };
        (self.p1, p2)
    }
}

/// Geometry shared by the kernels.
#[derive(Clone, Copy)]
pub(super) struct Grid<'a> {
    pub width: usize,
    pub disps: usize,
    pub pen: Penalties<'a>,
}

/// Path cost buffers keep one guard entry each side of the D levels (`[guard, L(0..D), guard]`)
/// so that L(d-1) and L(d+1) need no edge cases. The guard never wins a minimum: with
/// L <= 63 + P2 and P1, P2 <= 8000, min Lp + P2 stays below it, and guard + P1 fits a u16.
pub(crate) const GUARD: u16 = 0x7FFF;

/// First pixel of a path: L = C. `cur` has the guards, `sum` not. ADD: add L to `sum`, else
/// store it there (the first path of a frame, so that `sum` needs no clearing).
#[inline(always)]
fn start<const ADD: bool>(cost: &[u8], cur: &mut [u16], sum: &mut [u16]) -> u16 {
    let n = cost.len();
    let (cur, sum) = (&mut cur[1..=n], &mut sum[..n]);
    let mut min = u16::MAX;
    for d in 0..n {
        let l = u16::from(cost[d]);
        cur[d] = l;
        sum[d] = if ADD { sum[d] + l } else { l };
        min = min.min(l);
    }
    min
}

/// One path step: fills `cur` from the predecessor's `prev` (both with guards), adds it to
/// (ADD) or stores it in `sum`, returns min(cur).
#[inline(always)]
fn step<const ADD: bool>(cost: &[u8], prev: &[u16], prev_min: u16, p1: u16, p2: u16, cur: &mut [u16], sum: &mut [u16]) -> u16 {
    let n = cost.len();
    let (lo, mid, hi) = (&prev[..n], &prev[1..=n], &prev[2..n + 2]);
    let (cur, sum) = (&mut cur[1..=n], &mut sum[..n]);
    let jump = prev_min + p2;
    let mut min = u16::MAX;
    for d in 0..n {
        let v = mid[d].min(lo[d] + p1).min(hi[d] + p1).min(jump);
        let l = u16::from(cost[d]) + v - prev_min;
        cur[d] = l;
        sum[d] = if ADD { sum[d] + l } else { l };
        min = min.min(l);
    }
    min
}

dispatch!(pub(super) fn horizontal_row => horizontal_row_impl(grid: &Grid<'_>, y: usize, cost: &[u8], sum: &mut [u16], a: &mut [u16], b: &mut [u16]));

/// Left-right (stores S) then right-left (adds) along row `y` (`cost`, `sum`: that row).
#[inline(always)]
fn horizontal_row_impl(grid: &Grid<'_>, y: usize, cost: &[u8], sum: &mut [u16], a: &mut [u16], b: &mut [u16]) {
    horizontal_pass::<false>(grid, y, cost, sum, a, b);
    horizontal_pass::<true>(grid, y, cost, sum, a, b);
}

#[inline(always)]
fn horizontal_pass<const BACKWARD: bool>(grid: &Grid<'_>, y: usize, cost: &[u8], sum: &mut [u16], a: &mut [u16], b: &mut [u16]) {
    let (w, nd) = (grid.width, grid.disps);
    let (mut prev, mut cur) = (a, b);
    let mut prev_min = 0;
    for i in 0..w {
        let x = if BACKWARD { w - 1 - i } else { i };
        let (c, s) = (&cost[x * nd..][..nd], &mut sum[x * nd..][..nd]);
        prev_min = if i == 0 {
            start::<BACKWARD>(c, cur, s)
        } else {
            let q = if BACKWARD { x + 1 } else { x - 1 };
            let (p1, p2) = grid.pen.at(y * w + x, y * w + q);
            step::<BACKWARD>(c, prev, prev_min, p1, p2, cur, s)
        };
        std::mem::swap(&mut prev, &mut cur);
    }
}

/// The row being swept and the finished row before it.
struct SweepRow<'a> {
    y: usize,
    /// Predecessor row (unused on the first row).
    qy: usize,
    first: bool,
    cost: &'a [u8],
    prev: &'a [u16],
    prev_min: &'a [u16],
    dxs: &'a [isize],
}

/// Path costs of one sweep: rows one after another, as each needs the one before; the pixels
/// of a row in parallel chunks.
pub(super) struct PathRows<'g, 'a> {
    pub grid: &'g Grid<'a>,
    dxs: &'g [isize],
    pub down: bool,
    /// Rows done so far.
    done: usize,
    /// Path costs of the last row for every direction, laid out [x][direction][guard, d.., guard].
    prev: Vec<u16>,
    cur: Vec<u16>,
    prev_min: Vec<u16>,
    cur_min: Vec<u16>,
}

impl<'g, 'a> PathRows<'g, 'a> {
    pub fn new(grid: &'g Grid<'a>, dxs: &'g [isize], down: bool) -> Self {
        let n = grid.width * dxs.len();
        let slots = n * (grid.disps + 2);
        PathRows { grid, dxs, down, done: 0, prev: vec![GUARD; slots], cur: vec![GUARD; slots], prev_min: vec![0; n], cur_min: vec![0; n] }
    }

    /// Adds this sweep's paths at image row `y` (costs `cost`) to its S row `sum`, the
    /// pixels in parallel chunks where `split`.
    pub fn advance(&mut self, isa: Isa, y: usize, cost: &[u8], sum: &mut [u16], split: bool) {
        let (w, nd, np) = (self.grid.width, self.grid.disps, self.dxs.len());
        let slot = nd + 2;
        let chunk = if split { (w / (2 * rayon::current_num_threads())).max(16) } else { w };
        let row = SweepRow {
            y,
            qy: if self.down { y.wrapping_sub(1) } else { y + 1 },
            first: self.done == 0,
            cost,
            prev: &self.prev,
            prev_min: &self.prev_min,
            dxs: self.dxs,
        };
        let grid = self.grid;
        sum.par_chunks_mut(chunk * nd)
            .zip(self.cur.par_chunks_mut(chunk * np * slot).zip(self.cur_min.par_chunks_mut(chunk * np)))
            .enumerate()
            .for_each(|(ci, (s, (c, m)))| sweep_chunk(isa, grid, &row, ci * chunk, s, c, m));
        std::mem::swap(&mut self.prev, &mut self.cur);
        std::mem::swap(&mut self.prev_min, &mut self.cur_min);
        self.done += 1;
    }
}

dispatch!(fn sweep_chunk => sweep_chunk_impl(grid: &Grid<'_>, row: &SweepRow<'_>, x0: usize, sum: &mut [u16], cur: &mut [u16], cur_min: &mut [u16]));

#[inline(always)]
fn sweep_chunk_impl(grid: &Grid<'_>, row: &SweepRow<'_>, x0: usize, sum: &mut [u16], cur: &mut [u16], cur_min: &mut [u16]) {
    let (w, nd, np) = (grid.width, grid.disps, row.dxs.len());
    let slot = nd + 2;
    for (j, s) in sum.chunks_exact_mut(nd).enumerate() {
        let x = x0 + j;
        let c = &row.cost[x * nd..][..nd];
        for (k, &dx) in row.dxs.iter().enumerate() {
            let out = &mut cur[(j * np + k) * slot..][..slot];
            let qx = x.wrapping_add_signed(-dx);
            cur_min[j * np + k] = if row.first || qx >= w {
                start::<true>(c, out, s)
            } else {
                let q = qx * np + k;
                let (p1, p2) = grid.pen.at(row.y * w + x, row.qy * w + qx);
                step::<true>(c, &row.prev[q * slot..][..slot], row.prev_min[q], p1, p2, out, s)
            };
        }
    }
}
