//! Label bank: free-text labels -> one L2-normalised embedding each.
//!
//! A label's embedding is the mean of the sentence embeddings of the label put into each prompt
//! template, plus its description when given (as the SSIW paper describes classes by a sentence),
//! re-normalised. Embeddings are cached by content hash in memory and on disk.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::colors::label_color;
use crate::costmap::l2_normalize;
use crate::error::{EngineError, Result};
use crate::text::TextEncoder;

pub const MAX_LABELS: usize = 10_000;

/// A label and what the operator says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSpec {
    pub name: String,
    pub description: Option<String>,
}

impl LabelSpec {
    pub fn new(name: impl Into<String>) -> Self {
        LabelSpec { name: name.into(), description: None }
    }
}

/// An encoded label set, immutable: the node swaps whole sets between frames.
#[derive(Debug, Clone)]
pub struct LabelSet {
    pub names: Vec<String>,
    /// `names.len() x dim`, row-major, each row L2-normalised.
    pub embeddings: Vec<f32>,
    pub dim: usize,
    pub colors: Vec<[u8; 3]>,
    /// Per-label affine calibration of the cost: `gain * cos + bias` (1 and 0 without anchors).
    pub gain: Vec<f32>,
    pub bias: Vec<f32>,
}

impl LabelSet {
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
    pub fn embedding(&self, k: usize) -> &[f32] {
        &self.embeddings[k * self.dim..(k + 1) * self.dim]
    }
}

/// Parses "a, b, c" (the CLI form) into trimmed names; validation happens in [`validate`].
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(|s| s.trim().to_string()).collect()
}

/// Parses `label: sentence` lines (descriptions file / ROS parameter form).
pub fn parse_descriptions<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    for (i, line) in lines.into_iter().enumerate() {
        let line = strip_bom(line).trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((label, sentence)) = line.split_once(':') else {
            return Err(EngineError::Labels(format!(
                "description {} ({line:?}) is not of the form `label: sentence`",
                i + 1
            )));
        };
        let (label, sentence) = (label.trim(), sentence.trim());
        let missing = if label.is_empty() { Some("label") } else if sentence.is_empty() { Some("sentence") } else { None };
        if let Some(part) = missing {
            return Err(EngineError::Labels(format!("description {} ({line:?}) has no {part}; expected `label: sentence`", i + 1)));
        }
        if map.insert(label.to_string(), sentence.to_string()).is_some() {
            return Err(EngineError::Labels(format!("description {} ({line:?}) describes {label:?} a second time", i + 1)));
        }
    }
    Ok(map)
}

/// Label specs for `names`, each with its description if one is given; descriptions of labels
/// that are not in the list are an error (usually a typo).
pub fn with_descriptions(names: Vec<String>, descriptions: &HashMap<String, String>) -> Result<Vec<LabelSpec>> {
    let mut stray: Vec<&String> = descriptions.keys().filter(|k| !names.iter().any(|n| n.trim() == k.as_str())).collect();
    if !stray.is_empty() {
        stray.sort();
        return Err(EngineError::Labels(format!("descriptions given for labels not in the label list: {stray:?}")));
    }
    Ok(names
        .into_iter()
        .map(|name| {
            let description = descriptions.get(name.trim()).cloned();
            LabelSpec { name, description }
        })
        .collect())
}

/// Rejects empty, whitespace-only and duplicate labels, naming each offender.
pub fn validate(specs: &[LabelSpec]) -> Result<()> {
    if specs.is_empty() {
        return Err(EngineError::Labels("the label list is empty".into()));
    }
    if specs.len() > MAX_LABELS {
        return Err(EngineError::Labels(format!("{} labels given, at most {MAX_LABELS} are supported", specs.len())));
    }
    let blank: Vec<String> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name.trim().is_empty())
        .map(|(i, s)| format!("#{i} {:?}", s.name))
        .collect();
    if !blank.is_empty() {
        return Err(EngineError::Labels(format!("empty or whitespace-only labels: {}", blank.join(", "))));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut duplicates = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let key = spec.name.trim().to_lowercase();
        if let Some(first) = seen.get(&key) {
            duplicates.push(format!("{:?} (#{first} and #{i})", spec.name));
        } else {
            seen.insert(key, i);
        }
    }
    if !duplicates.is_empty() {
        return Err(EngineError::Labels(format!("duplicate labels (case-insensitive): {}", duplicates.join(", "))));
    }
    Ok(())
}

