//! Stage 1: census transform.
//!
//! Each pixel becomes a bit string with one bit per window position (row-major, the centre
//! skipped): bit k is 1 when that neighbour is darker than the centre. Outside the image the
//! nearest border pixel stands in (replicate), so every pixel gets a full code and the
//! codes do not depend on how the image is split across threads.
use rayon::prelude::*;

use super::GrayView;
use crate::isa::{Isa, dispatch};

/// Census codes of `img`, row-major, one u64 per pixel, for a `win_w` x `win_h` window (odd sides,
/// at most 64 bits; checked by `StereoParams::validate`).
pub(crate) fn census(isa: Isa, img: GrayView<'_>, win_w: usize, win_h: usize, codes: &mut [u64]) {
    let (w, h) = (img.width, img.height);
    let (rx, ry) = (win_w / 2, win_h / 2);
    let pw = w + 2 * rx;
    // A replicate-padded copy keeps the inner loop free of clamping.
    let mut padded = vec![0u8; pw * (h + 2 * ry)];
    for (py, prow) in padded.chunks_exact_mut(pw).enumerate() {
        let y = py.saturating_sub(ry).min(h - 1);
        let row = &img.pixels[y * w..][..w];
        for (px, v) in prow.iter_mut().enumerate() {
            *v = row[px.saturating_sub(rx).min(w - 1)];
        }
    }
    codes.par_chunks_mut(w).enumerate().for_each_init(Vec::new, |planes, (y, out)| {
        // The window rows of output row y in the padded image.
        let rows = &padded[y * pw..][..win_h * pw];
        census_row(isa, rows, pw, win_w, out, planes);
    });
}

dispatch!(fn census_row => census_row_impl(rows: &[u8], pw: usize, win_w: usize, out: &mut [u64], planes: &mut Vec<u8>));

/// One output row, one window position at a time across the whole row. The comparisons fill
/// byte planes (plane j holds bits 8j..8j+7 of every pixel's code), so they run 32 pixels to
/// an AVX2 vector instead of the 4 that u64 lanes allow; the planes are then interleaved.
#[inline(always)]
fn census_row_impl(rows: &[u8], pw: usize, win_w: usize, out: &mut [u64], planes: &mut Vec<u8>) {
    let (w, win_h) = (out.len(), rows.len() / pw);
    let (rx, ry) = (win_w / 2, win_h / 2);
    let centre = &rows[ry * pw + rx..][..w];
    planes.clear();
    planes.resize(8 * w, 0);
    let mut bit = 0;
    for wy in 0..win_h {
        for wx in 0..win_w {
            if wy == ry && wx == rx {
                continue;
            }
            let nb = &rows[wy * pw + wx..][..w];
            let plane = &mut planes[(bit / 8) * w..][..w];
            let shift = bit % 8;
            for ((p, &n), &c) in plane.iter_mut().zip(nb).zip(centre) {
                *p |= u8::from(n < c) << shift;
            }
            bit += 1;
        }
    }
    for (x, code) in out.iter_mut().enumerate() {
        *code = u64::from_le_bytes(std::array::from_fn(|j| planes[j * w + x]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(isa: Isa, img: GrayView<'_>, win_w: usize, win_h: usize) -> Vec<u64> {
        let mut codes = vec![0; img.pixels.len()];
        super::census(isa, img, win_w, win_h, &mut codes);
        codes
    }

    #[test]
    fn constant_image_has_all_zero_codes() {
        let px = vec![77u8; 31 * 17];
        let codes = census(Isa::Portable, GrayView { width: 31, height: 17, pixels: &px }, 9, 7);
        assert!(codes.iter().all(|&c| c == 0));
        for isa in Isa::available() {
            assert_eq!(codes, census(isa, GrayView { width: 31, height: 17, pixels: &px }, 9, 7), "{isa:?}");
        }
    }

    #[test]
    fn bits_follow_window_order() {
        // 3x3 window on a 3x3 image: neighbours darker than the centre (50) set their bit.
        let px = [10, 60, 60, 60, 50, 60, 60, 60, 40];
        let codes = census(Isa::Portable, GrayView { width: 3, height: 3, pixels: &px }, 3, 3);
        // Positions row-major without the centre: (0,0)=bit0 ... (2,2)=bit7.
        assert_eq!(codes[4], 0b1000_0001);
        // A dark pixel's neighbours are never darker, replicated border included.
        assert_eq!(codes[0], 0);
    }
}
