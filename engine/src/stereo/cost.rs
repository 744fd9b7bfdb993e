//! Stage 2: matching cost volume, one row at a time (when: see `schedule.rs`).
//!
//! C[(y*W + x)*D + d] = Hamming distance between the left census code at (x, y) and the right
//! one at (x - d, y), as u8 (at most 64). Where x - d < 0 there is no right pixel and the cost
//! is `bits`, the worst a real match can score. At 640x480 with D = 128 this volume is 39 MB.
use crate::isa::dispatch;

dispatch!(wide
    /// One row of the volume: `out` (W*D) from the census codes of the row in both images.
    pub(crate) fn cost_row => cost_row_impl(out: &mut [u8], left: &[u64], right: &[u64], reversed: &mut Vec<u64>, disps: usize, bits: u8));

#[inline(always)]
fn cost_row_impl(out: &mut [u8], left: &[u64], right: &[u64], reversed: &mut Vec<u64>, disps: usize, bits: u8) {
    // The right row reversed, so that each pixel's codes in disparity order (right x, x-1, ...)
    // are a forward run, which the compiler turns into vector popcounts.
    let w = right.len();
    reversed.clear();
    reversed.extend(right.iter().rev());
    for (x, (cell, &l)) in out.chunks_exact_mut(disps).zip(left).enumerate() {
        let reachable = disps.min(x + 1);
        let (valid, outside) = cell.split_at_mut(reachable);
        let window = &reversed[w - 1 - x..][..reachable];
        for (c, &r) in valid.iter_mut().zip(window) {
            *c = (l ^ r).count_ones() as u8;
        }
        outside.fill(bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::Isa;

    #[test]
    fn hamming_and_border() {
        let left = [0b1011u64, 0, 0];
        let right = [0b0001u64, 0b1111, 0];
        let run = |isa| {
            let mut c = vec![0; 3 * 8];
            cost_row(isa, &mut c, &left, &right, &mut Vec::new(), 8, 62);
            c
        };
        let c = run(Isa::Portable);
        // x = 0: only d = 0 has a right pixel.
        assert_eq!(&c[..8], &[2, 62, 62, 62, 62, 62, 62, 62]);
        // x = 2: d = 0 -> right[2], d = 1 -> right[1], d = 2 -> right[0].
        assert_eq!(&c[16..19], &[0, 4, 1]);
        for isa in Isa::available() {
            assert_eq!(c, run(isa), "{isa:?}");
        }
    }
}
