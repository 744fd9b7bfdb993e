//! The engine cache: one directory per key (model, TensorRT version, GPU, precision and build
//! settings), so an engine is only ever loaded where it was built. A key with no entry is built
//! with a log line naming what differs from the closest entry; files that no longer match what
//! was recorded after the build (truncated, overwritten) are moved aside and rebuilt.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

/// Everything an engine depends on. Two keys with the same fields share an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineKey {
    pub model_sha256: String,
    pub tensorrt: String,
    pub gpu: String,
    pub compute_capability: String,
    pub precision: String,
    /// INT8 only: the calibration table's hash.
    pub calibration_sha256: Option<String>,
    pub workspace_mb: u64,
    pub dla_core: Option<u32>,
    /// The optimisation profile (min/opt/max input shapes).
    pub input_profile: String,
}

impl EngineKey {
    /// Directory name: the first 16 hex digits of the key's hash.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..8])
    }

    /// The fields that differ from `other`, as `name: other -> self`.
    pub fn differences(&self, other: &EngineKey) -> Vec<String> {
        let (mine, theirs) = (fields(self), fields(other));
        mine.iter()
            .filter_map(|(name, value)| {
                let old = theirs.get(name).cloned().unwrap_or_default();
                (old != *value).then(|| format!("{name}: {old} -> {value}"))
            })
            .collect()
    }
}

fn fields(key: &EngineKey) -> BTreeMap<String, String> {
    match serde_json::to_value(key) {
        Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, v)| (k, v.to_string())).collect(),
        _ => BTreeMap::new(),
    }
}

/// What `key.json` in an entry holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    key: EngineKey,
    /// Engine files and their size and hash once a build finished; empty while building.
    files: BTreeMap<String, FileRecord>,
    /// Seconds since the epoch of the last successful build.
    built: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileRecord {
    bytes: u64,
    sha256: String,
}

const RECORD: &str = "key.json";
/// Entries kept; older ones are removed when a new one is built.
const KEEP: usize = 4;

/// What to do with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// A complete, intact engine for this key.
    Reuse,
    /// Build into this entry, and why.
    Build { reason: String },
}

/// One key's directory in the cache.
#[derive(Debug)]
pub struct Slot {
    pub dir: PathBuf,
    pub state: SlotState,
    root: PathBuf,
    key: EngineKey,
}

pub struct EngineCache {
    root: PathBuf,
}

impl EngineCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        EngineCache { root: root.into() }
    }

    /// The entry for `key`, ready to reuse or to build into (see [`SlotState`]).
    pub fn slot(&self, key: &EngineKey, force_rebuild: bool) -> Result<Slot> {
        let dir = self.root.join(key.id());
        let slot = |state| Slot { dir: dir.clone(), state, root: self.root.clone(), key: key.clone() };
        let reason = if force_rebuild {
            "force_engine_rebuild is set".to_string()
        } else {
            match read_record(&dir) {
                Some(record) if record.key != *key => format!("entry {} belongs to another key", dir.display()),
                Some(record) if record.files.is_empty() => "the last build into this entry did not finish".to_string(),
                Some(record) => match damaged_file(&dir, &record) {
                    None => return Ok(slot(SlotState::Reuse)),
                    Some(problem) => {
                        let moved = quarantine(&self.root, &dir)?;
                        format!("cached engine file {problem}; moved the entry to {}", moved.display())
                    }
                },
                None => self.why_missing(key),
            }
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| EngineError::io(format!("clearing {}", dir.display()), e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
        write_record(&dir, &Record { key: key.clone(), files: BTreeMap::new(), built: 0 })?;
        self.prune(&dir);
        Ok(slot(SlotState::Build { reason }))
    }

    /// Whether an intact, finished engine for `key` is cached (changes nothing).
    pub fn is_cached(&self, key: &EngineKey) -> bool {
        let dir = self.root.join(key.id());
        read_record(&dir).is_some_and(|r| r.key == *key && !r.files.is_empty() && damaged_file(&dir, &r).is_none())
    }

    /// Names what changed against the entry whose key is closest (e.g. a TensorRT upgrade).
    fn why_missing(&self, key: &EngineKey) -> String {
        let closest = self
            .records()
            .into_iter()
            .map(|(_, r)| key.differences(&r.key))
            .min_by_key(Vec::len);
        match closest {
            Some(changed) if !changed.is_empty() => format!("no engine for this key; the closest cached one differs in {}", changed.join(", ")),
            _ => "no engine cached yet".to_string(),
        }
    }

    fn records(&self) -> Vec<(PathBuf, Record)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        entries.flatten().map(|e| e.path()).filter_map(|p| read_record(&p).map(|r| (p, r))).collect()
    }

    /// Keeps the `KEEP` most recently built entries besides `current`.
    fn prune(&self, current: &Path) {
        let mut others: Vec<(PathBuf, Record)> = self.records().into_iter().filter(|(p, _)| p != current).collect();
        others.sort_by_key(|(_, r)| std::cmp::Reverse(r.built));
        for (path, _) in others.into_iter().skip(KEEP - 1) {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!("engine cache: could not remove old entry {}: {e}", path.display());
            }
        }
    }
}