/// Counters for cache behaviour (tests and diagnostics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub memory_hits: usize,
    pub disk_hits: usize,
    pub encoded: usize,
}

pub struct LabelBank {
    encoder: TextEncoder,
    templates: Vec<String>,
    /// Reference embeddings (`n x dim`) against which each label's similarities are z-scored.
    anchors: Option<Vec<f32>>,
    /// Embedding and its calibration (gain, bias), by content hash.
    memory: HashMap<[u8; 32], (Vec<f32>, f32, f32)>,
    disk_dir: Option<PathBuf>,
    stats: CacheStats,
}

impl LabelBank {
    /// `disk_dir`: where embeddings persist between runs (None: memory only).
    /// `anchors`: optional calibration set (`n x dim`, see `Manifest::label_calibration`).
    pub fn new(encoder: TextEncoder, templates: Vec<String>, disk_dir: Option<PathBuf>, anchors: Option<Vec<f32>>) -> Result<Self> {
        check_templates(&templates)?;
        if let Some(a) = &anchors
            && (a.is_empty() || a.len() % encoder.dim() != 0)
        {
            return Err(EngineError::Labels(format!(
                "calibration anchors hold {} floats, not a positive multiple of the embedding dim {}",
                a.len(),
                encoder.dim()
            )));
        }
        Ok(LabelBank { encoder, templates, anchors, memory: HashMap::new(), disk_dir, stats: CacheStats::default() })
    }

    pub fn dim(&self) -> usize {
        self.encoder.dim()
    }

    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    pub fn set_templates(&mut self, templates: Vec<String>) -> Result<()> {
        check_templates(&templates)?;
        self.templates = templates;
        Ok(())
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Embeds sentences directly (no templates, no cache).
    pub fn embed_sentences(&mut self, sentences: &[String]) -> Result<Vec<f32>> {
        Ok(self.encoder.encode(sentences)?.vectors)
    }

    /// Validates, then encodes what no cache holds, in batches.
    pub fn build(&mut self, specs: &[LabelSpec]) -> Result<LabelSet> {
        validate(specs)?;
        let _span = tracing::info_span!("label_encoding", labels = specs.len()).entered();
        let dim = self.dim();
        let keys: Vec<[u8; 32]> = specs.iter().map(|s| self.cache_key(s)).collect();
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if self.memory.contains_key(key) {
                self.stats.memory_hits += 1;
            } else if let Some(v) = self.read_disk(key, dim) {
                self.stats.disk_hits += 1;
                self.remember(*key, v);
            } else {
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            self.encode_missing(specs, &keys, &missing)?;
        }
        let mut embeddings = Vec::with_capacity(specs.len() * dim);
        let (mut gain, mut bias) = (Vec::with_capacity(specs.len()), Vec::with_capacity(specs.len()));
        for key in &keys {
            let (v, g, b) = self.memory.get(key).ok_or_else(|| EngineError::Labels("internal: embedding missing after encoding".into()))?;
            embeddings.extend_from_slice(v);
            gain.push(*g);
            bias.push(*b);
        }
        Ok(LabelSet {
            names: specs.iter().map(|s| s.name.trim().to_string()).collect(),
            embeddings,
            dim,
            colors: specs.iter().map(|s| label_color(s.name.trim())).collect(),
            gain,
            bias,
        })
    }

    fn sentences(&self, spec: &LabelSpec) -> Vec<String> {
        let name = spec.name.trim();
        let mut out: Vec<String> = self.templates.iter().map(|t| t.replacen("{}", name, 1)).collect();
        if let Some(d) = spec.description.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            out.push(d.to_string());
        }
        out
    }

