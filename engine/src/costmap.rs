//! Cost map (pixel embedding . label embedding), coarse-to-fine fusion with category early
//! rejection, and per-cell softmax: the CPU reference and CPU backend of these stages.
//!
//! Reductions use a fixed 8-lane order ([`dot`]) so that a GPU kernel can reproduce the sums
//! bit for bit.
use rayon::prelude::*;

use crate::isa::Isa;
use crate::labels::LabelSet;

/// Dense embeddings at one level, pixel-major (`height x width x dim`), each pixel L2-normalised.
#[derive(Debug, Clone)]
pub struct EmbeddingMap {
    pub stride: u32,
    /// Input-pixel position of cell 0's centre (see `EmbeddingOutput::center_offset`).
    pub offset: f32,
    pub width: usize,
    pub height: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl EmbeddingMap {
    pub fn pixel(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// A grid of cells whose centres sit at `offset + i * stride` input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub stride: u32,
    pub offset: f32,
    pub width: usize,
    pub height: usize,
}

impl EmbeddingMap {
    pub fn grid(&self) -> Grid {
        Grid { stride: self.stride, offset: self.offset, width: self.width, height: self.height }
    }
}

/// Per cell, the labels still in play and their scores (logits or probabilities).
/// Cell `i` holds `count[i]` entries at `i * capacity ..`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreField {
    pub stride: u32,
    pub offset: f32,
    pub width: usize,
    pub height: usize,
    pub capacity: usize,
    pub count: Vec<u32>,
    pub label: Vec<u32>,
    pub score: Vec<f32>,
    /// Per cell, the labels early rejection left out, as one pseudo-label: the log of the sum of
    /// their estimated `e^score` (see [`fuse_level`]), `-inf` where none. Empty in fields made
    /// without rejection. It keeps the softmax over a cell's candidates a share of all labels,
    /// as without rejection, instead of a share of the candidates only.
    pub rest: Vec<f32>,
}

impl ScoreField {
    pub fn grid(&self) -> Grid {
        Grid { stride: self.stride, offset: self.offset, width: self.width, height: self.height }
    }

    /// A field where every cell holds every label in id order, with these scores.
    pub fn dense(grid: Grid, num_labels: usize, score: Vec<f32>) -> Self {
        let cells = grid.width * grid.height;
        ScoreField {
            stride: grid.stride,
            offset: grid.offset,
            width: grid.width,
            height: grid.height,
            capacity: num_labels,
            count: vec![num_labels as u32; cells],
            label: (0..cells).flat_map(|_| 0..num_labels as u32).collect(),
            score,
            rest: Vec::new(),
        }
    }

    /// Every cell holds all `num_labels` labels in id order (the coarsest level, or no rejection).
    pub fn is_dense(&self, num_labels: usize) -> bool {
        self.capacity == num_labels
            && self.count.iter().all(|&n| n as usize == num_labels)
            && self.label.chunks(num_labels.max(1)).all(|c| c.iter().enumerate().all(|(i, &l)| l as usize == i))
    }

    pub fn cell(&self, i: usize) -> (&[u32], &[f32]) {
        let n = self.count[i] as usize;
        let at = i * self.capacity;
        (&self.label[at..at + n], &self.score[at..at + n])
    }

    /// Cell `i`'s left-out labels as one score (`-inf` where none).
    pub fn rest(&self, i: usize) -> f32 {
        self.rest.get(i).copied().unwrap_or(f32::NEG_INFINITY)
    }
}

/// Dot product with eight partial sums added pairwise at the end (a fixed, GPU-reproducible order).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 1e-12 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Cost of label `k` at a pixel: `scale * (gain_k * cos + bias_k)` (the per-label affine
/// calibration is the identity unless the model provides anchors).
#[inline]
pub fn label_cost(pixel: &[f32], labels: &LabelSet, k: usize, scale: f32) -> f32 {
    scale * (labels.gain[k] * dot(pixel, labels.embedding(k)) + labels.bias[k])
}

/// [`label_cost`] of every label at one pixel into `out`.
#[inline]
fn label_costs(isa: Isa, pixel: &[f32], labels: &LabelSet, scale: f32, out: &mut [f32]) {
    match isa {
        // SAFETY: Isa::Avx2 and Isa::Avx512 exist only after Isa::available saw AVX2 on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::label_costs(pixel, labels, scale, out) },
        Isa::Portable => {
            for (k, o) in out.iter_mut().enumerate() {
                *o = label_cost(pixel, labels, k, scale);
            }
        }
    }
}

/// [`label_cost`] of one label (AVX2 where `isa` has it; same bits either way).
#[inline]
fn label_cost_isa(isa: Isa, pixel: &[f32], labels: &LabelSet, k: usize, scale: f32) -> f32 {
    match isa {
        // SAFETY: as in `label_costs`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => scale * (labels.gain[k] * unsafe { avx2::dot(pixel, labels.embedding(k)) } + labels.bias[k]),
        Isa::Portable => label_cost(pixel, labels, k, scale),
    }
}

/// `lanes[j % WARP] += softmax_exp(gain * scores[j] - m)` in ascending `j`, skipping NaN
/// scores (absent labels), vectorised where the CPU allows (same bits).
#[inline]
fn exp_sums(isa: Isa, scores: &[f32], gain: f32, m: f32, lanes: &mut [f32; WARP]) {
    match isa {
        // SAFETY: as in `label_costs`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => unsafe { avx2::exp_sums(scores, gain, m, lanes) },
        Isa::Portable => exp_sums_portable(scores, gain, m, lanes),
    }
}

// Adding 0 for a NaN equals skipping it: the lanes start at +0 and the terms are positive.
fn exp_sums_portable(scores: &[f32], gain: f32, m: f32, lanes: &mut [f32; WARP]) {
    for (j, &s) in scores.iter().enumerate() {
        lanes[j % WARP] += exp_term(s, gain, m);
    }
}

/// The dot products with each vector's eight lanes in one AVX register: separate multiplies
/// and adds, lane for lane the sums of [`dot`], so the results are identical.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{WARP, label_cost};
    use crate::labels::LabelSet;

