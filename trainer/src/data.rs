//! Training data: image + mask samples from the built-in synthetic set or from folder data sets,
//! augmentation, and per-cell training targets.
//!
//! Folder layout: `labels.txt` (one label per line; mask value i = line i, counted from 0; no
//! blank lines before the last label), `images/<stem>.jpg`
//! or `.png`, `masks/<stem>.png` (8-bit, same size as the image, 255 = ignore). Several folders
//! with different label lists merge by label text. An optional `dataset.yaml` says how the set
//! is annotated: `annotation: fine` (the default), `coarse` (rough masks), or `tags` (no masks;
//! `tags.json` maps each image stem to the labels it shows). ADE20K, Cityscapes and VOC roots are
//! read in place (see `layouts`). A folder may also hold `depth/<stem>.png` for every image with a
//! mask: 16-bit depth along the optical axis, 0 = no measurement, in millimetres (the RGB-D
//! convention) or in the units `depth_scale` (metres per unit) in `dataset.yaml` says (KITTI:
//! 1/256); it trains the depth head.
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{GrayImage, RgbImage};
use rand::Rng;
use rand::rngs::StdRng;

use engine::costmap::Grid;

use crate::layouts::MaskEncoding;

pub const IGNORE: u8 = 255;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: mask is {mask_w}x{mask_h}, image is {image_w}x{image_h}")]
    SizeMismatch { path: PathBuf, mask_w: u32, mask_h: u32, image_w: u32, image_h: u32 },
    #[error("{path}: mask value {value} at ({x}, {y}) is outside the label list ({labels} labels; 255 = ignore)")]
    UnknownLabel { path: PathBuf, value: u8, x: u32, y: u32, labels: usize },
    #[error("{0}: the data set has no samples (expected images/<stem>.jpg|png with masks/<stem>.png)")]
    Empty(PathBuf),
    #[error("{field}: {name:?} is not a label of the {what} data ({})", .labels.join(", "))]
    NotALabel { field: String, name: String, what: String, labels: Vec<String> },
}

/// How a sample is annotated; this decides its loss.
#[derive(Debug, Clone, PartialEq)]
pub enum Annotation {
    /// Every mask pixel is trusted.
    Fine,
    /// A rough mask: only cells the model already finds likely are trained on.
    Coarse,
    /// Only the labels the image shows (global ids); the mask is all [`IGNORE`].
    Tags(Vec<u8>),
}

/// Depth in metres along the optical axis, NaN where unknown.
pub type DepthMap = image::ImageBuffer<image::Luma<f32>, Vec<f32>>;

/// An image with its mask (values index the split's labels; [`IGNORE`] = not annotated) and,
/// where the data has it, its depth.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: RgbImage,
    pub mask: GrayImage,
    pub depth: Option<DepthMap>,
    pub annotation: Annotation,
}

/// Where a sample comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Synthetic { seed: u64 },
    Files { image: PathBuf, mask: PathBuf, depth: Option<(PathBuf, f32)>, to_global: Vec<u8>, coarse: bool, encoding: MaskEncoding },
    Tagged { image: PathBuf, tags: Vec<u8> },
}

impl Source {
    pub fn has_mask(&self) -> bool {
        !matches!(self, Source::Tagged { .. })
    }

    /// Re-expresses label ids through `map` (old global id -> new global id).
    pub fn remap(&mut self, map: &dyn Fn(u8) -> u8) {
        match self {
            Source::Synthetic { .. } => {}
            Source::Files { to_global, .. } => to_global.iter_mut().for_each(|id| *id = map(*id)),
            Source::Tagged { tags, .. } => tags.iter_mut().for_each(|id| *id = map(*id)),
        }
    }

