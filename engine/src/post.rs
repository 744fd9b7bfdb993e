//! Back to the frame: bilinear interpolation of per-label probabilities (scores, not labels),
//! argmax, confidence, unknown threshold; colours and overlays.
use rayon::prelude::*;

use crate::colors::UNKNOWN_COLOR;
use crate::costmap::{Axis, EmbeddingMap, Grid, ScoreField, bilinear_axis, corner_weights};
use crate::preprocess::ContentRect;

/// Label id of pixels below the unknown threshold.
pub const UNKNOWN: u16 = u16::MAX;

/// Per-pixel result at frame resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    pub width: u32,
    pub height: u32,
    /// Index into the label set, or [`UNKNOWN`].
    pub labels: Vec<u16>,
    /// Interpolated probability of the winning label.
    pub confidence: Vec<f32>,
}

/// Candidates of one 2x2 cell neighbourhood. When many pixels share it, they are sorted by
/// their best corner probability so a pixel can stop as soon as no remaining label can beat its
/// current best; the answer is the same either way (exact argmax, ties to the lower label).
#[derive(Default)]
struct Quad {
    labels: Vec<u32>,
    /// Per label, its probability at the four corners (0 where a corner rejected it).
    probs: Vec<[f32; 4]>,
    bound: Vec<f32>,
    order: Vec<usize>,
}

impl Quad {
    /// Gathers the corners' candidates. `slot` is scratch indexed by label id, all `u32::MAX`
    /// on entry and on return.
    fn fill(&mut self, field: &ScoreField, corners: [usize; 4], slot: &mut [u32], dense: bool, sort: bool) {
        self.labels.clear();
        self.probs.clear();
        if dense {
            // Every cell holds every label in id order: no lookup needed.
            let k = field.capacity;
            self.labels.extend(0..k as u32);
            self.probs.extend((0..k).map(|l| corners.map(|c| field.score[c * k + l])));
        }
        for (k, &c) in corners.iter().enumerate().filter(|_| !dense) {
            let (ls, ps) = field.cell(c);
            for (&l, &p) in ls.iter().zip(ps) {
                let s = &mut slot[l as usize];
                if *s == u32::MAX {
                    *s = self.labels.len() as u32;
                    self.labels.push(l);
                    self.probs.push([0.0; 4]);
                }
                self.probs[*s as usize][k] = p;
            }
        }
        for &l in &self.labels {
            slot[l as usize] = u32::MAX;
        }
        self.bound.clear();
        if sort {
            let max4 = |p: &[f32; 4]| p.iter().copied().fold(0.0f32, f32::max);
            let (labels, probs) = (&self.labels, &self.probs);
            self.order.clear();
            self.order.extend(0..labels.len());
            self.order.sort_by(|&a, &b| max4(&probs[b]).total_cmp(&max4(&probs[a])).then(labels[a].cmp(&labels[b])));
            self.labels = self.order.iter().map(|&o| labels[o]).collect();
            self.probs = self.order.iter().map(|&o| probs[o]).collect();
            self.bound.extend(self.probs.iter().map(max4));
        }
    }

    /// Best label and its interpolated probability at corner weights `w` (UNKNOWN, -1 if none).
    fn argmax(&self, w: &[f32; 4]) -> (u16, f32) {
        let (mut best, mut best_p) = (UNKNOWN, -1.0f32);
        for (j, p) in self.probs.iter().enumerate() {
            // A convex combination never exceeds its largest corner; the margin covers rounding
            // of the weights, so the cut never changes the result.
            if self.bound.get(j).is_some_and(|&b| b * BOUND_MARGIN < best_p) {
                break;
            }
            let v = interpolate(w, p);
            let label = self.labels[j] as u16;
            if v > best_p || (v == best_p && label < best) {
                best_p = v;
                best = label;
            }
        }
        (best, best_p)
    }
}

/// Relative slack on a corner bound: rounded bilinear weights may sum to slightly above 1.
const BOUND_MARGIN: f32 = 1.0 + 1e-6;