    fn encode_missing(&mut self, specs: &[LabelSpec], keys: &[[u8; 32]], missing: &[usize]) -> Result<()> {
        let dim = self.dim();
        let mut sentences = Vec::new();
        let mut owner = Vec::new();
        for &i in missing {
            for s in self.sentences(&specs[i]) {
                sentences.push(s);
                owner.push(i);
            }
        }
        let encoded = self.encoder.encode(&sentences)?;
        let mut sums: HashMap<usize, Vec<f32>> = HashMap::new();
        let mut warned = std::collections::HashSet::new();
        for (j, &i) in owner.iter().enumerate() {
            if encoded.truncated[j] && warned.insert(i) {
                tracing::warn!(label = %specs[i].name, "label or description longer than the text encoder's max_tokens; truncated");
            }
            let sum = sums.entry(i).or_insert_with(|| vec![0.0; dim]);
            let v = &encoded.vectors[j * dim..(j + 1) * dim];
            sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
        }
        for (i, mut v) in sums {
            l2_normalize(&mut v);
            self.write_disk(&keys[i], &v);
            self.remember(keys[i], v);
            self.stats.encoded += 1;
        }
        Ok(())
    }

    /// Calibration depends only on the embedding and this bank's anchors, so it is cached too.
    fn remember(&mut self, key: [u8; 32], embedding: Vec<f32>) {
        let (g, b) = calibrate(&embedding, embedding.len(), self.anchors.as_deref());
        self.memory.insert(key, (embedding, g[0], b[0]));
    }

    fn cache_key(&self, spec: &LabelSpec) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.encoder.fingerprint().as_bytes());
        for s in self.sentences(spec) {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.finalize().into()
    }

    fn disk_path(&self, key: &[u8; 32]) -> Option<PathBuf> {
        let hex = hex::encode(key);
        self.disk_dir.as_ref().map(|d| d.join(&hex[..2]).join(format!("{hex}.f32")))
    }

    fn read_disk(&self, key: &[u8; 32], dim: usize) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.disk_path(key)?).ok()?;
        // A short or foreign file is ignored and re-encoded, never trusted.
        if bytes.len() != dim * 4 {
            return None;
        }
        let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        v.iter().all(|x| x.is_finite()).then_some(v)
    }

    /// Best effort: a read-only cache directory only costs re-encoding next time.
    fn write_disk(&self, key: &[u8; 32], v: &[f32]) {
        let Some(path) = self.disk_path(key) else { return };
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        if let Err(e) = write_atomic(&path, &bytes) {
            tracing::debug!(path = %path.display(), error = %e, "label cache not written");
        }
    }
}

/// Per label, z-scoring against the anchors: `(cos - mean) / std` = `gain * cos + bias`.
/// Labels that resemble everything (high mean similarity) would otherwise win everywhere.
pub fn calibrate(embeddings: &[f32], dim: usize, anchors: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let n = embeddings.len() / dim;
    let Some(anchors) = anchors else {
        return (vec![1.0; n], vec![0.0; n]);
    };
    embeddings
        .chunks_exact(dim)
        .map(|label| {
            let sims: Vec<f64> = anchors.chunks_exact(dim).map(|a| crate::costmap::dot(a, label) as f64).collect();
            let mean = sims.iter().sum::<f64>() / sims.len() as f64;
            let var = sims.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / sims.len() as f64;
            let std = var.sqrt().max(1e-6);
            ((1.0 / std) as f32, (-mean / std) as f32)
        })
        .unzip()
}