    /// Names the sample in errors.
    pub fn describe(&self) -> String {
        match self {
            Source::Synthetic { seed } => format!("synthetic scene {seed}"),
            Source::Files { image, .. } | Source::Tagged { image, .. } => image.display().to_string(),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetInfo {
    #[serde(default = "fine")]
    annotation: AnnotationKind,
    /// Metres per unit of the 16-bit depth PNGs.
    #[serde(default = "millimetre")]
    depth_scale: f32,
}

fn fine() -> AnnotationKind {
    AnnotationKind::Fine
}

fn millimetre() -> f32 {
    0.001
}

#[derive(serde::Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum AnnotationKind {
    Fine,
    Coarse,
    Tags,
}

/// A training or evaluation split: global label names and its samples.
#[derive(Debug, Clone)]
pub struct Split {
    pub labels: Vec<String>,
    pub descriptions: Vec<Option<String>>,
    pub sources: Vec<Source>,
    /// Output size of synthetic scenes.
    pub synthetic_size: (u32, u32),
}

impl Split {
    /// `count` synthetic scenes with seeds `first_seed..`.
    pub fn synthetic(first_seed: u64, count: usize, size: (u32, u32)) -> Self {
        Split {
            labels: crate::synth::CLASSES.iter().map(|(n, _)| n.to_string()).collect(),
            descriptions: crate::synth::CLASSES.iter().map(|(_, d)| Some(d.to_string())).collect(),
            sources: (0..count as u64).map(|i| Source::Synthetic { seed: first_seed + i }).collect(),
            synthetic_size: size,
        }
    }

    /// Folder data sets merged by label text (labels keep the order of first appearance).
    pub fn folders(dirs: &[PathBuf]) -> Result<Self, DataError> {
        let mut split = Split { labels: Vec::new(), descriptions: Vec::new(), sources: Vec::new(), synthetic_size: (0, 0) };
        check_distinct(dirs)?;
        for dir in dirs {
            if let Some(set) = crate::layouts::detect(dir)? {
                let mut ids = Vec::with_capacity(set.labels.len());
                for name in &set.labels {
                    ids.push(split.global_id(name, dir)?);
                }
                let to_global: Vec<u8> = set.raw_to_label.iter().map(|l| l.map_or(IGNORE, |l| ids[l])).collect();
                split.sources.extend(set.pairs.into_iter().map(|(image, mask)| Source::Files {
                    image,
                    mask,
                    depth: None,
                    to_global: to_global.clone(),
                    coarse: false,
                    encoding: set.encoding,
                }));
                continue;
            }
            let labels_path = dir.join("labels.txt");
            let label_names = read_label_lines(&labels_path)?;
            if label_names.is_empty() || label_names.len() > usize::from(IGNORE) {
                return Err(DataError::File { path: labels_path, reason: format!("{} labels; need 1..=255", label_names.len()) });
            }
            let mut to_global = Vec::with_capacity(label_names.len());
            for name in &label_names {
                to_global.push(split.global_id(name, &labels_path)?);
            }
            let found: Vec<PathBuf> = list(&dir.join("images"))?
                .into_iter()
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().to_str().unwrap_or(""))))
                .collect();
            if found.is_empty() {
                return Err(DataError::Empty(dir.clone()));
            }
            let DatasetInfo { annotation: kind, depth_scale } = dataset_info(dir)?;
            let tags = if kind == AnnotationKind::Tags { Some(read_tags(dir, &label_names, &to_global)?) } else { None };
            let depth_dir = dir.join("depth");
            let has_depth = depth_dir.is_dir();
            for image in found {
                let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                if let Some(tags) = &tags {
                    let Some(ids) = tags.get(&stem) else {
                        return Err(DataError::File { path: dir.join("tags.json"), reason: format!("no entry for image {stem:?}") });
                    };
                    split.sources.push(Source::Tagged { image, tags: ids.clone() });
                    continue;
                }
                let mask = dir.join("masks").join(format!("{stem}.png"));
                if !mask.is_file() {
                    return Err(DataError::File { path: mask, reason: format!("missing mask for {}", image.display()) });
                }
                let depth = has_depth.then(|| (depth_dir.join(format!("{stem}.png")), depth_scale));
                if let Some((depth, _)) = depth.as_ref().filter(|(d, _)| !d.is_file()) {
                    return Err(DataError::File {
                        path: depth.clone(),
                        reason: format!("missing depth for {} (the data set has a depth folder, so every image with a mask needs one)", image.display()),
                    });
                }
                split.sources.push(Source::Files {
                    image,
                    mask,
                    depth,
                    to_global: to_global.clone(),
                    coarse: kind == AnnotationKind::Coarse,
                    encoding: MaskEncoding::Gray,
                });
            }
        }
        Ok(split)
    }

    /// The split's id of label `name`, added if new (`origin` is named in the error).
    fn global_id(&mut self, name: &str, origin: &Path) -> Result<u8, DataError> {
        let id = match self.labels.iter().position(|l| l == name) {
            Some(id) => id,
            None => {
                self.labels.push(name.to_string());
                self.descriptions.push(None);
                self.labels.len() - 1
            }
        };
        u8::try_from(id).ok().filter(|&id| id != IGNORE).ok_or_else(|| DataError::File {
            path: origin.to_path_buf(),
            reason: "more than 255 distinct labels across the data sets".into(),
        })
    }

    /// Refuses a name in `names` (given as `field`) that is not one of the split's labels.
    pub fn check_labels(&self, field: &str, names: &[String], what: &str) -> Result<(), DataError> {
        match names.iter().find(|n| !self.labels.contains(n)) {
            Some(name) => Err(DataError::NotALabel { field: field.into(), name: name.clone(), what: what.into(), labels: self.labels.clone() }),
            None => Ok(()),
        }
    }

    /// The labels as the engine's label specs, with the descriptions the split carries.
    pub fn label_specs(&self) -> Vec<engine::LabelSpec> {
        self.labels
            .iter()
            .zip(&self.descriptions)
            .map(|(n, d)| engine::LabelSpec { description: d.clone(), ..engine::LabelSpec::new(n.clone()) })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Whether sample `i` has a pixel (or, tagged, a tag) of a global label that `keep` accepts;
    /// reads only the mask, and checks its values.
    pub fn annotated(&self, i: usize, keep: &dyn Fn(u8) -> bool) -> Result<bool, DataError> {
        match &self.sources[i] {
            // Every scene has sky and ground.
            Source::Synthetic { .. } => Ok(crate::synth::CLASSES.iter().enumerate().any(|(id, _)| u8::try_from(id).is_ok_and(keep))),
            Source::Files { mask, to_global, encoding, .. } => Ok(load_mask(mask, to_global, *encoding)?.pixels().any(|p| p.0[0] != IGNORE && keep(p.0[0]))),
            Source::Tagged { tags, .. } => Ok(tags.iter().any(|&t| keep(t))),
        }
    }

    /// The split without its samples that have no annotated pixel (nothing to score them on:
    /// image-tag samples included), and the names of those dropped.
    pub fn without_unannotated(mut self) -> Result<(Split, Vec<String>), DataError> {
        let mut dropped = Vec::new();
        let mut kept = Vec::with_capacity(self.sources.len());
        for i in 0..self.sources.len() {
            if !matches!(self.sources[i], Source::Tagged { .. }) && self.annotated(i, &|_| true)? {
                kept.push(self.sources[i].clone());
            } else {
                dropped.push(self.sources[i].describe());
            }
        }
        self.sources = kept;
        Ok((self, dropped))
    }

    /// Loads sample `i` with its mask in global label ids, checked.
    pub fn load(&self, i: usize) -> Result<Sample, DataError> {
        match &self.sources[i] {
            Source::Synthetic { seed } => Ok(crate::synth::scene(*seed, self.synthetic_size.0, self.synthetic_size.1)),
            Source::Files { image, mask, depth, to_global, coarse, encoding } => {
                let (image, mask) = load_files(image, mask, to_global, *encoding)?;
                let depth = depth.as_ref().map(|(path, scale)| load_depth(path, *scale, image.dimensions())).transpose()?;
                Ok(Sample { image, mask, depth, annotation: if *coarse { Annotation::Coarse } else { Annotation::Fine } })
            }
            Source::Tagged { image, tags } => {
                let image = decode(image)?.to_rgb8();
                let mask = GrayImage::from_pixel(image.width(), image.height(), image::Luma([IGNORE]));
                Ok(Sample { image, mask, depth: None, annotation: Annotation::Tags(tags.clone()) })
            }
        }
    }
}

