//! Stages 2-4 on the CPU, interleaved row by row: matching cost, semi-global aggregation
//! (Hirschmüller 2008) and disparity selection.
//!
//! Along each path direction r: L_r(p, d) = C(p, d) + min(L_r(q, d), L_r(q, d±1) + P1,
//! min_k L_r(q, k) + P2) - min_k L_r(q, k), with q the predecessor of p on the path; a path
//! starts with L_r = C where q falls outside the image. S(p, d) = sum over paths of L_r(p, d).
//! Each L_r is at most bits + P2, so S fits a u16 (see `MAX_PENALTY`): at 640x480 with D = 128
//! S takes 78 MB. Everything is integer, so the order in which paths are added does not change
//! S, and the order of work is chosen for the memory traffic:
//! - The top-down sweep (vertical, with 8 paths also the two diagonals) and the bottom-up one
//!   run at the same time on opposite halves of the image, then swap halves: one hand-over
//!   instead of a barrier per row, and S rows never shared.
//! - In the first round, a row's costs and its two horizontal paths are computed just before the
//!   sweep reaches it (the next rows while the sweep works on the current ones), so the sweep
//!   finds the row in cache.
//! - In the second round a row is final once swept; its disparity is selected while the sweep
//!   goes on to the next row, again from cache.
//!
//! So S goes to memory once and comes back once; with the stages one after another it went
//! there and back three times and was read a fourth time for selection.
use rayon::prelude::*;

use crate::isa::{Isa, dispatch};
use super::params::{Paths, StereoParams};
use super::cost;
use super::select::{self, RightBest, Select};

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
struct Grid<'a> {
    width: usize,
    disps: usize,
    pen: Penalties<'a>,
}

/// Census codes of both images, one per pixel, and the code length.
#[derive(Clone, Copy)]
pub(crate) struct Census<'a> {
    pub left: &'a [u64],
    pub right: &'a [u64],
    pub bits: u8,
}

/// Fills `cost` and `sum` (W*H*D each; their old contents do not matter) and writes each
/// pixel's disparity into `out` (NaN where invalid).
#[allow(clippy::too_many_arguments)]
pub(crate) fn match_rows(isa: Isa, census: Census<'_>, width: usize, disps: usize, pen: Penalties<'_>, paths: Paths, sel: Select, cost: &mut [u8], sum: &mut [u16], out: &mut [f32]) {
    let grid = Grid { width, disps, pen };
    // Predecessor x offsets of the sweeps: vertical, then the diagonals.
    let dxs: &[isize] = match paths {
        Paths::Four => &[0],
        Paths::Eight => &[0, 1, -1],
    };
    let row_len = width * disps;
    let half = sum.len() / row_len / 2;
    let prep = Prep { isa, grid: &grid, census };
    let (mut down, mut up) = (Sweep::new(&grid, dxs, true), Sweep::new(&grid, dxs, false));
    let (cost_top, cost_bottom) = cost.split_at_mut(half * row_len);
    let (sum_top, sum_bottom) = sum.split_at_mut(half * row_len);
    rayon::join(|| down.first_round(isa, &prep, cost_top, sum_top, 0), || up.first_round(isa, &prep, cost_bottom, sum_bottom, half));
    let (out_top, out_bottom) = out.split_at_mut(half * width);
    rayon::join(
        || down.second_round(isa, &sel, cost_bottom, sum_bottom, out_bottom, half),
        || up.second_round(isa, &sel, cost_top, sum_top, out_top, 0),
    );
}

/// A row to prepare: image row index, its costs and its S (both still to be written).
type NewRow<'r> = (usize, (&'r mut [u8], &'r mut [u16]));
/// A prepared row: image row index, its costs, its S.
type ReadyRow<'r> = (usize, &'r [u8], &'r mut [u16]);

/// What a row needs before the sweeps reach it: its costs and its horizontal paths.
struct Prep<'g, 'a> {
    isa: Isa,
    grid: &'g Grid<'a>,
    census: Census<'a>,
}

impl Prep<'_, '_> {
    /// Prepares `rows` (image row, its costs, its S), in parallel where there are several;
    /// hands the costs back shared.
    fn rows<'r>(&self, rows: Vec<NewRow<'r>>, scratch: &mut RowScratch) -> Vec<ReadyRow<'r>> {
        let one = |scratch: &mut RowScratch, (y, (c, s)): NewRow<'r>| {
            self.row(y, c, s, scratch);
            (y, &*c, s)
        };
        if rows.len() == 1 {
            return rows.into_iter().map(|r| one(scratch, r)).collect();
        }
        rows.into_par_iter().map_init(RowScratch::default, one).collect()
    }

    /// Costs of row `y` into `cost`, then its left-right (stored) and right-left (added) paths
    /// into `sum`.
    fn row(&self, y: usize, cost: &mut [u8], sum: &mut [u16], scratch: &mut RowScratch) {
        let (w, nd) = (self.grid.width, self.grid.disps);
        let Census { left, right, bits } = self.census;
        let RowScratch { reversed, paths } = scratch;
        cost::cost_row(self.isa, cost, &left[y * w..][..w], &right[y * w..][..w], reversed, nd, bits);
        // The two path buffers at least 128 entries apart: the vectorised step checks at run
        // time that its buffers are a few vectors apart and takes a scalar loop otherwise,
        // which two small separate allocations next to each other (D = 48) made 2x slower.
        let stride = (nd + 2).next_multiple_of(64) + 64;
        // The guards are never overwritten, so buffers of the right length are ready.
        if paths.len() != 2 * stride {
            *paths = vec![GUARD; 2 * stride];
        }
        let (a, b) = paths.split_at_mut(stride);
        horizontal_row(self.isa, self.grid, y, cost, sum, &mut a[..nd + 2], &mut b[..nd + 2]);
    }
}

