//! Public data set layouts read in place: ADE20K (SceneParsing), Cityscapes (gtFine) and Pascal
//! VOC 2012. A data path may name the split after `#` (`ADEChallengeData2016#validation`);
//! without it the training split is read.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::data::{DataError, file_error, list, read_text};

/// How mask files store label ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskEncoding {
    /// 8-bit single channel.
    Gray,
    /// Pascal VOC colour palette (decoded to RGB, mapped back to the index).
    VocPalette,
}

/// A public data set split: its label names, raw mask value -> label index, image/mask pairs.
pub struct PublicSet {
    pub labels: Vec<String>,
    pub raw_to_label: Vec<Option<usize>>,
    pub pairs: Vec<(PathBuf, PathBuf)>,
    pub encoding: MaskEncoding,
}

/// Cityscapes label ids 0..=33 with the names of the 19 evaluated classes; `None` = ignored
/// in evaluation (void, ego vehicle, parking, rail track, guard rail, bridge, tunnel, ...).
const CITYSCAPES: [Option<&str>; 34] = [
    None, None, None, None, None, None, None,
    Some("road"), Some("sidewalk"), None, None, Some("building"), Some("wall"), Some("fence"),
    None, None, None, Some("pole"), None, Some("traffic light"), Some("traffic sign"),
    Some("vegetation"), Some("terrain"), Some("sky"), Some("person"), Some("rider"), Some("car"),
    Some("truck"), Some("bus"), None, None, Some("train"), Some("motorcycle"), Some("bicycle"),
];

/// Pascal VOC 2012 classes in index order, written as words.
const VOC: [&str; 21] = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor",
];

/// A data path's folder and the split named after `#`, if any. A `#` inside a folder name
/// (the whole path exists, or a `/` follows it) is part of the path.
pub fn split_spec(spec: &Path) -> (PathBuf, Option<String>) {
    let text = spec.to_string_lossy();
    match text.rsplit_once('#') {
        Some((root, split)) if !split.contains(std::path::is_separator) && !spec.exists() => (PathBuf::from(root), Some(split.to_string())),
        _ => (spec.to_path_buf(), None),
    }
}

/// `spec` with its folder made canonical (`./a`, `a` and `/abs/a` alike), the split kept.
pub fn canonical_spec(spec: &Path) -> PathBuf {
    let (root, split) = split_spec(spec);
    let root = engine::outputs::canonical(&root);
    match split {
        Some(split) => PathBuf::from(format!("{}#{split}", root.display())),
        None => root,
    }
}

/// Recognises a public layout at `spec` (`path` or `path#split`); `None` = not one of them.
pub fn detect(spec: &Path) -> Result<Option<PublicSet>, DataError> {
    let (root, split) = split_spec(spec);
    if !root.is_dir() {
        let reason = if root.exists() { "is not a folder (a data set is a folder)" } else { "no such folder" };
        return Err(DataError::File { path: root, reason: reason.into() });
    }
    if root.join("objectInfo150.csv").is_file() {
        return ade20k(&root, split.as_deref().unwrap_or("training")).map(Some);
    }
    if root.join("leftImg8bit").is_dir() && root.join("gtFine").is_dir() {
        return cityscapes(&root, split.as_deref().unwrap_or("train")).map(Some);
    }
    if root.join("JPEGImages").is_dir() && root.join("SegmentationClass").is_dir() {
        return voc(&root, split.as_deref().unwrap_or("train")).map(Some);
    }
    if split.is_some() {
        return Err(DataError::File { path: root, reason: "a #split is only understood for ADE20K, Cityscapes and VOC layouts".into() });
    }
    Ok(None)
}

fn non_empty(set: PublicSet, root: &Path) -> Result<PublicSet, DataError> {
    if set.pairs.is_empty() { Err(DataError::Empty(root.to_path_buf())) } else { Ok(set) }
}

/// `images/<split>/*.jpg`, `annotations/<split>/<stem>.png`; mask 0 = other (ignored), i = row i
/// of `objectInfo150.csv` (its first name before ';').
fn ade20k(root: &Path, split: &str) -> Result<PublicSet, DataError> {
    let csv_path = root.join("objectInfo150.csv");
    let labels: Vec<String> = read_text(&csv_path)?
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.rsplit(',').next().unwrap_or("").split(';').next().unwrap_or("").trim().to_string())
        .collect();
    if labels.is_empty() || labels.len() > 254 || labels.iter().any(String::is_empty) {
        return Err(file_error(&csv_path, "expected a header and one `Idx,Ratio,Train,Val,Name` row per class"));
    }
    let mut raw_to_label = vec![None];
    raw_to_label.extend((0..labels.len()).map(Some));
    let mut pairs = Vec::new();
    for image in list(&root.join("images").join(split))?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "jpg")) {
        let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        pairs.push((image, root.join("annotations").join(split).join(format!("{stem}.png"))));
    }
    non_empty(PublicSet { labels, raw_to_label, pairs, encoding: MaskEncoding::Gray }, root)
}