/// Interpolated probability, summed left to right (the CUDA kernel uses the same order).
#[inline]
pub fn interpolate(w: &[f32; 4], p: &[f32; 4]) -> f32 {
    w[0] * p[0] + w[1] * p[1] + w[2] * p[2] + w[3] * p[3]
}

/// Frame pixel -> field cell neighbours along each axis (see [`upsample_argmax`]).
pub fn frame_axes(field: Grid, content: ContentRect, width: u32, height: u32) -> (Axis, Axis) {
    let sx = content.width / width as f32;
    let sy = content.height / height as f32;
    let xs = (0..width as usize)
        .map(|x| bilinear_axis(content.x + (x as f32 + 0.5) * sx, field.offset, field.stride, field.width))
        .collect();
    let ys = (0..height as usize)
        .map(|y| bilinear_axis(content.y + (y as f32 + 0.5) * sy, field.offset, field.stride, field.height))
        .collect();
    (xs, ys)
}

/// A one-channel map of cells (the depth head's metres) bilinearly interpolated to `width x
/// height` frame pixels, row-major, with the cells placed as [`upsample_argmax`] places them.
pub fn upsample_depth(cells: &EmbeddingMap, content: ContentRect, width: u32, height: u32) -> Vec<f32> {
    let (xs, ys) = frame_axes(cells.grid(), content, width, height);
    let at = |cx: usize, cy: usize| cells.data[cy * cells.width + cx];
    let mut out = Vec::with_capacity(xs.len() * ys.len());
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            out.push(interpolate(&corner_weights(fx, fy), &[at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1)]));
        }
    }
    out
}

/// Per cell along an axis, the frame positions whose first neighbour it is, as `start..end`
/// (contiguous because the axis is monotone; empty where none).
pub fn cell_ranges(axis: &Axis, cells: usize) -> Vec<(usize, usize)> {
    let mut r = vec![(0, 0); cells];
    for (i, a) in axis.iter().enumerate().rev() {
        r[a.0].0 = i;
    }
    for (i, a) in axis.iter().enumerate() {
        r[a.0].1 = i + 1;
    }
    r
}

/// Interpolates `field` (probabilities) to `width x height` frame pixels; ties go to the lower
/// label id. `content` locates the frame inside the network input; `threshold` turns
/// low-confidence pixels into [`UNKNOWN`].
pub fn upsample_argmax(field: &ScoreField, content: ContentRect, width: u32, height: u32, threshold: f32) -> LabelMap {
    let w = width as usize;
    let (xs, ys) = frame_axes(field.grid(), content, width, height);
    let (fw, fh) = (field.width, field.height);
    let (col_ranges, row_ranges) = (cell_ranges(&xs, fw), cell_ranges(&ys, fh));
    let num_labels = field.label.iter().copied().max().map_or(0, |m| m as usize + 1);
    let dense = field.is_dense(num_labels);
    // Sorting for the early exit pays only when several pixels share a neighbourhood.
    let sort = (width * height) as usize >= 8 * fw * fh;

    // One cell row at a time: its quads are built once, used by every frame row they cover.
    let bands: Vec<(Vec<u16>, Vec<f32>)> = (0..fh)
        .into_par_iter()
        .map_init(
            || (vec![u32::MAX; num_labels], Quad::default()),
            |(slot, q), cy| {
                let (r0, r1) = row_ranges[cy];
                let mut labels = vec![UNKNOWN; (r1 - r0) * w];
                let mut confidence = vec![0.0f32; (r1 - r0) * w];
                let y1 = (cy + 1).min(fh - 1);
                for (cx, &(c0, c1)) in col_ranges.iter().enumerate() {
                    if r0 == r1 || c0 == c1 {
                        continue;
                    }
                    let x1 = (cx + 1).min(fw - 1);
                    q.fill(field, [cy * fw + cx, cy * fw + x1, y1 * fw + cx, y1 * fw + x1], slot, dense, sort);
                    for (y, &(_, _, fy)) in ys.iter().enumerate().take(r1).skip(r0) {
                        for (x, &(_, _, fx)) in xs.iter().enumerate().take(c1).skip(c0) {
                            let (best, best_p) = q.argmax(&corner_weights(fx, fy));
                            let at = (y - r0) * w + x;
                            confidence[at] = best_p.max(0.0);
                            labels[at] = if best_p >= threshold { best } else { UNKNOWN };
                        }
                    }
                }
                (labels, confidence)
            },
        )
        .collect();
    let (labels, confidence): (Vec<Vec<u16>>, Vec<Vec<f32>>) = bands.into_iter().unzip();
    LabelMap { width, height, labels: labels.concat(), confidence: confidence.concat() }
}