/// The first ten of `names` and how many more there are, for messages about many samples.
pub fn some_names(names: &[String]) -> String {
    let shown = names.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    match names.len() {
        n if n > 10 => format!("{shown} and {} more", n - 10),
        _ => shown,
    }
}

pub(crate) fn file_error(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::File { path: path.to_path_buf(), reason: reason.into() }
}

/// A text file, without the byte-order mark some editors put first (`trim` keeps it, so it
/// would become part of the first label).
pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    Ok(engine::labels::strip_bom(&text).to_string())
}

/// The labels of a `labels.txt`, line i = mask value i. A blank line before the last label
/// would shift every label after it by one, so it is refused naming the line; blank lines at
/// the end are fine.
fn read_label_lines(path: &Path) -> Result<Vec<String>, DataError> {
    let text = read_text(path)?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let used = lines.iter().rposition(|l| !l.is_empty()).map_or(0, |last| last + 1);
    if let Some(blank) = lines[..used].iter().position(|l| l.is_empty()) {
        return Err(file_error(
            path,
            format!(
                "line {} is blank; line n names mask value n - 1, so a blank line before the last label would shift the labels after it \
                 (name mask value {blank} there, or remove the line and renumber the masks)",
                blank + 1
            ),
        ));
    }
    let names = &lines[..used];
    for (n, name) in names.iter().enumerate() {
        if let Some(first) = names[..n].iter().position(|l| l == name) {
            return Err(file_error(
                path,
                format!("line {} repeats {name:?} from line {}; each mask value needs its own label (merge the two values in the masks instead)", n + 1, first + 1),
            ));
        }
    }
    Ok(names.iter().map(|l| l.to_string()).collect())
}