    /// [`super::softmax_exp`] on eight lanes: the same IEEE operations in the same order.
    /// (Written out because the compiler keeps the scalar function's saturating `as i32`
    /// scalar.) `n` is a whole number in -126..=0 after the clamp, or NaN, whose lane stays NaN.
    #[target_feature(enable = "avx2")]
    fn exp8(x: __m256) -> __m256 {
        // max/min return the second operand when either is NaN: a NaN passes, as in f32::clamp.
        let x = _mm256_min_ps(_mm256_set1_ps(0.0), _mm256_max_ps(_mm256_set1_ps(-87.0), x));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(super::LN2_HI))), _mm256_mul_ps(n, _mm256_set1_ps(super::LN2_LO)));
        let mut p = _mm256_set1_ps(super::EXP_POLY[5]);
        for &c in super::EXP_POLY[..5].iter().rev() {
            p = _mm256_add_ps(_mm256_set1_ps(c), _mm256_mul_ps(r, p));
        }
        p = _mm256_add_ps(_mm256_set1_ps(1.0), _mm256_mul_ps(r, p));
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
    }

    /// [`super::exp_sums`] eight lanes at a time (bit for bit the portable sums).
    #[target_feature(enable = "avx2")]
    pub(super) fn exp_sums(scores: &[f32], gain: f32, m: f32, lanes: &mut [f32; WARP]) {
        let chunks = scores.chunks_exact(8);
        let tail = chunks.remainder();
        let (g, m8) = (_mm256_set1_ps(gain), _mm256_set1_ps(m));
        let mut base = 0;
        // Chunk c's eight scores go to lanes 8c .. 8c + 8 (mod WARP), as `j % WARP` puts them.
        for chunk in chunks {
            // SAFETY: chunk and lanes[base..base + 8] hold eight floats (base is 0, 8, 16 or 24).
            unsafe {
                let s = _mm256_loadu_ps(chunk.as_ptr());
                let present = _mm256_cmp_ps::<_CMP_ORD_Q>(s, s);
                let term = _mm256_and_ps(present, exp8(_mm256_sub_ps(_mm256_mul_ps(g, s), m8)));
                let at = lanes.as_mut_ptr().add(base);
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), term));
            }
            base = (base + 8) % WARP;
        }
        for (lane, &s) in lanes[base..].iter_mut().zip(tail) {
            *lane += super::exp_term(s, gain, m);
        }
    }

    /// Adds the tail (`whole..a.len()`) into the lanes and sums them as [`super::dot`] does.
    #[target_feature(enable = "avx2")]
    fn finish(acc: __m256, a: &[f32], b: &[f32], whole: usize) -> f32 {
        let mut l = [0.0f32; 8];
        // SAFETY: `l` holds eight floats.
        unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc) };
        for d in whole..a.len() {
            l[d - whole] += a[d] * b[d];
        }
        ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let b = &b[..a.len()];
        let whole = a.len() - a.len() % 8;
        let mut acc = _mm256_setzero_ps();
        for d in (0..whole).step_by(8) {
            // SAFETY: d + 8 <= whole <= a.len() == b.len().
            unsafe { acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a.as_ptr().add(d)), _mm256_loadu_ps(b.as_ptr().add(d)))) };
        }
        finish(acc, a, b, whole)
    }

    /// Four labels at a time, sharing each load of the pixel.
    #[target_feature(enable = "avx2")]
    pub(super) fn label_costs(pixel: &[f32], labels: &LabelSet, scale: f32, out: &mut [f32]) {
        let dim = labels.dim;
        let pixel = &pixel[..dim];
        let whole = dim - dim % 8;
        let n = out.len().min(labels.len());
        let mut k = 0;
        while k + 4 <= n {
            let e: [&[f32]; 4] = std::array::from_fn(|j| labels.embedding(k + j));
            let mut acc = [_mm256_setzero_ps(); 4];
            for d in (0..whole).step_by(8) {
                // SAFETY: d + 8 <= whole <= dim, and the pixel and each embedding hold dim floats.
                unsafe {
                    let p = _mm256_loadu_ps(pixel.as_ptr().add(d));
                    for j in 0..4 {
                        acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(p, _mm256_loadu_ps(e[j].as_ptr().add(d))));
                    }
                }
            }
            for j in 0..4 {
                out[k + j] = scale * (labels.gain[k + j] * finish(acc[j], pixel, e[j], whole) + labels.bias[k + j]);
            }
            k += 4;
        }
        for (j, o) in out.iter_mut().enumerate().take(n).skip(k) {
            *o = label_cost(pixel, labels, j, scale);
        }
    }
}

