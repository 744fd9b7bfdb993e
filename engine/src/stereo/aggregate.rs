//! Stage 3: semi-global aggregation (Hirschmüller 2008).
//!
//! Along each path direction r: L_r(p, d) = C(p, d) + min(L_r(q, d), L_r(q, d±1) + P1,
//! min_k L_r(q, k) + P2) - min_k L_r(q, k), with q the predecessor of p on the path; a path
//! starts with L_r = C where q falls outside the image. S(p, d) = sum over paths of L_r(p, d).
//! Each L_r is at most bits + P2, so S fits a u16 (see `MAX_PENALTY`): at 640x480 with D = 128
//! S takes 78 MB. Everything is integer, so the order in which paths are added does not change
//! S; here: left-right then right-left per row, then the top-down sweep (vertical, then the two
//! diagonals) and the bottom-up one, interleaved by image halves.
use rayon::prelude::*;

use crate::isa::{Isa, dispatch};
use super::params::{Paths, StereoParams};
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

/// Aggregates `cost` into `sum` (same size; its old contents do not matter) and selects each
/// row's disparity into `out` as soon as the row's last path is added, while its S is still in
/// cache: reading the 78 MB of S back from memory afterwards cost more than the selection.
pub(crate) fn aggregate_and_select(isa: Isa, cost: &[u8], width: usize, disps: usize, pen: Penalties<'_>, paths: Paths, sel: Select, sum: &mut [u16], out: &mut [f32]) {
    let grid = Grid { width, disps, pen };
    let row_len = width * disps;
    sum.par_chunks_mut(row_len).zip(cost.par_chunks(row_len)).enumerate().for_each_init(
        || (vec![GUARD; disps + 2], vec![GUARD; disps + 2]),
        |(a, b), (y, (s, c))| horizontal_row(isa, &grid, y, c, s, a, b),
    );
    // Predecessor x offsets of the sweeps: vertical, then the diagonals.
    let dxs: &[isize] = match paths {
        Paths::Four => &[0],
        Paths::Eight => &[0, 1, -1],
    };
    // The top-down and bottom-up sweeps run at the same time on opposite halves of the image,
    // then swap halves: one hand-over instead of a barrier per row, and S rows never shared.
    // In the second round each row is final once swept, and its selection is spawned.
    let height = cost.len() / row_len;
    let half = height / 2;
    let (mut down, mut up) = (Sweep::new(&grid, dxs, true), Sweep::new(&grid, dxs, false));
    let (top, bottom) = sum.split_at_mut(half * row_len);
    rayon::join(|| down.rows(isa, cost, top, 0, |_, _| {}), || up.rows(isa, cost, bottom, half, |_, _| {}));
    let (out_top, out_bottom) = out.split_at_mut(half * width);
    rayon::scope(|scope| {
        rayon::join(
            || down.rows(isa, cost, bottom, half, select_into(scope, isa, sel, out_bottom, true)),
            || up.rows(isa, cost, top, 0, select_into(scope, isa, sel, out_top, false)),
        );
    });
}

/// What a sweep calls after each final row (rows come in the sweep's order): spawns that
/// row's selection into its row of `out`.
fn select_into<'a, 's>(
    scope: &'a rayon::Scope<'s>,
    isa: Isa,
    sel: Select,
    out: &'s mut [f32],
    down: bool,
) -> impl FnMut(usize, &'s [u16]) + Send + use<'a, 's> {
    let mut rows: Vec<_> = out.chunks_mut(sel.width).collect();
    if !down {
        rows.reverse();
    }
    let mut rows = rows.into_iter();
    move |_, s| {
        if let Some(o) = rows.next() {
            scope.spawn(move |_| select::select_row(isa, &sel, s, o, &mut RightBest::default()));
        }
    }
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

/// A vertical sweep (with its diagonals): rows one after another, as each needs the one
/// before; the pixels of a row in parallel chunks.
struct Sweep<'g, 'a> {
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

impl<'g, 'a> Sweep<'g, 'a> {
    fn new(grid: &'g Grid<'a>, dxs: &'g [isize], down: bool) -> Self {
        let n = grid.width * dxs.len();
        let slots = n * (grid.disps + 2);
        Sweep { grid, dxs, down, done: 0, prev: vec![GUARD; slots], cur: vec![GUARD; slots], prev_min: vec![0; n], cur_min: vec![0; n] }
    }

    /// Sweeps the image rows that `sum` holds (starting at row `y0`), in the sweep's direction;
    /// they must continue where the previous call stopped. `swept(y, S row)` follows each row.
    fn rows<'s>(&mut self, isa: Isa, cost: &[u8], sum: &'s mut [u16], y0: usize, mut swept: impl FnMut(usize, &'s [u16])) {
        let (w, nd, np) = (self.grid.width, self.grid.disps, self.dxs.len());
        let (row_len, slot) = (w * nd, nd + 2);
        let chunk = (w / (2 * rayon::current_num_threads())).max(16);
        let mut rows: Vec<&'s mut [u16]> = sum.chunks_mut(row_len).collect();
        if !self.down {
            rows.reverse();
        }
        let count = rows.len();
        for (i, s) in rows.into_iter().enumerate() {
            let y = if self.down { y0 + i } else { y0 + count - 1 - i };
            let row = SweepRow {
                y,
                qy: if self.down { y.wrapping_sub(1) } else { y + 1 },
                first: self.done == 0,
                cost: &cost[y * row_len..][..row_len],
                prev: &self.prev,
                prev_min: &self.prev_min,
                dxs: self.dxs,
            };
            let grid = self.grid;
            s.par_chunks_mut(chunk * nd)
                .zip(self.cur.par_chunks_mut(chunk * np * slot).zip(self.cur_min.par_chunks_mut(chunk * np)))
                .enumerate()
                .for_each(|(ci, (s, (c, m)))| sweep_chunk(isa, grid, &row, ci * chunk, s, c, m));
            std::mem::swap(&mut self.prev, &mut self.cur);
            std::mem::swap(&mut self.prev_min, &mut self.cur_min);
            self.done += 1;
            swept(y, s);
        }
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