/// Refuses a data set named twice (the same folder and split): its images would be counted
/// twice and land in both training and validation.
fn check_distinct(specs: &[PathBuf]) -> Result<(), DataError> {
    let keys: Vec<PathBuf> = specs.iter().map(|spec| crate::layouts::canonical_spec(spec)).collect();
    for (i, key) in keys.iter().enumerate() {
        if let Some(j) = keys[..i].iter().position(|k| k == key) {
            return Err(file_error(&specs[i], format!("the same data set is given twice (also as {}); name each once", specs[j].display())));
        }
    }
    Ok(())
}

/// The entries of `dir`, sorted.
pub(crate) fn list(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, format!("cannot list: {e}")))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

fn decode(path: &Path) -> Result<image::DynamicImage, DataError> {
    image::open(path).map_err(|e| file_error(path, format!("cannot decode: {e}")))
}

fn dataset_info(dir: &Path) -> Result<DatasetInfo, DataError> {
    let path = dir.join("dataset.yaml");
    if !path.exists() {
        return Ok(DatasetInfo { annotation: AnnotationKind::Fine, depth_scale: millimetre() });
    }
    let text = read_text(&path)?;
    let info: DatasetInfo = serde_yaml_ng::from_str(&text).map_err(|e| DataError::File {
        path: path.clone(),
        reason: format!("{e} (expected `annotation: fine | coarse | tags` and optionally `depth_scale: <metres per unit>`)"),
    })?;
    if !(info.depth_scale.is_finite() && info.depth_scale > 0.0) {
        return Err(DataError::File { path, reason: format!("depth_scale {} must be a positive number of metres per unit", info.depth_scale) });
    }
    Ok(info)
}

/// `tags.json`: image stem -> label names (each from `labels.txt`), as global ids.
fn read_tags(dir: &Path, names: &[String], to_global: &[u8]) -> Result<std::collections::HashMap<String, Vec<u8>>, DataError> {
    let path = dir.join("tags.json");
    let text = read_text(&path)?;
    let raw: std::collections::HashMap<String, Vec<String>> =
        serde_json::from_str(&text).map_err(|e| DataError::File { path: path.clone(), reason: format!("expected {{\"<image stem>\": [\"label\", ...]}}: {e}") })?;
    raw.into_iter()
        .map(|(stem, labels)| {
            let ids = labels
                .iter()
                .map(|l| {
                    names.iter().position(|n| n == l).map(|i| to_global[i]).ok_or_else(|| DataError::File {
                        path: path.clone(),
                        reason: format!("image {stem:?}: tag {l:?} is not in labels.txt"),
                    })
                })
                .collect::<Result<Vec<u8>, _>>()?;
            Ok((stem, ids))
        })
        .collect()
}

fn load_files(image_path: &Path, mask_path: &Path, to_global: &[u8], encoding: MaskEncoding) -> Result<(RgbImage, GrayImage), DataError> {
    let image = decode(image_path)?.to_rgb8();
    let mask = load_mask(mask_path, to_global, encoding)?;
    if mask.dimensions() != image.dimensions() {
        let ((mask_w, mask_h), (image_w, image_h)) = (mask.dimensions(), image.dimensions());
        return Err(DataError::SizeMismatch { path: mask_path.to_path_buf(), mask_w, mask_h, image_w, image_h });
    }
    Ok((image, mask))
}

/// A mask in global label ids, its values checked against the label list.
fn load_mask(mask_path: &Path, to_global: &[u8], encoding: MaskEncoding) -> Result<GrayImage, DataError> {
    let raw = decode(mask_path)?;
    let raw = match encoding {
        MaskEncoding::VocPalette => image::DynamicImage::ImageLuma8(crate::layouts::voc_mask(&raw.to_rgb8(), mask_path)?),
        MaskEncoding::Gray => raw,
    };
    if raw.color() != image::ColorType::L8 {
        return Err(DataError::File {
            path: mask_path.to_path_buf(),
            reason: format!("mask is {:?}; expected 8-bit single-channel (L8) label ids", raw.color()),
        });
    }
    let mut mask = raw.to_luma8();
    for (x, y, p) in mask.enumerate_pixels_mut() {
        let v = p.0[0];
        if v == IGNORE {
            continue;
        }
        p.0[0] = *to_global.get(usize::from(v)).ok_or(DataError::UnknownLabel {
            path: mask_path.to_path_buf(),
            value: v,
            x,
            y,
            labels: to_global.len(),
        })?;
    }
    Ok(mask)
}