/// Buffers for preparing a row, kept from row to row.
#[derive(Default)]
struct RowScratch {
    reversed: Vec<u64>,
    paths: Vec<u16>,
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

dispatch!(fn horizontal_row => horizontal_row_impl(grid: &Grid<'_>, y: usize, cost: &[u8], sum: &mut [u16], a: &mut [u16], b: &mut [u16]));

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

/// Rows in the order a sweep visits them, each with its image row index.
fn in_order<T>(down: bool, y0: usize, rows: impl Iterator<Item = T>) -> Vec<(usize, T)> {
    let mut rows: Vec<_> = rows.enumerate().map(|(i, r)| (y0 + i, r)).collect();
    if !down {
        rows.reverse();
    }
    rows
}

/// A vertical sweep (with its diagonals) and its scratch for preparing rows and selecting.
struct Sweep<'g, 'a> {
    paths: PathRows<'g, 'a>,
    scratch: RowScratch,
    right: RightBest,
}

impl<'g, 'a> Sweep<'g, 'a> {
    fn new(grid: &'g Grid<'a>, dxs: &'g [isize], down: bool) -> Self {
        let n = grid.width * dxs.len();
        let slots = n * (grid.disps + 2);
        let paths = PathRows { grid, dxs, down, done: 0, prev: vec![GUARD; slots], cur: vec![GUARD; slots], prev_min: vec![0; n], cur_min: vec![0; n] };
        Sweep { paths, scratch: RowScratch::default(), right: RightBest::default() }
    }

    /// Rows `cost` and `sum` hold, from image row `y0` on, none prepared yet: each block of
    /// rows is prepared (in parallel) while the sweep works through the block before.
    fn first_round(&mut self, isa: Isa, prep: &Prep<'_, '_>, cost: &mut [u8], sum: &mut [u16], y0: usize) {
        let row_len = self.paths.grid.width * self.paths.grid.disps;
        let block = (rayon::current_num_threads() / 2).max(1);
        let mut rows = in_order(self.paths.down, y0, cost.chunks_mut(row_len).zip(sum.chunks_mut(row_len))).into_iter();
        let scratch = &mut self.scratch;
        let mut ready = prep.rows(rows.by_ref().take(block).collect(), scratch);
        while !ready.is_empty() {
            let next: Vec<_> = rows.by_ref().take(block).collect();
            let paths = &mut self.paths;
            let sweep = move || ready.into_iter().for_each(|(y, c, s)| paths.advance(isa, y, c, s));
            ready = rayon::join(|| prep.rows(next, scratch), sweep).0;
        }
    }

    /// The same rows, prepared and swept by the other sweep: after this sweep they are final,
    /// and each row's disparity goes into its row of `out` while the next row is swept.
    fn second_round(&mut self, isa: Isa, sel: &Select, cost: &[u8], sum: &mut [u16], out: &mut [f32], y0: usize) {
        let (w, nd) = (self.paths.grid.width, self.paths.grid.disps);
        let rows = in_order(self.paths.down, y0, cost.chunks(w * nd).zip(sum.chunks_mut(w * nd)).zip(out.chunks_mut(w)));
        let mut pending: Option<(&[u16], &mut [f32])> = None;
        for (y, ((c, s), o)) in rows {
            match pending.take() {
                Some((ps, po)) => {
                    let right = &mut self.right;
                    rayon::join(|| select::select_row(isa, sel, ps, po, right), || self.paths.advance(isa, y, c, s));
                }
                None => self.paths.advance(isa, y, c, s),
            }
            let s: &[u16] = s;
            pending = Some((s, o));
        }
        if let Some((ps, po)) = pending {
            select::select_row(isa, sel, ps, po, &mut self.right);
        }
    }
}

/// Path costs of one sweep: rows one after another, as each needs the one before; the pixels
/// of a row in parallel chunks.
struct PathRows<'g, 'a> {
    grid: &'g Grid<'a>,
    dxs: &'g [isize],
    down: bool,
    /// Rows done so far.
    done: usize,
    /// Path costs of the last row for every direction, laid out [x][direction][guard, d.., guard].
    prev: Vec<u16>,
    cur: Vec<u16>,
    prev_min: Vec<u16>,
    cur_min: Vec<u16>,
}

impl PathRows<'_, '_> {
    /// Adds this sweep's paths at image row `y` (costs `cost`) to its S row `sum`.
    fn advance(&mut self, isa: Isa, y: usize, cost: &[u8], sum: &mut [u16]) {
        let (w, nd, np) = (self.grid.width, self.grid.disps, self.dxs.len());
        let slot = nd + 2;
        let chunk = (w / (2 * rayon::current_num_threads())).max(16);
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
