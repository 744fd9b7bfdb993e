//! The single top-down pass, for path sets with no path from below (3 and 5 paths): each row
//! is prepared (costs, horizontal paths), swept (paths from above) and selected while it is in
//! cache, through a ring of a few rows, so C and S are never held whole.
//!
//! Only one thread can sweep, as each row needs the row before. The other threads prepare
//! rows ahead of it and select the rows behind it, and the sweeping thread does the same
//! whenever its next row is not ready, so it never depends on another thread turning up: with
//! one thread it prepares each row just before sweeping it and selects it right after, while
//! the row is in cache. A panic in any thread ends the pass for all of them. Threads
//! claim rows through atomic counters and, with nothing to claim, spin with backoff (yielding
//! the core) rather than sleep, as a hand-over comes every few tens of microseconds. A first
//! version with a rayon scope per group of rows (tasks to prepare and select, the sweep
//! inline) was slower, measured side by side at 640x480 with 128 levels and 3 paths: 22.5
//! against 19 ms (medians, 2 threads), 48 against 36 ms (1 thread).
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crossbeam_utils::Backoff;

use super::aggregate::PathRows;
use super::schedule::{Prep, RowScratch};
use super::select::{self, RightBest, Select};
use crate::isa::Isa;

/// Threads in a pass: the sweep is one thread's work, and preparing and selecting take about
/// one to four times as long (5 and 3 paths), so more than three helpers would wait on it.
fn threads() -> usize {
    rayon::current_num_threads().clamp(1, 4)
}

/// Rows in the ring: enough that the other threads can run ahead of the sweep, few enough to
/// stay in cache (2 threads, 640x480, 128 levels: 2 MB).
pub(super) fn ring_rows() -> usize {
    4 * threads()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Prepared,
    Swept,
}

/// One row of the ring: the image row it holds, how far that row got, its C and S.
struct Slot<'b> {
    row: usize,
    state: State,
    cost: &'b mut [u8],
    sum: &'b mut [u16],
}

/// What the threads of one pass share. A row is claimed by moving a counter on while holding
/// its slot's lock (preparation) or once the sweep has passed it (selection).
struct Ring<'b, 'o> {
    slots: Vec<Mutex<Slot<'b>>>,
    out: Vec<Mutex<&'o mut [f32]>>,
    next_prep: AtomicUsize,
    next_select: AtomicUsize,
    swept: AtomicUsize,
    /// Set when a thread of the pass panics: the work it held will never be done, so the
    /// others stop waiting for it, and rayon hands the panic to the caller.
    failed: AtomicBool,
}

/// Sets the flag if its thread unwinds while holding it.
struct PanicFlag<'a>(&'a AtomicBool);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// Each thread's own buffers.
#[derive(Default)]
struct Scratch {
    row: RowScratch,
    right: RightBest,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A lock is poisoned only by a panic, which ends the pass (`Ring::failed`).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<'b> Ring<'b, '_> {
    fn slot(&self, y: usize) -> &Mutex<Slot<'b>> {
        &self.slots[y % self.slots.len()]
    }

    /// Whether every row's selection is claimed, or the pass failed.
    fn finished(&self) -> bool {
        self.failed.load(Ordering::Acquire) || self.next_select.load(Ordering::Acquire) >= self.out.len()
    }

    /// Prepares the next row if its slot is free (its last row selected); false if there was
    /// nothing to take.
    fn try_prep(&self, prep: &Prep<'_, '_>, scratch: &mut Scratch) -> bool {
        let y = self.next_prep.load(Ordering::Acquire);
        if y >= self.out.len() {
            return false;
        }
        let Ok(mut slot) = self.slot(y).try_lock() else { return false };
        if slot.state != State::Free || self.next_prep.compare_exchange(y, y + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        let Slot { cost, sum, .. } = &mut *slot;
        prep.row(y, cost, sum, &mut scratch.row);
        (slot.row, slot.state) = (y, State::Prepared);
        true
    }

    /// Selects the next swept row, if there is one.
    fn try_select(&self, isa: Isa, sel: &Select, scratch: &mut Scratch) -> bool {
        let y = self.next_select.load(Ordering::Acquire);
        if y >= self.swept.load(Ordering::Acquire) || self.next_select.compare_exchange(y, y + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        let mut slot = lock(self.slot(y));
        debug_assert!(slot.state == State::Swept && slot.row == y);
        select::select_row(isa, sel, slot.sum, &mut lock(&self.out[y]), &mut scratch.right);
        slot.state = State::Free;
        true
    }

    /// Sweeps row `y` if it is prepared.
    fn try_sweep(&self, isa: Isa, paths: &mut PathRows<'_, '_>, y: usize) -> bool {
        let Ok(mut slot) = self.slot(y).try_lock() else { return false };
        if slot.state != State::Prepared || slot.row != y {
            return false;
        }
        let Slot { cost, sum, .. } = &mut *slot;
        paths.advance(isa, y, cost, sum, false);
        slot.state = State::Swept;
        self.swept.store(y + 1, Ordering::Release);
        true
    }
}

/// Fills `out` (the disparity, W per row) for a top-down sweep `paths`; `cost` and `sum` hold
/// `ring_rows()` rows each.
pub(super) fn run(isa: Isa, prep: &Prep<'_, '_>, paths: &mut PathRows<'_, '_>, sel: &Select, cost: &mut [u8], sum: &mut [u16], out: &mut [f32]) {
    let (w, nd) = (prep.grid.width, prep.grid.disps);
    let slots = cost
        .chunks_mut(w * nd)
        .zip(sum.chunks_mut(w * nd))
        .map(|(cost, sum)| Mutex::new(Slot { row: 0, state: State::Free, cost, sum }))
        .collect();
    let ring = Ring {
        slots,
        out: out.chunks_mut(w).map(Mutex::new).collect(),
        next_prep: AtomicUsize::new(0),
        next_select: AtomicUsize::new(0),
        swept: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
    };
    let (height, helpers) = (ring.out.len(), threads() - 1);
    let ring = &ring;
    rayon::scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(move |_| {
                let _flag = PanicFlag(&ring.failed);
                let (mut scratch, backoff) = (Scratch::default(), Backoff::new());
                while !ring.finished() {
                    if ring.try_prep(prep, &mut scratch) || ring.try_select(isa, sel, &mut scratch) {
                        backoff.reset();
                    } else {
                        backoff.snooze();
                    }
                }
            });
        }
        let _flag = PanicFlag(&ring.failed);
        let (mut scratch, backoff) = (Scratch::default(), Backoff::new());
        for y in 0..height {
            while !ring.try_sweep(isa, paths, y) {
                if ring.failed.load(Ordering::Acquire) {
                    return;
                }
                if !(ring.try_prep(prep, &mut scratch) || ring.try_select(isa, sel, &mut scratch)) {
                    backoff.snooze();
                }
            }
            backoff.reset();
            // Alone, select the row just swept while it is in cache (helpers select otherwise).
            if helpers == 0 {
                ring.try_select(isa, sel, &mut scratch);
            }
        }
        while !ring.finished() {
            if !ring.try_select(isa, sel, &mut scratch) {
                backoff.snooze();
            }
        }
    });
}