/// A label map as mask pixels: 8-bit while label ids fit (unknown = 255), else 16-bit
/// (unknown = 65535).
pub enum MaskPixels {
    Mono8(Vec<u8>),
    Mono16(Vec<u16>),
}

/// Labels that fit an 8-bit mask: ids 0..=254, 255 is unknown.
pub const MAX_LABELS_8BIT: usize = 255;

impl LabelMap {
    pub fn mask_pixels(&self, num_labels: usize) -> MaskPixels {
        if num_labels <= MAX_LABELS_8BIT {
            MaskPixels::Mono8(self.labels.iter().map(|&l| if l == UNKNOWN { 255 } else { l as u8 }).collect())
        } else {
            MaskPixels::Mono16(self.labels.clone())
        }
    }

    /// Share of pixels per label id (index = label), plus the unknown share.
    pub fn shares(&self, num_labels: usize) -> (Vec<f64>, f64) {
        let mut counts = vec![0u64; num_labels];
        let mut unknown = 0u64;
        for &l in &self.labels {
            match counts.get_mut(l as usize) {
                Some(c) if l != UNKNOWN => *c += 1,
                _ => unknown += 1,
            }
        }
        let n = self.labels.len().max(1) as f64;
        (counts.iter().map(|&c| c as f64 / n).collect(), unknown as f64 / n)
    }

    /// RGB8 image of label colours.
    pub fn colorize(&self, colors: &[[u8; 3]]) -> Vec<u8> {
        self.labels.iter().flat_map(|&l| *colors.get(l as usize).unwrap_or(&UNKNOWN_COLOR)).collect()
    }