/// A 16-bit depth PNG (`scale` metres per unit, 0 = no measurement) as metres (NaN = none),
/// checked against the image's size.
fn load_depth(path: &Path, scale: f32, image_size: (u32, u32)) -> Result<DepthMap, DataError> {
    let raw = decode(path)?;
    let image::DynamicImage::ImageLuma16(units) = raw else {
        return Err(file_error(path, format!("depth is {:?}; expected 16-bit single-channel (L16)", raw.color())));
    };
    if units.dimensions() != image_size {
        let ((w, h), (iw, ih)) = (units.dimensions(), image_size);
        return Err(file_error(path, format!("depth is {w}x{h}, image is {iw}x{ih}")));
    }
    let (w, h) = units.dimensions();
    Ok(DepthMap::from_fn(w, h, |x, y| {
        let v = units.get_pixel(x, y).0[0];
        image::Luma([if v == 0 { f32::NAN } else { f32::from(v) * scale }])
    }))
}

/// Random scale, crop to `size`, horizontal flip and colour jitter (in a configuration, each
/// field is optional and defaults to [`Augment::default`]'s).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    pub scale_min: f32,
    pub scale_max: f32,
    pub flip: bool,
    /// Brightness and contrast are multiplied by a factor in `1 ± color`.
    pub color: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment { scale_min: 0.5, scale_max: 1.75, flip: true, color: 0.2 }
    }
}

impl Augment {
    pub const NONE: Augment = Augment { scale_min: 1.0, scale_max: 1.0, flip: false, color: 0.0 };

    /// Scales the sample so that it covers `size` at a random scale relative to that cover,
    /// crops `size` at a random place (padding with ignore where it does not reach), then flips
    /// and jitters colour.
    pub fn apply(&self, sample: &Sample, size: (u32, u32), rng: &mut StdRng) -> Sample {
        let (w, h) = sample.image.dimensions();
        let cover = (size.0 as f32 / w as f32).max(size.1 as f32 / h as f32);
        let s = cover * if self.scale_max > self.scale_min { rng.random_range(self.scale_min..self.scale_max) } else { self.scale_min };
        let (sw, sh) = (((w as f32 * s).round() as u32).max(1), ((h as f32 * s).round() as u32).max(1));
        let (image, mask) = if (sw, sh) == (w, h) {
            (sample.image.clone(), sample.mask.clone())
        } else {
            (
                image::imageops::resize(&sample.image, sw, sh, FilterType::Triangle),
                image::imageops::resize(&sample.mask, sw, sh, FilterType::Nearest),
            )
        };
        let x0 = if sw > size.0 { rng.random_range(0..=sw - size.0) } else { 0 };
        let y0 = if sh > size.1 { rng.random_range(0..=sh - size.1) } else { 0 };
        let flip = self.flip && rng.random_bool(0.5);
        let (gain, contrast) = if self.color > 0.0 {
            (rng.random_range(1.0 - self.color..1.0 + self.color), rng.random_range(1.0 - self.color..1.0 + self.color))
        } else {
            (1.0, 1.0)
        };
        let mut out = Sample {
            image: RgbImage::from_pixel(size.0, size.1, image::Rgb([128; 3])),
            mask: GrayImage::from_pixel(size.0, size.1, image::Luma([IGNORE])),
            depth: sample.depth.as_ref().map(|_| DepthMap::from_pixel(size.0, size.1, image::Luma([f32::NAN]))),
            annotation: sample.annotation.clone(),
        };
        // Depth is resampled nearest by hand: interpolating across a depth edge would invent
        // surfaces, and NaN must stay NaN. Scaling keeps metres (a zoom, not a move).
        let depth_at = |x: u32, y: u32| {
            sample.depth.as_ref().map(|d| {
                let sx = (((x as f32 + 0.5) * w as f32 / sw as f32) as u32).min(w - 1);
                let sy = (((y as f32 + 0.5) * h as f32 / sh as f32) as u32).min(h - 1);
                d.get_pixel(sx, sy).0[0]
            })
        };
        for y in 0..size.1.min(sh - y0) {
            for x in 0..size.0.min(sw - x0) {
                let ox = if flip { size.0 - 1 - x } else { x };
                let p = image.get_pixel(x0 + x, y0 + y).0;
                let jittered = p.map(|v| ((v as f32 - 128.0) * contrast + 128.0 * gain).clamp(0.0, 255.0) as u8);
                out.image.put_pixel(ox, y, image::Rgb(jittered));
                out.mask.put_pixel(ox, y, *mask.get_pixel(x0 + x, y0 + y));
                if let (Some(d), Some(v)) = (out.depth.as_mut(), depth_at(x0 + x, y0 + y)) {
                    d.put_pixel(ox, y, image::Luma([v]));
                }
            }
        }
        out
    }
}