impl Slot {
    /// Records the files a finished build left in the entry, so later starts can check them.
    pub fn record_built(&self) -> Result<()> {
        let mut files = BTreeMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| EngineError::io(format!("reading {}", self.dir.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == RECORD || !entry.path().is_file() {
                continue;
            }
            files.insert(name, file_record(&entry.path())?);
        }
        if files.is_empty() {
            return Err(EngineError::TensorRt(format!("the build left no engine file in {}", self.dir.display())));
        }
        let built = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        write_record(&self.dir, &Record { key: self.key.clone(), files, built })
    }

    /// Moves the entry aside (kept for inspection, out of the way of the next build).
    pub fn quarantine(&self) -> Result<PathBuf> {
        quarantine(&self.root, &self.dir)
    }
}

fn read_record(dir: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Written to a temporary file and renamed, so a crash never leaves half a record.
fn write_record(dir: &Path, record: &Record) -> Result<()> {
    let path = dir.join(RECORD);
    let tmp = dir.join(format!("{RECORD}.tmp"));
    let json = serde_json::to_vec_pretty(record).map_err(|e| EngineError::TensorRt(format!("encoding {}: {e}", path.display())))?;
    std::fs::write(&tmp, json).map_err(|e| EngineError::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| EngineError::io(format!("writing {}", path.display()), e))
}

fn file_record(path: &Path) -> Result<FileRecord> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(format!("reading {}", path.display()), e))?;
    Ok(FileRecord { bytes: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) })
}

/// The first recorded file that is missing or differs from its record, described.
fn damaged_file(dir: &Path, record: &Record) -> Option<String> {
    record.files.iter().find_map(|(name, want)| {
        let path = dir.join(name);
        match file_record(&path) {
            Err(_) => Some(format!("{} is missing", path.display())),
            Ok(got) if got.bytes != want.bytes => Some(format!("{} is {} bytes, {} when built (truncated?)", path.display(), got.bytes, want.bytes)),
            Ok(got) if got != *want => Some(format!("{} changed since it was built (sha256 {})", path.display(), got.sha256)),
            Ok(_) => None,
        }
    })
}

