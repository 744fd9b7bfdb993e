//! Back to the frame: bilinear interpolation of per-label probabilities (scores, not labels),
//! argmax, confidence, unknown threshold; colours and overlays.
use rayon::prelude::*;

use crate::colors::UNKNOWN_COLOR;
use crate::costmap::{Axis, Grid, ScoreField, bilinear_axis, corner_weights};
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

/// Candidates of one 2x2 cell neighbourhood, sorted by their best corner probability so a
/// pixel can stop as soon as no remaining label can beat its current best (exact argmax).
struct Quad {
    labels: Vec<u32>,
    /// Per label, its probability at the four corners (0 where a corner rejected it).
    probs: Vec<[f32; 4]>,
    bound: Vec<f32>,
}

fn quad(field: &ScoreField, corners: [usize; 4]) -> Quad {
    // (label, corner, probability) sorted by label, then grouped: O(n log n) for dense fields too.
    let mut all: Vec<(u32, usize, f32)> = Vec::new();
    for (k, &c) in corners.iter().enumerate() {
        let (ls, ps) = field.cell(c);
        all.extend(ls.iter().zip(ps).map(|(&l, &p)| (l, k, p)));
    }
    all.sort_by_key(|e| e.0);
    let mut entries: Vec<(u32, [f32; 4])> = Vec::new();
    for (l, k, p) in all {
        match entries.last_mut() {
            Some(last) if last.0 == l => last.1[k] = last.1[k].max(p),
            _ => {
                let mut probs = [0.0f32; 4];
                probs[k] = p;
                entries.push((l, probs));
            }
        }
    }
    let max4 = |p: &[f32; 4]| p.iter().copied().fold(0.0f32, f32::max);
    entries.sort_by(|a, b| max4(&b.1).total_cmp(&max4(&a.1)).then(a.0.cmp(&b.0)));
    Quad {
        labels: entries.iter().map(|e| e.0).collect(),
        bound: entries.iter().map(|e| max4(&e.1)).collect(),
        probs: entries.into_iter().map(|e| e.1).collect(),
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

/// Interpolates `field` (probabilities) to `width x height` frame pixels; ties go to the lower
/// label id. `content` locates the
/// frame inside the network input; `threshold` turns low-confidence pixels into [`UNKNOWN`].
pub fn upsample_argmax(field: &ScoreField, content: ContentRect, width: u32, height: u32, threshold: f32) -> LabelMap {
    let (w, h) = (width as usize, height as usize);
    let (xs, ys) = frame_axes(field.grid(), content, width, height);

    // One quad per cell: its corners are the cell, its right, lower and lower-right neighbours.
    let fw = field.width;
    let quads: Vec<Quad> = (0..field.width * field.height)
        .into_par_iter()
        .map(|i| {
            let (y0, x0) = (i / fw, i % fw);
            let (y1, x1) = ((y0 + 1).min(field.height - 1), (x0 + 1).min(fw - 1));
            quad(field, [y0 * fw + x0, y0 * fw + x1, y1 * fw + x0, y1 * fw + x1])
        })
        .collect();

    let mut labels = vec![UNKNOWN; w * h];
    let mut confidence = vec![0.0f32; w * h];
    labels.par_chunks_mut(w).zip(confidence.par_chunks_mut(w)).enumerate().for_each(|(y, (lrow, crow))| {
        let (y0, _, fy) = ys[y];
        for x in 0..w {
            let (x0, _, fx) = xs[x];
            let q = &quads[y0 * fw + x0];
            let wts = corner_weights(fx, fy);
            let (mut best, mut best_p) = (UNKNOWN, -1.0f32);
            for (j, p) in q.probs.iter().enumerate() {
                // A convex combination never exceeds its largest corner; the margin covers
                // rounding of the weights, so the cut never changes the result.
                if q.bound[j] * BOUND_MARGIN < best_p {
                    break;
                }
                let v = interpolate(&wts, p);
                let label = q.labels[j] as u16;
                if v > best_p || (v == best_p && label < best) {
                    best_p = v;
                    best = label;
                }
            }
            crow[x] = best_p.max(0.0);
            lrow[x] = if best_p >= threshold { best } else { UNKNOWN };
        }
    });
    LabelMap { width, height, labels, confidence }
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
    fn threshold_marks_unknown() {
        let m = upsample_argmax(&field(), full(4.0, 2.0), 4, 1, 0.65);
        assert_eq!(m.labels[0], 0); // 0.7 at the left centre
        assert!(m.labels.contains(&UNKNOWN));
        let (shares, unknown) = m.shares(3);
        assert!((shares.iter().sum::<f64>() + unknown - 1.0).abs() < 1e-9);
    }

    #[test]
    fn overlay_blends_known_pixels_only() {
        let m = LabelMap { width: 2, height: 1, labels: vec![0, UNKNOWN], confidence: vec![1.0, 0.0] };
        let out = m.overlay(&[100, 100, 100, 50, 50, 50], &[[200, 0, 0]], 0.5);
        assert_eq!(out, vec![150, 50, 50, 50, 50, 50]);
        assert_eq!(m.colorize(&[[200, 0, 0]]), vec![200, 0, 0, 0, 0, 0]);
    }
}
