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

/// The dot products with each vector's eight lanes in one AVX register: separate multiplies
/// and adds, lane for lane the sums of [`dot`], so the results are identical.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::label_cost;
    use crate::labels::LabelSet;

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
    ScoreField { capacity: cap, count, label, score, ..*field }
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
#[allow(clippy::too_many_arguments)]
pub fn fuse_level(
    coarse: &ScoreField,
    kept: Option<&ScoreField>,
    fine: &EmbeddingMap,
    labels: &LabelSet,
    scale: f32,
    w_coarse: f32,
    w_fine: f32,
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
    let isa = Isa::detect();
    let mut count = vec![0u32; cells];
    let mut label = vec![0u32; cells * cap];
    let mut score = vec![0.0f32; cells * cap];
    count
        .par_iter_mut()
        .zip(label.par_chunks_mut(cap))
        .zip(score.par_chunks_mut(cap))
        .enumerate()
        // Per-thread scratch for sparse coarse fields: each corner's scores by label id (NaN =
        // absent there), and the candidate list before de-duplication.
        .for_each_init(
            || (if coarse_dense { Vec::new() } else { vec![f32::NAN; 4 * k] }, Vec::with_capacity(4 * source.capacity)),
            |(scratch, all), (i, ((n, lab), sc))| {
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
                        for (&l, &s) in ls.iter().zip(ss) {
                            scratch[c * k + l as usize] = s;
                        }
                    }
                }
                let p = fine.pixel(i);
                for (j, &l) in all.iter().enumerate() {
                    let l = l as usize;
                    let mut up = 0.0f32;
                    for (c, &(cell, w)) in corners.iter().enumerate() {
                        let v = if coarse_dense { coarse.score[cell * k + l] } else { scratch[c * k + l] };
                        up += w * if v.is_nan() { floor[c] } else { v };
                    }
                    lab[j] = l as u32;
                    sc[j] = w_coarse * up + w_fine * label_cost_isa(isa, p, labels, l, scale);
                }
                if !coarse_dense {
                    for (c, &(cell, _)) in corners.iter().enumerate() {
                        for &l in coarse.cell(cell).0 {
                            scratch[c * k + l as usize] = f32::NAN;
                        }
                    }
                }
                *n = all.len() as u32;
            },
        );
    ScoreField { stride: fine.stride, offset: fine.offset, width: fine.width, height: fine.height, capacity: cap, count, label, score }
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
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0x3f318000: few mantissa bits, so n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 0.0); // e^-87 ~ 1.6e-38, the smallest normal power of two reached
    let n = (x * LOG2E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    // 1/2!, ..., 1/6! as decimal literals, which Rust and CUDA both round to the same f32.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_888_9)))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Turns each cell's logits into probabilities over its candidates (rejected labels get 0).
pub fn softmax_in_place(field: &mut ScoreField) {
    let cap = field.capacity;
    field.score.par_chunks_mut(cap).zip(field.count.par_iter()).for_each(|(s, &n)| {
        let s = &mut s[..n as usize];
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in s.iter_mut() {
            *x = softmax_exp(*x - max);
            sum += *x;
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
        let fused = fuse_level(&coarse, None, &fine_map, &labels, 5.0, 0.5, 2.0);
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
        let fused = fuse_level(&coarse, Some(&kept), &fine_map, &labels, 1.0, 1.0, 1.0);
        let full = fuse_level(&coarse, None, &fine_map, &labels, 1.0, 1.0, 1.0);
        for i in 0..4 {
            assert_eq!(fused.cell(i).0, &[0, 2]);
            // The candidates' scores are exactly those of the full computation.
            assert_eq!(fused.cell(i).1, &[full.cell(i).1[0], full.cell(i).1[2]]);
        }
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
        let fused = fuse_level(&coarse, Some(&keep_top_k(&coarse, 2)), &fine_map, &labels, 2.0, 1.0, 1.0);
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