/// Per cell of `grid`: the label distribution of the mask pixels whose centres lie within half a
/// stride of the cell centre (`cells x num_labels`), and the annotated share of that window.
pub fn cell_targets(mask: &GrayImage, grid: Grid, num_labels: usize) -> (Vec<f32>, Vec<f32>) {
    let cells = grid.width * grid.height;
    let (mut target, mut weight) = (vec![0.0f32; cells * num_labels], vec![0.0f32; cells]);
    let window = |i: usize, n: u32| cell_window(grid, i, n);
    for cy in 0..grid.height {
        for cx in 0..grid.width {
            let cell = cy * grid.width + cx;
            let (mut counted, mut total) = (0usize, 0usize);
            for y in window(cy, mask.height()) {
                for x in window(cx, mask.width()) {
                    total += 1;
                    let v = usize::from(mask.get_pixel(x, y).0[0]);
                    if v < num_labels {
                        target[cell * num_labels + v] += 1.0;
                        counted += 1;
                    }
                }
            }
            if counted > 0 {
                target[cell * num_labels..(cell + 1) * num_labels].iter_mut().for_each(|t| *t /= counted as f32);
                weight[cell] = counted as f32 / total as f32;
            }
        }
    }
    (target, weight)
}

/// Per cell of `grid` (the windows of [`cell_targets`]): the mean ln depth of the pixels with
/// depth, and the share of the window that has depth (0 = no loss there).
pub fn cell_depth_targets(depth: &DepthMap, grid: Grid) -> (Vec<f32>, Vec<f32>) {
    let cells = grid.width * grid.height;
    let (mut target, mut weight) = (vec![0.0f32; cells], vec![0.0f32; cells]);
    for cy in 0..grid.height {
        for cx in 0..grid.width {
            let cell = cy * grid.width + cx;
            let (mut sum, mut counted, mut total) = (0.0f64, 0usize, 0usize);
            for y in cell_window(grid, cy, depth.height()) {
                for x in cell_window(grid, cx, depth.width()) {
                    total += 1;
                    let d = depth.get_pixel(x, y).0[0];
                    if d.is_finite() && d > 0.0 {
                        sum += f64::from(d.ln());
                        counted += 1;
                    }
                }
            }
            if counted > 0 {
                target[cell] = (sum / counted as f64) as f32;
                weight[cell] = counted as f32 / total as f32;
            }
        }
    }
    (target, weight)
}

