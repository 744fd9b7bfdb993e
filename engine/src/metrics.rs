//! Segmentation quality against ground-truth masks (255 = ignore), shared by `ovseg eval` and
//! the trainer's evaluation.

/// Intersection over union per ground-truth label present, and pixel accuracy, ignoring 255.
pub fn score(pred: &[u16], truth: &[u8], truth_to_pred: &[u16]) -> (Vec<(usize, f64)>, f64) {
    score_ignoring(pred, truth, truth_to_pred, 255)
}

/// [`score`] for masks of any integer width (8-bit masks ignore 255, 16-bit ones 65535).
/// Truth values are taken as given: check them first with [`first_out_of_range`].
pub fn score_ignoring<T: Copy + PartialEq + Into<u32>>(pred: &[u16], truth: &[T], truth_to_pred: &[u16], ignore: T) -> (Vec<(usize, f64)>, f64) {
    let mut ious = Vec::new();
    for (g, &p_id) in truth_to_pred.iter().enumerate() {
        let (mut inter, mut union, mut present) = (0u64, 0u64, false);
        for (&p, &t) in pred.iter().zip(truth) {
            if t == ignore {
                continue;
            }
            let (is_t, is_p) = (t.into() as usize == g, p == p_id);
            present |= is_t;
            inter += u64::from(is_t && is_p);
            union += u64::from(is_t || is_p);
        }
        if present {
            ious.push((g, inter as f64 / union.max(1) as f64));
        }
    }
    let valid = truth.iter().filter(|&&t| t != ignore).count().max(1);
    let correct =
        pred.iter().zip(truth).filter(|&(&p, &t)| t != ignore && truth_to_pred.get(t.into() as usize) == Some(&p)).count();
    (ious, correct as f64 / valid as f64)
}

/// The first pixel (index, value) of `truth` that is neither a label index below `labels` nor
/// `ignore`: such a pixel would silently count as wrong in [`score`].
pub fn first_out_of_range<T: Copy + PartialEq + Into<u32>>(truth: &[T], labels: usize, ignore: T) -> Option<(usize, u32)> {
    truth.iter().enumerate().find(|&(_, &t)| t != ignore && t.into() as usize >= labels).map(|(i, &t)| (i, t.into()))
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

    #[test]
    fn sixteen_bit_truth_ignores_65535_and_scores_like_eight_bit() {
        let (ious, acc) = score_ignoring(&[5, 7, 7, 5], &[0u16, 0, 1, 65535], &[5, 7], 65535);
        assert_eq!(ious, vec![(0, 0.5), (1, 0.5)]);
        assert!((acc - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn values_beyond_the_label_list_are_found() {
        assert_eq!(first_out_of_range(&[0u8, 1, 255, 1], 2, 255), None);
        assert_eq!(first_out_of_range(&[0u8, 1, 2, 7], 2, 255), Some((2, 2)));
        assert_eq!(first_out_of_range(&[0u16, 255, 65535], 2, 65535), Some((1, 255)));
    }
}