/// Cost of every label at every cell of the coarsest level.
pub fn dense_cost(level: &EmbeddingMap, labels: &LabelSet, scale: f32) -> ScoreField {
    let num_labels = labels.len();
    let cells = level.width * level.height;
    let mut score = vec![0.0f32; cells * num_labels];
    let isa = Isa::detect();
    score.par_chunks_mut(num_labels).enumerate().for_each(|(i, row)| label_costs(isa, level.pixel(i), labels, scale, row));
    ScoreField::dense(level.grid(), num_labels, score)
}

/// Bilinear neighbours of input-pixel position `pos` on an axis of `n` cells whose centres sit at
/// `offset + i * stride`: the two cells and the weight of the second (clamped at the borders).
#[inline]
pub fn bilinear_axis(pos: f32, offset: f32, stride: u32, n: usize) -> (usize, usize, f32) {
    let c = ((pos - offset) / stride as f32).clamp(0.0, (n - 1) as f32);
    let i0 = c.floor() as usize;
    let i1 = (i0 + 1).min(n - 1);
    (i0, i1, c - i0 as f32)
}

/// `f32::total_cmp`'s order as an integer, with every NaN lowest whatever its sign bit (which
/// differs between CPUs and GPUs): a label whose score is NaN is never kept over a number.
#[inline]
pub fn rank_key(score: f32) -> i32 {
    if score.is_nan() {
        return i32::MIN;
    }
    let bits = score.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// Keeps, per cell, the `k` best-scoring labels, best first (ties: lower label id first).
pub fn keep_top_k(field: &ScoreField, k: usize) -> ScoreField {
    let cells = field.width * field.height;
    let cap = k.min(field.capacity).max(1);
    let mut count = vec![0u32; cells];
    let mut label = vec![0u32; cells * cap];
    let mut score = vec![0.0f32; cells * cap];
    count.par_iter_mut().zip(label.par_chunks_mut(cap)).zip(score.par_chunks_mut(cap)).enumerate().for_each_init(
        Vec::new,
        |order: &mut Vec<usize>, (i, ((n, lab), sc))| {
            let (labels, scores) = field.cell(i);
            let before = |a: &usize, b: &usize| rank_key(scores[*b]).cmp(&rank_key(scores[*a])).then(labels[*a].cmp(&labels[*b]));
            order.clear();
            order.extend(0..labels.len());
            let m = cap.min(order.len());
            if m < order.len() {
                order.select_nth_unstable_by(m, before);
            }
            order[..m].sort_unstable_by(before);
            for (j, &o) in order[..m].iter().enumerate() {
                lab[j] = labels[o];
                sc[j] = scores[o];
            }
            *n = m as u32;
        },
    );
    ScoreField { capacity: cap, count, label, score, rest: Vec::new(), ..*field }
}

/// Per position along one axis, its two grid neighbours and the weight of the second
/// (see [`bilinear_axis`]).
pub type Axis = Vec<(usize, usize, f32)>;

/// Bilinear neighbours on the `coarse` grid of each `fine` cell centre, per row and per column.
/// Computed once on the host and shared by the CPU and CUDA fusion so both use the same weights.
pub fn fusion_axes(coarse: Grid, fine: Grid) -> (Axis, Axis) {
    let centre = |j: usize| fine.offset + (j * fine.stride as usize) as f32;
    let rows = (0..fine.height).map(|y| bilinear_axis(centre(y), coarse.offset, coarse.stride, coarse.height)).collect();
    let cols = (0..fine.width).map(|x| bilinear_axis(centre(x), coarse.offset, coarse.stride, coarse.width)).collect();
    (rows, cols)
}

/// Bilinear weights of the corners (y0,x0), (y0,x1), (y1,x0), (y1,x1).
#[inline]
pub fn corner_weights(fx: f32, fy: f32) -> [f32; 4] {
    [(1.0 - fx) * (1.0 - fy), fx * (1.0 - fy), (1.0 - fx) * fy, fx * fy]
}

/// The four bilinear corners of a fine cell on a coarse grid `width` cells wide, with weights.
#[inline]
pub fn corners(row: (usize, usize, f32), col: (usize, usize, f32), width: usize) -> [(usize, f32); 4] {
    let ((y0, y1, fy), (x0, x1, fx)) = (row, col);
    let w = corner_weights(fx, fy);
    [(y0 * width + x0, w[0]), (y0 * width + x1, w[1]), (y1 * width + x0, w[2]), (y1 * width + x1, w[3])]
}

/// One top-down fusion step: each fine cell scores the candidate labels of its 2x2 coarse
/// neighbourhood (the labels `kept` there by early rejection, or every label of `coarse` when
/// `kept` is `None`), in ascending label id, as `w_coarse * upsampled coarse + w_fine * fine`.
/// The coarse term reads `coarse`; a label it lacks at a corner (a finer level after rejection)
/// contributes that corner's lowest score, a bound, so rejected labels are never favoured.
///
/// The labels a fine cell does not score go into its `rest` (see [`ScoreField::rest`]), each
/// estimated as `rest_gain * its coarse score` ([`rest_gain`]), bilinearly interpolated as
/// `e^score` between the four corners; at a corner, `coarse`'s own rest stands for the labels
/// it holds no score for, as if they all scored alike ([`cell_mass`]).
#[allow(clippy::too_many_arguments)]
pub fn fuse_level(
    coarse: &ScoreField,
    kept: Option<&ScoreField>,
    fine: &EmbeddingMap,
    labels: &LabelSet,
    scale: f32,
    w_coarse: f32,
    w_fine: f32,
    rest_gain: f32,
) -> ScoreField {
    let k = labels.len();
    let coarse_dense = coarse.is_dense(k);
    if coarse_dense && kept.is_none() {
        return fuse_dense(coarse, fine, labels, scale, w_coarse, w_fine);
    }
    let source = kept.unwrap_or(coarse);
    let cells = fine.width * fine.height;
    let cap = (source.capacity * 4).min(k).max(1);
    let (rows, cols) = fusion_axes(coarse.grid(), fine.grid());
    let mass = cell_mass(coarse, k, rest_gain);
    // Candidates' coarse scores per corner, padded with NaN (skipped) to whole vectors.
    let padded = cap.next_multiple_of(8);
    let isa = Isa::detect();
    let mut count = vec![0u32; cells];
    let mut label = vec![0u32; cells * cap];
    let mut score = vec![0.0f32; cells * cap];
    let mut rest = vec![0.0f32; cells];
    count
        .par_iter_mut()
        .zip(rest.par_iter_mut())
        .zip(label.par_chunks_mut(cap).zip(score.par_chunks_mut(cap)))
        .enumerate()
        // Per-thread scratch: for sparse coarse fields, where each label sits in each corner's
        // list, by label id (u32::MAX = absent there); the candidate list before
        // de-duplication; each candidate's coarse score per corner (NaN = absent there).
        .for_each_init(
            || (if coarse_dense { Vec::new() } else { vec![u32::MAX; 4 * k] }, Vec::with_capacity(4 * source.capacity), vec![f32::NAN; 4 * padded]),
            |(scratch, all, at_corner), (i, ((n, rest), (lab, sc)))| {
                let corners = corners(rows[i / fine.width], cols[i % fine.width], coarse.width);
                all.clear();
                for &(cell, _) in &corners {
                    all.extend_from_slice(source.cell(cell).0);
                }
                all.sort_unstable();
                all.dedup();
                let mut floor = [0.0f32; 4];
                if !coarse_dense {
                    for (c, &(cell, _)) in corners.iter().enumerate() {
                        let (ls, ss) = coarse.cell(cell);
                        floor[c] = ss.iter().copied().fold(f32::INFINITY, f32::min);
                        for (e, &l) in ls.iter().enumerate() {
                            scratch[c * k + l as usize] = e as u32;
                        }
                    }
                }
                let p = fine.pixel(i);
                for (j, &l) in all.iter().enumerate() {
                    let l = l as usize;
                    let mut up = 0.0f32;
                    for (c, &(cell, w)) in corners.iter().enumerate() {
                        let e = if coarse_dense { l } else { scratch[c * k + l] as usize };
                        // Absent at this corner: its floor in the coarse term, and in the sums
                        // one of the corner's left-out labels, whose share of its rest is `a`.
                        let v = if e < coarse.capacity { Some(coarse.score[cell * coarse.capacity + e]) } else { None };
                        at_corner[c * padded + j] = v.unwrap_or(mass[cell][2]);
                        up += w * v.unwrap_or(floor[c]);
                    }
                    lab[j] = l as u32;
                    sc[j] = w_coarse * up + w_fine * label_cost_isa(isa, p, labels, l, scale);
                }
                let mut scored = [[0.0f32; WARP]; 4];
                let used = all.len().next_multiple_of(8);
                for (c, &(cell, _)) in corners.iter().enumerate() {
                    let row = &mut at_corner[c * padded..c * padded + used];
                    row[all.len()..].fill(f32::NAN);
                    exp_sums(isa, row, rest_gain, mass[cell][0], &mut scored[c]);
                }
                *rest = rest_of_cell(&corners, &mass, &mut scored);
                if !coarse_dense {
                    for (c, &(cell, _)) in corners.iter().enumerate() {
                        for &l in coarse.cell(cell).0 {
                            scratch[c * k + l as usize] = u32::MAX;
                        }
                    }
                }
                *n = all.len() as u32;
            },
        );
    ScoreField { stride: fine.stride, offset: fine.offset, width: fine.width, height: fine.height, capacity: cap, count, label, score, rest }
}

/// Lanes of the CUDA fusion kernel's warp: [`fuse_level`] sums per-candidate terms in this many
/// partial sums (candidate `j` into `j % WARP`) and adds them as the warp's shuffle tree does.
const WARP: usize = 32;

/// The factor [`fuse_level`] applies to a left-out label's coarse score to estimate its fused
/// score, for the fusion into level `level` (1 = the second) with these per-level weights and
/// the coarse term's weight 1 (as [`crate::scoring::fused_probabilities`] fuses): the fine cost
/// is taken to be the coarse cost's, which carries the weights of the levels before, so
/// `1 + w_fine / (weights before)`.
pub fn rest_gain(fusion_weights: &[f32], level: usize) -> f32 {
    let before: f32 = fusion_weights[..level].iter().sum();
    let w_fine = fusion_weights.get(level).copied().unwrap_or(0.0);
    if before > 0.0 { 1.0 + w_fine / before } else { 1.0 }
}

/// Per cell `[m, t, a]` of `field` (of `num_labels` labels) with its scores times `gain`.
/// A cell's rest stands for its `n` left-out labels as if each scored `a = rest - ln n` (NaN
/// where the cell has no rest), so that together they weigh `e^(gain * a + ln n)`. `m` is the
/// largest of that and `gain * score` over the cell's labels, `t` the sum of
/// `e^(gain * score - m)` over the labels and the rest's weight `e^(gain * a + ln n - m)`: the
/// labels' terms in [`WARP`] partial sums (label `j` into `j % WARP`, added as a shuffle tree,
/// as the CUDA kernel's lanes do), the rest's last.
pub(crate) fn cell_mass(field: &ScoreField, num_labels: usize, gain: f32) -> Vec<[f32; 3]> {
    let isa = Isa::detect();
    (0..field.width * field.height)
        .into_par_iter()
        .map(|i| {
            let (_, scores) = field.cell(i);
            let rest = field.rest(i);
            let (a, rest_weight) = if rest == f32::NEG_INFINITY {
                (f32::NAN, f32::NEG_INFINITY)
            } else {
                let ln_n = ln_positive(num_labels.saturating_sub(scores.len()).max(1) as f32);
                let a = rest - ln_n;
                (a, gain * a + ln_n)
            };
            let m = scores.iter().fold(rest_weight, |m, &s| m.max(gain * s));
            let mut lanes = [0.0f32; WARP];
            exp_sums(isa, scores, gain, m, &mut lanes);
            let mut t = warp_sum(&mut lanes);
            if rest != f32::NEG_INFINITY {
                t += softmax_exp(rest_weight - m);
            }
            [m, t, a]
        })
        .collect()
}

/// Adds lane `l + width` into lane `l` for width 16, 8, 4, 2, 1, as a warp's `__shfl_down_sync`
/// tree does, and returns lane 0.
fn warp_sum(lanes: &mut [f32; WARP]) -> f32 {
    let mut width = WARP / 2;
    while width > 0 {
        for lane in 0..width {
            lanes[lane] += lanes[lane + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// A fine cell's rest from its corners' masses and, per corner, the `e^` terms of the
/// candidates it scored (in [`WARP`] partial sums): what each corner holds beyond the
/// candidates, interpolated with the corners' weights.
fn rest_of_cell(corners: &[(usize, f32); 4], mass: &[[f32; 3]], scored: &mut [[f32; WARP]; 4]) -> f32 {
    let top = corners.iter().fold(f32::NEG_INFINITY, |m, &(cell, _)| m.max(mass[cell][0]));
    let mut z = 0.0f32;
    for (c, &(cell, w)) in corners.iter().enumerate() {
        let left = (mass[cell][1] - warp_sum(&mut scored[c])).max(0.0);
        z += w * left * softmax_exp(mass[cell][0] - top);
    }
    if z >= f32::MIN_POSITIVE { top + ln_positive(z) } else { f32::NEG_INFINITY }
}

/// Natural log of a positive normal float: exponent and a series in `(m - 1) / (m + 1)` for the
/// mantissa `m` in `[sqrt(1/2), sqrt(2))`, in plain multiplies and adds (as [`softmax_exp`],
/// so the CUDA kernel computes the same bits). Error below 1e-6, absolute where `|ln x| < 1`,
/// relative elsewhere.
#[inline]
pub fn ln_positive(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // 2 * atanh(s) = 2 (s + s^3/3 + s^5/5 + s^7/7 + s^9/9 + ...), |s| <= 0.172.
    let series = 2.0 * s * (1.0 + s2 * (0.333_333_34 + s2 * (0.2 + s2 * (0.142_857_15 + s2 * 0.111_111_11))));
    e as f32 * std::f32::consts::LN_2 + series
}

/// [`fuse_level`] when the coarse field kept every label (no rejection): the same sums, without
/// the per-cell candidate bookkeeping.
fn fuse_dense(coarse: &ScoreField, fine: &EmbeddingMap, labels: &LabelSet, scale: f32, w_coarse: f32, w_fine: f32) -> ScoreField {
    let k = labels.len();
    let cells = fine.width * fine.height;
    let (rows, cols) = fusion_axes(coarse.grid(), fine.grid());
    let mut score = vec![0.0f32; cells * k];
    let isa = Isa::detect();
    score.par_chunks_mut(k).enumerate().for_each(|(i, sc)| {
        label_costs(isa, fine.pixel(i), labels, scale, sc);
        let corners = corners(rows[i / fine.width], cols[i % fine.width], coarse.width);
        for (l, s) in sc.iter_mut().enumerate() {
            let mut up = 0.0f32;
            for &(cell, w) in &corners {
                up += w * coarse.score[cell * k + l];
            }
            *s = w_coarse * up + w_fine * *s;
        }
    });
    ScoreField::dense(fine.grid(), k, score)
}

/// `e^x` for softmax inputs (`x <= 0`): Cody-Waite reduction and a degree-6 polynomial in plain
/// multiplies and adds. Written out (rather than `f32::exp`) so the CUDA kernel, compiled without
/// fused multiply-add, computes the same bits. Relative error below 3e-7 on `[-87, 0]`.
#[inline]
pub fn softmax_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0); // e^-87 ~ 1.6e-38, the smallest normal power of two reached
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let c = EXP_POLY;
    let p = 1.0 + r * (c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * c[5])))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// ln 2 in two parts for [`softmax_exp`]'s reduction: the high part has few mantissa bits
/// (0x3f318000), so `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1/1!, ..., 1/6! as decimal literals, which Rust and CUDA both round to the same f32.
const EXP_POLY: [f32; 6] = [1.0, 0.5, 0.166_666_67, 0.041_666_668, 0.008_333_334, 0.001_388_888_9];

/// `softmax_exp(gain * score - m)`, or 0 for a NaN score (an absent label).
#[inline(always)]
fn exp_term(score: f32, gain: f32, m: f32) -> f32 {
    if score.is_nan() { 0.0 } else { softmax_exp(gain * score - m) }
}

/// Turns each cell's logits into probabilities: of all labels, the cell's rest standing for
/// those it does not hold (which get no probability of their own).
pub fn softmax_in_place(field: &mut ScoreField) {
    let cap = field.capacity;
    let rest = std::mem::take(&mut field.rest);
    field.score.par_chunks_mut(cap).zip(field.count.par_iter()).enumerate().for_each(|(i, (s, &n))| {
        let s = &mut s[..n as usize];
        let r = rest.get(i).copied().unwrap_or(f32::NEG_INFINITY);
        let max = s.iter().copied().fold(r, f32::max);
        let mut sum = 0.0f32;
        for x in s.iter_mut() {
            *x = softmax_exp(*x - max);
            sum += *x;
        }
        if r != f32::NEG_INFINITY {
            sum += softmax_exp(r - max);
        }
        s.iter_mut().for_each(|x| *x /= sum);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_set(embeddings: &[f32], dim: usize) -> LabelSet {
        let n = embeddings.len() / dim;
        LabelSet {
            names: (0..n).map(|i| format!("l{i}")).collect(),
            embeddings: embeddings.to_vec(),
            dim,
            colors: vec![[0, 0, 0]; n],
            gain: vec![1.0; n],
            bias: vec![0.0; n],
        }
    }

    fn map(stride: u32, w: usize, h: usize, dim: usize, f: impl Fn(usize) -> Vec<f32>) -> EmbeddingMap {
        let data = (0..w * h).flat_map(|i| {
            let mut v = f(i);
            l2_normalize(&mut v);
            v
        });
        EmbeddingMap { stride, offset: stride as f32 / 2.0, width: w, height: h, dim, data: data.collect() }
    }

    #[test]
    fn dot_matches_naive_sum_closely() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
    }

    #[test]
    fn a_nan_score_is_never_kept_over_a_number_whatever_its_sign() {
        let grid = Grid { stride: 16, offset: 8.0, width: 2, height: 1 };
        let negative_nan = f32::from_bits(0xffc0_0000);
        let scores = vec![f32::NAN, 2.0, f32::NEG_INFINITY, negative_nan, f32::NEG_INFINITY, 1.0];
        let top = keep_top_k(&ScoreField::dense(grid, 3, scores), 2);
        assert_eq!(top.cell(0).0, &[1, 2]);
        assert_eq!(top.cell(1).0, &[2, 1]);
        // Otherwise the order is total_cmp's, -0.0 below +0.0.
        let order = [f32::NEG_INFINITY, -1.0, -0.0, 0.0, 1e-45, 3.0, f32::INFINITY];
        assert!(order.windows(2).all(|p| rank_key(p[0]) < rank_key(p[1])));
        assert!(rank_key(f32::NAN) < rank_key(f32::NEG_INFINITY) && rank_key(negative_nan) == rank_key(f32::NAN));
    }

    #[test]
    fn dense_cost_is_scaled_cosine() {
        let level = map(32, 2, 1, 2, |i| if i == 0 { vec![1.0, 0.0] } else { vec![0.0, 1.0] });
        let mut labels = label_set(&[1.0, 0.0, 0.0, 1.0, 0.6, 0.8], 2);
        let f = dense_cost(&level, &labels, 10.0);
        assert_eq!(f.cell(0).1, &[10.0, 0.0, 6.0]);
        assert_eq!(f.cell(1).1, &[0.0, 10.0, 8.0]);
        let top = keep_top_k(&f, 2);
        assert_eq!(top.cell(0).0, &[0, 2]);
        assert_eq!(top.cell(1).0, &[1, 2]);
        // Calibration is an affine map per label.
        labels.gain[2] = 2.0;
        labels.bias[2] = -0.5;
        let f = dense_cost(&level, &labels, 10.0);
        assert!((f.cell(0).1[2] - 10.0 * (2.0 * 0.6 - 0.5)).abs() < 1e-5);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let level = map(32, 3, 2, 4, |i| vec![i as f32, 1.0, 0.5, -1.0]);
        let labels: Vec<f32> = (0..5 * 4).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
        let mut f = dense_cost(&level, &label_set(&labels, 4), 3.0);
        softmax_in_place(&mut f);
        for i in 0..6 {
            let s: f32 = f.cell(i).1.iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn fusion_with_all_labels_kept_equals_weighted_sum() {
        // With no rejection the fused logit is exactly w_c * bilinear(coarse) + w_f * fine.
        let coarse_map = map(32, 2, 2, 3, |i| vec![1.0, i as f32, 0.5]);
        let fine_map = map(16, 4, 4, 3, |i| vec![(i % 3) as f32, 1.0, (i / 4) as f32]);
        let raw = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let labels = label_set(&raw, 3);
        let coarse = dense_cost(&coarse_map, &labels, 5.0);
        let fused = fuse_level(&coarse, None, &fine_map, &labels, 5.0, 0.5, 2.0, 2.5);
        for i in 0..16 {
            let centre = |j: usize| 8.0 + 16.0 * j as f32;
            let (y0, y1, fy) = bilinear_axis(centre(i / 4), 16.0, 32, 2);
            let (x0, x1, fx) = bilinear_axis(centre(i % 4), 16.0, 32, 2);
            let (ls, ss) = fused.cell(i);
            assert_eq!(ls.len(), 3);
            for (&l, &s) in ls.iter().zip(ss) {
                let c = |y: usize, x: usize| coarse.cell(y * 2 + x).1[l as usize];
                let up = (1.0 - fx) * (1.0 - fy) * c(y0, x0) + fx * (1.0 - fy) * c(y0, x1) + (1.0 - fx) * fy * c(y1, x0) + fx * fy * c(y1, x1);
                let want = 0.5 * up + 2.0 * 5.0 * dot(fine_map.pixel(i), &raw[l as usize * 3..l as usize * 3 + 3]);
                assert!((s - want).abs() < 1e-5, "cell {i} label {l}: {s} vs {want}");
            }
        }
    }

    #[test]
    fn early_rejection_limits_candidates_to_coarse_neighbourhood() {
        let coarse_map = map(32, 1, 1, 2, |_| vec![1.0, 0.0]);
        let fine_map = map(16, 2, 2, 2, |_| vec![0.0, 1.0]);
        // Label 1 matches the fine level perfectly but was rejected at the coarse level.
        let labels = label_set(&[1.0, 0.0, 0.0, 1.0, 0.7, 0.7], 2);
        let coarse = dense_cost(&coarse_map, &labels, 1.0);
        let kept = keep_top_k(&coarse, 2);
        let fused = fuse_level(&coarse, Some(&kept), &fine_map, &labels, 1.0, 1.0, 1.0, 2.0);
        let full = fuse_level(&coarse, None, &fine_map, &labels, 1.0, 1.0, 1.0, 2.0);
        for i in 0..4 {
            assert_eq!(fused.cell(i).0, &[0, 2]);
            // The candidates' scores are exactly those of the full computation.
            assert_eq!(fused.cell(i).1, &[full.cell(i).1[0], full.cell(i).1[2]]);
        }
    }

    #[test]
    fn where_the_fine_level_repeats_the_coarse_one_rejection_keeps_the_full_probabilities() {
        // The same embedding everywhere at both levels: a left-out label's fine cost is its
        // coarse cost, as the rest's estimate assumes, and interpolation changes nothing.
        let raw: Vec<f32> = (0..9 * 3).map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.4).collect();
        let mut labels = label_set(&raw, 3);
        labels.gain = (0..9).map(|k| 1.0 + k as f32 * 0.05).collect();
        let coarse_map = map(32, 2, 2, 3, |_| vec![0.3, 1.0, -0.2]);
        let fine_map = map(16, 4, 4, 3, |_| vec![0.3, 1.0, -0.2]);
        let (scale, weights) = (4.0, [0.8f32, 1.5]);
        let coarse = dense_cost(&coarse_map, &labels, scale * weights[0]);
        let gain = rest_gain(&weights, 1);
        assert!((gain - (1.0 + 1.5 / 0.8)).abs() < 1e-6);
        let mut full = fuse_level(&coarse, None, &fine_map, &labels, scale, 1.0, weights[1], gain);
        let mut early = fuse_level(&coarse, Some(&keep_top_k(&coarse, 3)), &fine_map, &labels, scale, 1.0, weights[1], gain);
        assert!(full.rest.is_empty() && early.rest.iter().all(|r| r.is_finite()));
        softmax_in_place(&mut full);
        softmax_in_place(&mut early);
        for i in 0..16 {
            let (ls, ps) = early.cell(i);
            assert_eq!(ls.len(), 3);
            for (&l, &p) in ls.iter().zip(ps) {
                let want = full.cell(i).1[l as usize];
                assert!((p - want).abs() < 2e-6 * want.max(1e-3), "cell {i} label {l}: {p} vs {want}");
            }
            assert!(ps.iter().sum::<f32>() < 0.999, "the left-out labels keep their share");
        }
        // Without a rest the candidates would share all the probability.
        let mut no_rest = fuse_level(&coarse, Some(&keep_top_k(&coarse, 3)), &fine_map, &labels, scale, 1.0, weights[1], gain);
        no_rest.rest.clear();
        softmax_in_place(&mut no_rest);
        assert!((no_rest.cell(0).1.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn with_three_levels_the_rest_passed_down_keeps_probabilities_near_the_full_ones() {
        // Three levels, the same embedding everywhere: the middle level's rest (56 of 60 labels)
        // passes down as labels that all score alike, the only approximation left.
        let k = 60;
        let raw: Vec<f32> = (0..k * 3).map(|i| ((i * 7919) % 101) as f32 / 101.0 - 0.5).collect();
        let labels = label_set(&raw, 3);
        let same = |_| vec![0.3, 1.0, -0.2];
        let levels = [map(32, 2, 2, 3, same), map(16, 4, 4, 3, same), map(8, 8, 8, 3, same)];
        let w = [0.5f32, 1.0, 2.0];
        for scale in [1.0f32, 4.0, 10.0] {
            let coarse = dense_cost(&levels[0], &labels, scale * w[0]);
            let fuse = |coarse: &ScoreField, top_k: usize, level: usize| {
                let kept = (top_k > 0).then(|| keep_top_k(coarse, top_k));
                fuse_level(coarse, kept.as_ref(), &levels[level], &labels, scale, 1.0, w[level], rest_gain(&w, level))
            };
            let mut full = fuse(&fuse(&coarse, 0, 1), 0, 2);
            let mut early = fuse(&fuse(&coarse, 4, 1), 4, 2);
            softmax_in_place(&mut full);
            softmax_in_place(&mut early);
            let (ls, ps) = early.cell(27);
            for (&l, &p) in ls.iter().zip(ps) {
                let ratio = p / full.cell(27).1[l as usize];
                // Counting the passed-down rest as (its sum)^gain instead made this 0.06.
                assert!((0.7..1.5).contains(&ratio), "scale {scale}, label {l}: early / full = {ratio}");
            }
        }
    }

    #[test]
    fn exp_sums_are_the_same_bits_on_every_instruction_set() {
        // Scores around the clamp bounds, both zeros, NaN (absent: skipped), and lengths that
        // leave tails and wrap the lanes.
        let mut scores: Vec<f32> = (0..203).map(|i| ((i * 7919) % 1999) as f32 / 1999.0 * 120.0 - 100.0).collect();
        scores.extend([0.0, -0.0, f32::NAN, 43.5, -43.5, 1e-30, f32::NAN, 50.0]);
        for len in [0, 1, 7, 8, 9, 31, 32, 33, 64, 100, scores.len()] {
            for (gain, m) in [(1.0, 0.0), (2.0, 1.5), (0.75, -3.0)] {
                let bits = |isa| {
                    let mut lanes = [0.0f32; WARP];
                    exp_sums(isa, &scores[..len], gain, m, &mut lanes);
                    lanes.map(f32::to_bits)
                };
                for isa in Isa::available() {
                    assert_eq!(bits(Isa::Portable), bits(isa), "{len} scores, gain {gain}, m {m}, {isa:?}");
                }
            }
        }
    }

    #[test]
    fn ln_positive_tracks_libm() {
        let mut worst = 0.0f64;
        let mut x = f32::MIN_POSITIVE;
        while x < 3e38 {
            // Either side of the mantissa's switch at sqrt(2).
            for t in [1.0f32, 1.1, 1.3, std::f32::consts::SQRT_2 - 1e-4, std::f32::consts::SQRT_2 + 1e-4, 1.6, 1.9] {
                let v = x * t;
                let want = (v as f64).ln();
                worst = worst.max((ln_positive(v) as f64 - want).abs() / want.abs().max(1.0));
            }
            x *= 2.0;
        }
        assert!(worst < 1e-6, "worst error {worst:e}");
        assert_eq!(ln_positive(1.0), 0.0);
    }

    #[test]
    fn simd_label_costs_equal_the_portable_ones_bit_for_bit() {
        for (dim, n) in [(384usize, 150usize), (37, 7), (5, 3), (512, 9)] {
            let emb: Vec<f32> = (0..n * dim).map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5).collect();
            let mut labels = label_set(&emb, dim);
            labels.gain = (0..n).map(|k| 1.0 + k as f32 * 0.01).collect();
            labels.bias = (0..n).map(|k| k as f32 * -0.003).collect();
            let pixel: Vec<f32> = (0..dim).map(|d| ((d * 31) % 97) as f32 / 97.0 - 0.3).collect();
            let bits = |isa| {
                let mut out = vec![0.0; n];
                label_costs(isa, &pixel, &labels, 3.5, &mut out);
                out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            for isa in Isa::available() {
                assert_eq!(bits(Isa::Portable), bits(isa), "dim {dim}, {n} labels, {isa:?}");
            }
        }
    }

    #[test]
    fn softmax_exp_tracks_libm() {
        let (mut worst, mut at) = (0.0f64, 0.0f32);
        for i in 0..=86_900 {
            let x = -(i as f32) * 1e-3;
            let want = (x as f64).exp();
            let e = ((softmax_exp(x) as f64 - want) / want).abs();
            if e > worst {
                worst = e;
                at = x;
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst:e} at {at}");
        assert_eq!(softmax_exp(0.0), 1.0);
        assert!(softmax_exp(-1000.0) > 0.0 && softmax_exp(-1000.0) < 2e-38);
    }

    #[test]
    fn fused_candidates_come_in_ascending_label_order() {
        let coarse_map = map(32, 2, 2, 2, |i| vec![1.0, i as f32]);
        let fine_map = map(16, 4, 4, 2, |i| vec![(i % 4) as f32, 1.0]);
        let raw: Vec<f32> = (0..12).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        let labels = label_set(&raw, 2);
        let coarse = dense_cost(&coarse_map, &labels, 2.0);
        let fused = fuse_level(&coarse, Some(&keep_top_k(&coarse, 2)), &fine_map, &labels, 2.0, 1.0, 1.0, 2.0);
        for i in 0..16 {
            let ls = fused.cell(i).0;
            assert!(ls.windows(2).all(|w| w[0] < w[1]), "cell {i}: {ls:?}");
        }
    }

    #[test]
    fn bilinear_axis_centres() {
        // Fine cell centres at 8, 24, 40, 56 px; coarse centres at 16, 48 px.
        assert_eq!(bilinear_axis(8.0, 16.0, 32, 2), (0, 1, 0.0));
        assert_eq!(bilinear_axis(24.0, 16.0, 32, 2), (0, 1, 0.25));
        assert_eq!(bilinear_axis(40.0, 16.0, 32, 2), (0, 1, 0.75));
        assert_eq!(bilinear_axis(56.0, 16.0, 32, 2), (1, 1, 0.0));
        // SAME_UPPER-padded backbones put cell 0 at stride - 0.5.
        assert_eq!(bilinear_axis(31.5 + 16.0, 31.5, 32, 3), (0, 1, 0.5));
    }
}