/// The pixels (along one axis of `n`) whose centres lie within half a stride of cell `i`'s centre.
fn cell_window(grid: Grid, i: usize, n: u32) -> std::ops::Range<u32> {
    let half = grid.stride as f32 / 2.0;
    let c = grid.offset + (i as u32 * grid.stride) as f32;
    let lo = (c - half - 0.5).ceil().max(0.0) as u32;
    let hi = ((c + half - 0.5).ceil().max(0.0) as u32).min(n);
    lo..hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn cell_targets_count_the_window_and_skip_ignore() {
        // 32x16 mask: left half label 0, right half label 1, one ignored column.
        let mut mask = GrayImage::from_fn(32, 16, |x, _| image::Luma([u8::from(x >= 16)]));
        for y in 0..16 {
            mask.put_pixel(0, y, image::Luma([IGNORE]));
        }
        let grid = Grid { stride: 16, offset: 8.0, width: 2, height: 1 };
        let (t, w) = cell_targets(&mask, grid, 2);
        assert_eq!(&t[..2], &[1.0, 0.0]);
        assert_eq!(&t[2..], &[0.0, 1.0]);
        assert!((w[0] - 15.0 / 16.0).abs() < 1e-6 && w[1] == 1.0, "{w:?}");
    }

    /// A folder set of 4x2 images, one per mask (each a list of pixel values).
    fn folder_set(dir: &Path, labels: &str, masks: &[[u8; 8]]) {
        for sub in ["images", "masks"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("labels.txt"), labels).unwrap();
        for (i, values) in masks.iter().enumerate() {
            RgbImage::new(4, 2).save(dir.join(format!("images/{i}.png"))).unwrap();
            GrayImage::from_raw(4, 2, values.to_vec()).unwrap().save(dir.join(format!("masks/{i}.png"))).unwrap();
        }
    }

    #[test]
    fn labels_txt_keeps_mask_value_i_at_line_i() {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("set");
        folder_set(&set, "sky\n\nweed\n", &[[0, 0, 2, 2, 0, 0, 2, 2]]);
        let err = Split::folders(std::slice::from_ref(&set)).unwrap_err().to_string();
        assert!(err.contains("labels.txt") && err.contains("line 2 is blank") && err.contains("mask value 1"), "{err}");
        // A repeated label would silently train two mask values as one.
        std::fs::write(set.join("labels.txt"), "sky\nweed\nsky\n").unwrap();
        let err = Split::folders(std::slice::from_ref(&set)).unwrap_err().to_string();
        assert!(err.contains("line 3 repeats \"sky\" from line 1"), "{err}");
        // A byte-order mark is not part of the first label; blank lines at the end are fine.
        std::fs::write(set.join("labels.txt"), "\u{FEFF}sky\r\nground\r\nweed\r\n\r\n  \n").unwrap();
        let split = Split::folders(std::slice::from_ref(&set)).unwrap();
        assert_eq!(split.labels, ["sky", "ground", "weed"]);
        assert_eq!(split.load(0).unwrap().mask.as_raw(), &[0, 0, 2, 2, 0, 0, 2, 2]);
    }

    #[test]
    fn text_files_may_start_with_a_byte_order_mark() {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("set");
        folder_set(&set, "\u{FEFF}sky\nweed\n", &[[0; 8]]);
        std::fs::write(set.join("dataset.yaml"), "\u{FEFF}annotation: tags\n").unwrap();
        std::fs::write(set.join("tags.json"), "\u{FEFF}{\"0\": [\"weed\"]}").unwrap();
        let split = Split::folders(std::slice::from_ref(&set)).unwrap();
        assert_eq!(split.labels, ["sky", "weed"]);
        assert!(matches!(&split.sources[0], Source::Tagged { tags, .. } if tags == &[1]), "{:?}", split.sources);
        // A tagged image has no pixel to score: a split to evaluate on leaves it out.
        let (kept, dropped) = split.without_unannotated().unwrap();
        assert!(kept.is_empty() && dropped.len() == 1, "{dropped:?}");
    }

    #[test]
    fn a_data_set_named_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("set");
        folder_set(&set, "sky\n", &[[0; 8]]);
        let err = Split::folders(&[set.clone(), dir.path().join("./set/")]).unwrap_err().to_string();
        assert!(err.contains("given twice") && err.contains(&set.display().to_string()), "{err}");
    }

    #[test]
    fn samples_without_annotated_pixels_are_found_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path().join("set");
        folder_set(&set, "sky\nweed\n", &[[255; 8], [255, 255, 255, 1, 255, 255, 255, 255]]);
        let split = Split::folders(std::slice::from_ref(&set)).unwrap();
        assert!(!split.annotated(0, &|_| true).unwrap());
        assert!(split.annotated(1, &|_| true).unwrap());
        assert!(!split.annotated(1, &|id| id != 1).unwrap(), "weed held out: nothing left");
        let (kept, dropped) = split.without_unannotated().unwrap();
        assert_eq!(kept.len(), 1);
        assert!(dropped.len() == 1 && dropped[0].ends_with("0.png"), "{dropped:?}");
    }

    #[test]
    fn augment_fields_are_each_optional() {
        let a: Augment = serde_yaml_ng::from_str("scale_min: 0.8\nscale_max: 1.2\n").unwrap();
        assert_eq!(a, Augment { scale_min: 0.8, scale_max: 1.2, ..Augment::default() });
        assert!(serde_yaml_ng::from_str::<Augment>("flips: true\n").is_err(), "unknown fields are still refused");
    }

    #[test]
    fn depth_files_are_read_in_millimetres_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let set = dir.path();
        for sub in ["images", "masks", "depth"] {
            std::fs::create_dir_all(set.join(sub)).unwrap();
        }
        std::fs::write(set.join("labels.txt"), "ground\n").unwrap();
        RgbImage::new(4, 2).save(set.join("images/a.png")).unwrap();
        GrayImage::new(4, 2).save(set.join("masks/a.png")).unwrap();
        let depth_path = set.join("depth/a.png");
        let split = || Split::folders(&[set.to_path_buf()]);
        // Missing depth where the set has a depth folder.
        let err = split().unwrap_err().to_string();
        assert!(err.contains("depth/a.png") && err.contains("missing depth"), "{err}");
        let millimetres = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(4, 2, |x, y| image::Luma([(x + 4 * y) as u16 * 1500]));
        millimetres.save(&depth_path).unwrap();
        let sample = split().unwrap().load(0).unwrap();
        let depth = sample.depth.unwrap();
        assert!(depth.get_pixel(0, 0).0[0].is_nan(), "0 mm = no measurement");
        let close = |got: f32, want: f32| assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        close(depth.get_pixel(1, 0).0[0], 1.5);
        close(depth.get_pixel(3, 1).0[0], 10.5);
        // Other units through dataset.yaml (KITTI writes metres x 256); nonsense is refused.
        std::fs::write(set.join("dataset.yaml"), "depth_scale: 0.00390625\n").unwrap();
        let depth = split().unwrap().load(0).unwrap().depth.unwrap();
        close(depth.get_pixel(1, 0).0[0], 1500.0 / 256.0);
        std::fs::write(set.join("dataset.yaml"), "depth_scale: -1\n").unwrap();
        let err = split().unwrap_err().to_string();
        assert!(err.contains("dataset.yaml") && err.contains("depth_scale -1"), "{err}");
        std::fs::remove_file(set.join("dataset.yaml")).unwrap();
        // An 8-bit file, and one of another size, are refused naming the file.
        GrayImage::new(4, 2).save(&depth_path).unwrap();
        let err = split().unwrap().load(0).unwrap_err().to_string();
        assert!(err.contains("depth/a.png") && err.contains("16-bit"), "{err}");
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::new(2, 2).save(&depth_path).unwrap();
        let err = split().unwrap().load(0).unwrap_err().to_string();
        assert!(err.contains("depth is 2x2, image is 4x2"), "{err}");
    }

    #[test]
    fn cell_depth_targets_average_ln_depth_over_the_pixels_with_depth() {
        let mut depth = DepthMap::from_pixel(32, 16, image::Luma([f32::NAN]));
        for y in 0..16 {
            for x in 0..8 {
                depth.put_pixel(x, y, image::Luma([if y < 8 { 2.0 } else { 8.0 }]));
            }
        }
        let (t, w) = cell_depth_targets(&depth, Grid { stride: 16, offset: 8.0, width: 2, height: 1 });
        assert!((t[0] - (2.0f32.ln() + 8.0f32.ln()) / 2.0).abs() < 1e-6 && w[0] == 0.5, "{t:?} {w:?}");
        assert_eq!((t[1], w[1]), (0.0, 0.0), "no depth, no loss");
    }

    #[test]
    fn augmentation_keeps_image_and_mask_aligned() {
        let sample = crate::synth::scene(3, 160, 120);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..5 {
            let out = Augment::default().apply(&sample, (128, 96), &mut rng);
            assert_eq!(out.image.dimensions(), (128, 96));
            assert_eq!(out.mask.dimensions(), (128, 96));
            // Sky pixels (label 0) stay blue-ish after colour jitter (alignment check; the
            // image is resized with a smoother filter than the mask, so edges may blend).
            let sky: Vec<_> = out.mask.enumerate_pixels().filter(|p| p.2.0[0] == 0).map(|(x, y, _)| out.image.get_pixel(x, y).0).collect();
            let blue = sky.iter().filter(|p| p[2] >= p[0]).count();
            assert!(blue as f64 >= 0.97 * sky.len() as f64, "{blue} of {} sky pixels are blue-ish", sky.len());
        }
        let same = Augment::NONE.apply(&sample, (160, 120), &mut rng);
        assert_eq!(same.image, sample.image);
        assert_eq!(same.mask, sample.mask);
        let bits = |d: &Option<DepthMap>| d.as_ref().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        assert_eq!(bits(&same.depth), bits(&sample.depth), "depth goes through unchanged, NaN included");
        // Depth follows the mask: sky has none after scaling, cropping and flipping.
        let out = Augment::default().apply(&sample, (128, 96), &mut rng);
        let depth = out.depth.unwrap();
        // (The mask goes through `image`'s resize, depth through our own nearest sampling; they
        // may pick neighbouring source pixels on a border.)
        let sky: Vec<bool> = out.mask.enumerate_pixels().filter(|p| p.2.0[0] == 0).map(|(x, y, _)| depth.get_pixel(x, y).0[0].is_nan()).collect();
        assert!(sky.iter().filter(|&&nan| nan).count() as f64 >= 0.98 * sky.len() as f64, "sky pixels without depth");
    }
}
