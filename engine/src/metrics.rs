//! Segmentation quality against ground-truth masks (255 = ignore), shared by `ovseg eval` and
//! the trainer's evaluation.

/// Intersection over union per ground-truth label present, and pixel accuracy, ignoring 255.
pub fn score(pred: &[u16], truth: &[u8], truth_to_pred: &[u16]) -> (Vec<(usize, f64)>, f64) {
    let mut ious = Vec::new();
    for (g, &p_id) in truth_to_pred.iter().enumerate() {
        let (mut inter, mut union, mut present) = (0u64, 0u64, false);
        for (&p, &t) in pred.iter().zip(truth) {
            if t == 255 {
                continue;
            }
            let (is_t, is_p) = (t as usize == g, p == p_id);
            present |= is_t;
            inter += u64::from(is_t && is_p);
            union += u64::from(is_t || is_p);
        }
        if present {
            ious.push((g, inter as f64 / union.max(1) as f64));
        }
    }
    let valid = truth.iter().filter(|&&t| t != 255).count().max(1);
    let correct = pred.iter().zip(truth).filter(|&(&p, &t)| t != 255 && truth_to_pred.get(t as usize) == Some(&p)).count();
    (ious, correct as f64 / valid as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_and_accuracy_ignore_255() {
        // truth: [0, 0, 1, 255], prediction ids: truth 0 -> 5, truth 1 -> 7
        let (ious, acc) = score(&[5, 7, 7, 5], &[0, 0, 1, 255], &[5, 7]);
        assert_eq!(ious, vec![(0, 0.5), (1, 0.5)]);
        assert!((acc - 2.0 / 3.0).abs() < 1e-12);
        // a label absent from the truth is not scored
        let (ious, _) = score(&[5, 5], &[0, 0], &[5, 7]);
        assert_eq!(ious, vec![(0, 1.0)]);
    }
}
