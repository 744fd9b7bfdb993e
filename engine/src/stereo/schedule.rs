//! Stages 2-4 on the CPU, interleaved row by row: matching costs (`cost.rs`), aggregation
//! (`aggregate.rs`) and selection (`select.rs`). The sum S is the same in any order of work
//! (integers), so the order is chosen for the memory traffic:
//! - The top-down sweep (vertical, with 8 paths also the two diagonals) and the bottom-up one
//!   run at the same time on opposite halves of the image, then swap halves: one hand-over
//!   instead of a barrier per row, and S rows never shared.
//! - In the first round, a row's costs and its two horizontal paths are computed just before the
//!   sweep reaches it (the next rows while the sweep works on the current ones), so the sweep
//!   finds the row in cache.
//! - In the second round a row is final once swept; its disparity is selected while the sweep
//!   goes on to the next row, again from cache.
//!
//! So S (78 MB at 640x480 with D = 128) goes to memory once and comes back once; with the
//! stages one after another it went there and back three times and was read a fourth time
//! for selection.
//!
//! With 3 or 5 paths (none from below) there is no second round and no volume: one top-down
//! sweep with the rows ahead of it prepared and those behind it selected (`single_pass.rs`).
use rayon::prelude::*;

use super::aggregate::{GUARD, Grid, PathRows, Penalties, horizontal_row};
use super::cost;
use super::params::Paths;
use super::select::{self, RightBest, Select};
use super::single_pass;
use crate::isa::Isa;

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
        Paths::Three | Paths::Four => &[0],
        Paths::Five | Paths::Eight => &[0, 1, -1],
    };
    let prep = Prep { isa, grid: &grid, census };
    if paths.single_pass() {
        return single_pass::run(isa, &prep, &mut PathRows::new(&grid, dxs, true), &sel, cost, sum, out);
    }
    let row_len = width * disps;
    let half = sum.len() / row_len / 2;
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

/// Rows of C and of S that `match_rows` needs for `paths` on an image `height` rows high:
/// all of them, or for a single pass a ring of a few (see `single_pass.rs`).
pub(crate) fn buffer_rows(paths: Paths, height: usize) -> usize {
    if paths.single_pass() { single_pass::ring_rows() } else { height }
}

/// A row to prepare: image row index, its costs and its S (both still to be written).
type NewRow<'r> = (usize, (&'r mut [u8], &'r mut [u16]));
/// A prepared row: image row index, its costs, its S.
type ReadyRow<'r> = (usize, &'r [u8], &'r mut [u16]);

/// What a row needs before the sweeps reach it: its costs and its horizontal paths.
pub(super) struct Prep<'g, 'a> {
    isa: Isa,
    pub grid: &'g Grid<'a>,
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
    pub fn row(&self, y: usize, cost: &mut [u8], sum: &mut [u16], scratch: &mut RowScratch) {
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
pub(super) struct RowScratch {
    reversed: Vec<u64>,
    paths: Vec<u16>,
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
        let paths = PathRows::new(grid, dxs, down);
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
            let sweep = move || ready.into_iter().for_each(|(y, c, s)| paths.advance(isa, y, c, s, true));
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
                    rayon::join(|| select::select_row(isa, sel, ps, po, right), || self.paths.advance(isa, y, c, s, true));
                }
                None => self.paths.advance(isa, y, c, s, true),
            }
            let s: &[u16] = s;
            pending = Some((s, o));
        }
        if let Some((ps, po)) = pending {
            select::select_row(isa, sel, ps, po, &mut self.right);
        }
    }
}