fn quarantine(root: &Path, dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let aside = root.join("corrupt").join(format!("{name}-{stamp}"));
    std::fs::create_dir_all(root.join("corrupt")).map_err(|e| EngineError::io(format!("creating {}", root.join("corrupt").display()), e))?;
    std::fs::rename(dir, &aside).map_err(|e| EngineError::io(format!("moving {} aside", dir.display()), e))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EngineKey {
        EngineKey {
            model_sha256: "ab12".into(),
            tensorrt: "10.3.0".into(),
            gpu: "Orin".into(),
            compute_capability: "8.7".into(),
            precision: "fp16".into(),
            calibration_sha256: None,
            workspace_mb: 1024,
            dla_core: None,
            input_profile: "1x3x32x32..1x3x384x512..1x3x512x512".into(),
        }
    }

    /// Stands in for TensorRT writing an engine into the entry (no TensorRT here).
    fn build(slot: &Slot, bytes: &[u8]) {
        std::fs::write(slot.dir.join("TensorrtExecutionProvider_model.engine"), bytes).unwrap();
        slot.record_built().unwrap();
    }

    #[test]
    fn an_entry_is_reused_only_for_its_own_key_and_a_change_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(tmp.path());
        let first = cache.slot(&key(), false).unwrap();
        assert_eq!(first.state, SlotState::Build { reason: "no engine cached yet".into() });
        assert!(!cache.is_cached(&key()));
        build(&first, b"engine bytes");
        assert!(cache.is_cached(&key()));
        assert_eq!(cache.slot(&key(), false).unwrap().state, SlotState::Reuse);

        let upgraded = EngineKey { tensorrt: "10.4.0".into(), ..key() };
        let slot = cache.slot(&upgraded, false).unwrap();
        assert_ne!(slot.dir, first.dir);
        let SlotState::Build { reason } = &slot.state else { panic!("{:?}", slot.state) };
        assert!(reason.contains("tensorrt: \"10.3.0\" -> \"10.4.0\"") && !reason.contains("gpu"), "{reason}");
        // The old entry stays usable for the old key.
        assert_eq!(cache.slot(&key(), false).unwrap().state, SlotState::Reuse);
        // A build that never finished is not reused.
        let SlotState::Build { reason } = cache.slot(&upgraded, false).unwrap().state else { panic!() };
        assert!(reason.contains("did not finish"), "{reason}");
    }

    #[test]
    fn a_truncated_engine_is_moved_aside_and_rebuilt_and_force_rebuilds() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(tmp.path());
        let slot = cache.slot(&key(), false).unwrap();
        build(&slot, &[7u8; 1000]);
        let engine = slot.dir.join("TensorrtExecutionProvider_model.engine");
        std::fs::write(&engine, [7u8; 400]).unwrap();
        let again = cache.slot(&key(), false).unwrap();
        let SlotState::Build { reason } = &again.state else { panic!("{:?}", again.state) };
        assert!(reason.contains("400 bytes, 1000 when built") && reason.contains("moved the entry to"), "{reason}");
        let aside: Vec<_> = std::fs::read_dir(tmp.path().join("corrupt")).unwrap().flatten().collect();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].path().join("TensorrtExecutionProvider_model.engine").is_file(), "the damaged file is kept for inspection");
        assert!(!engine.exists(), "the entry starts empty");
        // Same size, other bytes: also caught.
        build(&again, &[7u8; 1000]);
        std::fs::write(&engine, [8u8; 1000]).unwrap();
        let SlotState::Build { reason } = cache.slot(&key(), false).unwrap().state else { panic!() };
        assert!(reason.contains("changed since it was built"), "{reason}");
        let slot = cache.slot(&key(), true).unwrap();
        assert_eq!(slot.state, SlotState::Build { reason: "force_engine_rebuild is set".into() });
    }

    #[test]
    fn old_entries_are_pruned_and_ids_are_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(tmp.path());
        assert_eq!(key().id(), key().id());
        assert_eq!(key().id().len(), 16);
        for ws in 0..6u64 {
            let slot = cache.slot(&EngineKey { workspace_mb: ws, ..key() }, false).unwrap();
            build(&slot, &[ws as u8; 10]);
            // Distinct build times for the pruning order.
            let mut record = read_record(&slot.dir).unwrap();
            record.built = ws + 1;
            write_record(&slot.dir, &record).unwrap();
        }
        let kept: Vec<u64> = cache.records().iter().map(|(_, r)| r.key.workspace_mb).collect();
        assert_eq!(kept.len(), KEEP, "{kept:?}");
        assert!(kept.contains(&5) && !kept.contains(&0) && !kept.contains(&1), "{kept:?}");
    }
}