/// `leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`, `gtFine/<split>/<city>/<x>_gtFine_labelIds.png`.
fn cityscapes(root: &Path, split: &str) -> Result<PublicSet, DataError> {
    let labels: Vec<String> = CITYSCAPES.iter().flatten().map(|s| s.to_string()).collect();
    let raw_to_label = CITYSCAPES.iter().map(|name| name.and_then(|n| labels.iter().position(|l| l == n))).collect();
    let mut pairs = Vec::new();
    for city in list(&root.join("leftImg8bit").join(split))?.into_iter().filter(|p| p.is_dir()) {
        let city_name = city.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        for image in list(&city)? {
            let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(stem) = name.strip_suffix("_leftImg8bit.png") {
                pairs.push((image.clone(), root.join("gtFine").join(split).join(&city_name).join(format!("{stem}_gtFine_labelIds.png"))));
            }
        }
    }
    non_empty(PublicSet { labels, raw_to_label, pairs, encoding: MaskEncoding::Gray }, root)
}

/// `ImageSets/Segmentation/<split>.txt` lists ids; `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png`.
fn voc(root: &Path, split: &str) -> Result<PublicSet, DataError> {
    let list_path = root.join("ImageSets").join("Segmentation").join(format!("{split}.txt"));
    let pairs = read_text(&list_path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|id| (root.join("JPEGImages").join(format!("{id}.jpg")), root.join("SegmentationClass").join(format!("{id}.png"))))
        .collect();
    let labels: Vec<String> = VOC.iter().map(|s| s.to_string()).collect();
    let raw_to_label = (0..VOC.len()).map(Some).collect();
    non_empty(PublicSet { labels, raw_to_label, pairs, encoding: MaskEncoding::VocPalette }, root)
}

/// The VOC palette colour of index `i` (bits of i spread over the high bits of r, g, b).
pub fn voc_colour(i: u8) -> [u8; 3] {
    let mut rgb = [0u8; 3];
    let mut c = i;
    for shift in (0..8).rev() {
        for (channel, value) in rgb.iter_mut().enumerate() {
            *value |= ((c >> channel) & 1) << shift;
        }
        c >>= 3;
    }
    rgb
}

/// Index of a VOC palette colour (`None` for colours outside the palette).
pub fn voc_index(rgb: [u8; 3]) -> Option<u8> {
    static INDEX: OnceLock<HashMap<[u8; 3], u8>> = OnceLock::new();
    INDEX.get_or_init(|| (0..=255u8).map(|i| (voc_colour(i), i)).collect()).get(&rgb).copied()
}

/// A VOC mask decoded to RGB, back to palette indices (void = 255 = ignore).
pub fn voc_mask(rgb: &image::RgbImage, path: &Path) -> Result<image::GrayImage, DataError> {
    let mut out = image::GrayImage::new(rgb.width(), rgb.height());
    for (x, y, p) in rgb.enumerate_pixels() {
        let index = voc_index(p.0).ok_or_else(|| file_error(path, format!("colour {:?} at ({x}, {y}) is not in the VOC palette", p.0)))?;
        out.put_pixel(x, y, image::Luma([index]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::IGNORE;

    #[test]
    fn voc_palette_matches_the_published_colours() {
        // Published VOC colours: background black, aeroplane (128,0,0), person (192,128,128),
        // tv monitor (0,64,128), void (224,224,192).
        assert_eq!(voc_colour(0), [0, 0, 0]);
        assert_eq!(voc_colour(1), [128, 0, 0]);
        assert_eq!(voc_colour(15), [192, 128, 128]);
        assert_eq!(voc_colour(20), [0, 64, 128]);
        assert_eq!(voc_colour(IGNORE), [224, 224, 192]);
        assert_eq!(voc_index([192, 128, 128]), Some(15));
        assert_eq!(voc_index([1, 2, 3]), None);
    }

    #[test]
    fn cityscapes_keeps_the_19_evaluated_classes() {
        assert_eq!(CITYSCAPES.iter().flatten().count(), 19);
        assert_eq!(CITYSCAPES[7], Some("road"));
        assert_eq!(CITYSCAPES[26], Some("car"));
        assert_eq!(CITYSCAPES[33], Some("bicycle"));
    }

    #[test]
    fn a_hash_in_a_folder_name_is_part_of_the_path() {
        assert_eq!(split_spec(Path::new("sets/ade#validation")), (PathBuf::from("sets/ade"), Some("validation".into())));
        assert_eq!(split_spec(Path::new("runs#1/plain")), (PathBuf::from("runs#1/plain"), None));
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("field#2");
        std::fs::create_dir(&existing).unwrap();
        assert_eq!(split_spec(&existing), (existing.clone(), None));
    }
}