fn check_templates(templates: &[String]) -> Result<()> {
    if templates.is_empty() {
        return Err(EngineError::Labels("at least one prompt template is needed (\"{}\" is the bare label)".into()));
    }
    if let Some(t) = templates.iter().find(|t| t.matches("{}").count() != 1) {
        return Err(EngineError::Labels(format!("prompt template {t:?} must contain exactly one {{}}")));
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so readers never see half a file (see
/// [`AtomicFile`]); makes the folder first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(AtomicFile::folder(path))?;
    let (pending, mut file) = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    pending.commit(file)
}

/// A file that replaces `path` only once complete: written to a hidden temporary beside it, on
/// disk before the rename (after a power cut the path holds the old bytes or the new ones), and
/// removed if it is dropped before [`AtomicFile::commit`] (a failed write, or a full disk, must
/// not leave leftovers behind).
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// The temporary file, opened for writing; `path`'s folder must exist.
    pub fn create(path: &Path) -> std::io::Result<(Self, std::fs::File)> {
        // Unique per call: two writers of one path in this process never share a temporary file.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = Self::folder(path).join(format!(
            ".{}.{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&tmp)?;
        Ok((AtomicFile { tmp, path: path.to_path_buf(), committed: false }, file))
    }

    /// Puts `file` (the one [`AtomicFile::create`] gave) on disk and renames it onto the path.
    pub fn commit(mut self, file: std::fs::File) -> std::io::Result<()> {
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        // Makes the rename durable. Best effort: some file systems cannot sync a folder, and
        // the file itself is already on disk.
        #[cfg(unix)]
        if let Ok(d) = std::fs::File::open(Self::folder(&self.path)) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn folder(path: &Path) -> &Path {
        match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `text` without a leading UTF-8 byte order mark, which editors on Windows put at the start of
/// text files and which `str::trim` keeps (U+FEFF is not white space).
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_label_lists_name_the_offenders() {
        let specs = |names: &[&str]| names.iter().map(|n| LabelSpec::new(*n)).collect::<Vec<_>>();
        assert!(validate(&[]).unwrap_err().to_string().contains("empty"));
        let e = validate(&specs(&["cat", "  ", ""])).unwrap_err().to_string();
        assert!(e.contains("#1 \"  \"") && e.contains("#2 \"\""), "{e}");
        let e = validate(&specs(&["Dog", "cat", "dog "])).unwrap_err().to_string();
        assert!(e.contains("\"dog \" (#0 and #2)"), "{e}");
        validate(&specs(&["crop row", "weed", "Straße", "草"])).unwrap();
        let many: Vec<LabelSpec> = (0..=MAX_LABELS).map(|i| LabelSpec::new(format!("l{i}"))).collect();
        assert!(validate(&many).unwrap_err().to_string().contains("10001 labels"));
    }

    #[test]
    fn descriptions_parse_and_reject_bad_lines() {
        let m = parse_descriptions(["weed: a small wild plant", "# comment", "", "crop row : plants in a line"]).unwrap();
        assert_eq!(m["weed"], "a small wild plant");
        assert_eq!(m["crop row"], "plants in a line");
        let e = parse_descriptions(["weed a plant"]).unwrap_err().to_string();
        assert!(e.contains("description 1") && e.contains("weed a plant"), "{e}");
        let e = parse_descriptions(["weed: a plant", ": no label"]).unwrap_err().to_string();
        assert!(e.contains("description 2") && e.contains("has no label"), "{e}");
        let e = parse_descriptions(["weed:  "]).unwrap_err().to_string();
        assert!(e.contains("has no sentence"), "{e}");
        let e = parse_descriptions(["weed: a plant", "weed: another"]).unwrap_err().to_string();
        assert!(e.contains("description 2") && e.contains("\"weed\" a second time"), "{e}");
    }

    #[test]
    fn split_list_trims() {
        assert_eq!(split_list(" crop row, weed ,soil"), vec!["crop row", "weed", "soil"]);
    }

    #[test]
    fn calibration_z_scores_against_anchors() {
        let (g, b) = calibrate(&[1.0, 0.0], 2, None);
        assert_eq!((g, b), (vec![1.0], vec![0.0]));
        // Anchor similarities to the label are 1 and 0: mean 0.5, std 0.5.
        let (g, b) = calibrate(&[1.0, 0.0], 2, Some(&[1.0, 0.0, 0.0, 1.0]));
        assert!((g[0] - 2.0).abs() < 1e-6 && (b[0] + 1.0).abs() < 1e-6);
        // A cosine equal to the anchor mean maps to 0.
        assert!((g[0] * 0.5 + b[0]).abs() < 1e-6);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.f32");
        write_atomic(&p, &[1, 2, 3]).unwrap();
        write_atomic(&p, &[4]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), vec![4]);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty folder fails after the temporary file is written.
        let target = dir.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"x").unwrap();
        assert!(write_atomic(&target, b"new").is_err());
        let names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["taken".to_string()], "temporary file left behind");
        assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"x");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_label() {
        assert_eq!(strip_bom("\u{feff}weed\nsoil"), "weed\nsoil");
        assert_eq!(strip_bom("weed"), "weed");
        let m = parse_descriptions(["\u{feff}weed: a small wild plant"]).unwrap();
        assert_eq!(m["weed"], "a small wild plant");
    }
}