    /// Label colours blended over `rgb` (packed RGB8 of the same size); unknown pixels stay as they are.
    pub fn overlay(&self, rgb: &[u8], colors: &[[u8; 3]], alpha: f32) -> Vec<u8> {
        let mut out = rgb.to_vec();
        for (i, &l) in self.labels.iter().enumerate() {
            if let Some(c) = colors.get(l as usize) {
                for k in 0..3 {
                    let v = rgb[i * 3 + k] as f32 * (1.0 - alpha) + c[k] as f32 * alpha;
                    out[i * 3 + k] = v.round() as u8;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2x1 cells, stride 2, 3 labels: left cell says label 0, right cell says label 2.
    fn field() -> ScoreField {
        ScoreField {
            stride: 2,
            offset: 1.0,
            width: 2,
            height: 1,
            capacity: 3,
            count: vec![3, 2],
            label: vec![0, 1, 2, 2, 1, 0],
            score: vec![0.7, 0.2, 0.1, 0.6, 0.4, 0.0],
            rest: Vec::new(),
        }
    }

    fn full(w: f32, h: f32) -> ContentRect {
        ContentRect { x: 0.0, y: 0.0, width: w, height: h }
    }

    #[test]
    fn argmax_matches_brute_force_interpolation() {
        let f = field();
        let m = upsample_argmax(&f, full(4.0, 2.0), 8, 1, 0.0);
        for x in 0..8 {
            let pos = (x as f32 + 0.5) * 0.5;
            let (c0, c1, t) = bilinear_axis(pos, 1.0, 2, 2);
            let p = |cell: usize, l: u32| {
                let (ls, ps) = f.cell(cell);
                ls.iter().position(|&v| v == l).map_or(0.0, |at| ps[at])
            };
            let interp: Vec<f32> = (0..3).map(|l| (1.0 - t) * p(c0, l) + t * p(c1, l)).collect();
            let best = (0..3).max_by(|&a, &b| interp[a].total_cmp(&interp[b])).unwrap();
            assert_eq!(m.labels[x] as usize, best, "pixel {x}");
            assert!((m.confidence[x] - interp[best]).abs() < 1e-6);
        }
        assert_eq!(m.labels[0], 0);
        assert_eq!(m.labels[7], 2);
    }

    #[test]
    fn sorted_early_exit_and_exhaustive_scan_agree() {
        // A sparse field (3 of 6 labels per cell) and its dense twin, random probabilities.
        let mut seed = 12345u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        let cells = 4;
        let sparse = ScoreField {
            stride: 2,
            offset: 1.0,
            width: 2,
            height: 2,
            capacity: 3,
            count: vec![3; cells],
            label: vec![0, 2, 4, 1, 2, 3, 5, 0, 1, 4, 3, 2],
            score: (0..cells * 3).map(|_| next()).collect(),
            rest: Vec::new(),
        };
        let dense = ScoreField { capacity: 6, count: vec![6; cells], label: (0..cells).flat_map(|_| 0..6).collect(), score: (0..cells * 6).map(|_| next() / 3.0).collect(), ..sparse.clone() };
        for (field, is_dense) in [(&sparse, false), (&dense, true)] {
            let mut slot = vec![u32::MAX; 6];
            let (mut a, mut b) = (Quad::default(), Quad::default());
            a.fill(field, [0, 1, 2, 3], &mut slot, is_dense, true);
            b.fill(field, [0, 1, 2, 3], &mut slot, is_dense, false);
            assert!(slot.iter().all(|&s| s == u32::MAX));
            for _ in 0..200 {
                let w = corner_weights(next(), next());
                assert_eq!(a.argmax(&w), b.argmax(&w));
            }
        }
        assert!(dense.is_dense(6) && !sparse.is_dense(6));
    }

    #[test]
    fn threshold_marks_unknown() {
        let m = upsample_argmax(&field(), full(4.0, 2.0), 4, 1, 0.65);
        assert_eq!(m.labels[0], 0); // 0.7 at the left centre
        assert!(m.labels.contains(&UNKNOWN));
        let (shares, unknown) = m.shares(3);
        assert!((shares.iter().sum::<f64>() + unknown - 1.0).abs() < 1e-9);
    }

    #[test]
    fn depth_cells_interpolate_to_the_frame() {
        // Two cells of stride 2 centred at x = 1 and 3 (metres 2 and 6), one row, frame = input.
        let cells = EmbeddingMap { stride: 2, offset: 1.0, width: 2, height: 1, dim: 1, data: vec![2.0, 6.0] };
        let depth = upsample_depth(&cells, full(4.0, 2.0), 4, 2);
        // Pixel centres 0.5 .. 3.5: clamped before the first centre and after the last.
        assert_eq!(depth, vec![2.0, 3.0, 5.0, 6.0, 2.0, 3.0, 5.0, 6.0]);
        // Half the resolution of the input: each frame pixel spans two input pixels.
        assert_eq!(upsample_depth(&cells, full(4.0, 2.0), 2, 1), vec![2.0, 6.0]);
    }

    #[test]
    fn overlay_blends_known_pixels_only() {
        let m = LabelMap { width: 2, height: 1, labels: vec![0, UNKNOWN], confidence: vec![1.0, 0.0] };
        let out = m.overlay(&[100, 100, 100, 50, 50, 50], &[[200, 0, 0]], 0.5);
        assert_eq!(out, vec![150, 50, 50, 50, 50, 50]);
        assert_eq!(m.colorize(&[[200, 0, 0]]), vec![200, 0, 0, 0, 0, 0]);
    }
}
