//! Checks on what a command writes, made before any work starts: an output never replaces one
//! of the command's inputs, two outputs never share a path, and an existing file is replaced
//! only where it is an earlier output of the same kind, or with `force`. The node's commands
//! and the trainer share this; each says how it recognises its own outputs ([`OutputKind`]).
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound::{Excluded, Unbounded};
use std::path::{Path, PathBuf};

/// What an output file holds, which says how to recognise an earlier output of the same kind.
pub trait OutputKind: Copy + PartialEq {
    /// The program that writes it, as errors name it.
    const WRITER: &'static str;
    /// As errors name it: "a training report".
    fn describe(self) -> String;
    /// Whether `path` holds what the writer writes as this kind. Anything unreadable does not.
    fn recognises(self, path: &Path) -> bool;
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{what} {} is {input} ({}); refusing to write over this run's own input", .path.display(), .input_path.display())]
    IsInput { what: String, path: PathBuf, input: String, input_path: PathBuf },
    #[error("{what} {} is inside {input} ({}); write it elsewhere", .path.display(), .input_path.display())]
    InsideInput { what: String, path: PathBuf, input: String, input_path: PathBuf },
    /// `kind`: what it would be, and by whom ("a training report written by ovseg-train").
    #[error("{what} {} is a file of {input} ({}) and not {kind}; refusing to overwrite it", .path.display(), .input_path.display())]
    FileOfInput { what: String, path: PathBuf, input: String, input_path: PathBuf, kind: String },
    #[error("{what} {} contains {input} ({}), and is replaced as a whole; name another directory", .path.display(), .input_path.display())]
    ContainsInput { what: String, path: PathBuf, input: String, input_path: PathBuf },
    #[error("{what} {} is also {other} ({}); give each output its own path", .path.display(), .other_path.display())]
    SameAsOutput { what: String, path: PathBuf, other: String, other_path: PathBuf },
    #[error("{what} {} is inside {other} ({}), which is replaced as a whole; write it elsewhere", .path.display(), .other_path.display())]
    InsideOutput { what: String, path: PathBuf, other: String, other_path: PathBuf },
    #[error("{what} {} is a directory; expected a file", .path.display())]
    IsDirectory { what: String, path: PathBuf },
    #[error("{what} {} exists and is not {kind} ({writer} did not write it as one); refusing to replace it (--force replaces it)", .path.display())]
    NotOurs { what: String, path: PathBuf, kind: String, writer: &'static str },
    /// More than one output refused: the first in full, the others by path.
    #[error("{first}; also refused: {}", listing(.others))]
    Several { first: Box<OutputError>, others: Vec<PathBuf> },
}

/// The first few paths of a list, and how many more there are.
fn listing(paths: &[PathBuf]) -> String {
    const SHOWN: usize = 5;
    let head = paths.iter().take(SHOWN).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    match paths.len().saturating_sub(SHOWN) {
        0 => head,
        more => format!("{head} and {more} more"),
    }
}

/// `path` made absolute with links and `..` resolved, also where its last components do not
/// exist yet.
pub fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => canonical(if parent.as_os_str().is_empty() { Path::new(".") } else { parent }).join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}

/// The first bytes of a file, up to 64 MiB (more than any report a command writes), so that
/// recognising a file never reads a huge one whole; `None` where it cannot be read.
pub fn read_small(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    const LIMIT: u64 = 64 << 20;
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.take(LIMIT).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// A file's JSON object, if it holds one (read as [`read_small`] does).
pub fn json_object(path: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(&read_small(path)?).ok()? {
        serde_json::Value::Object(object) => Some(object),
        _ => None,
    }
}

/// Where a path leads: its canonical path and, for an existing file, its device and inode, so
/// that `a/../b`, symlinks and hard links name the same file however they are spelt.
#[derive(Debug)]
struct Place {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl Place {
    fn of(path: &Path) -> Self {
        #[cfg(unix)]
        let id = std::fs::metadata(path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        #[cfg(not(unix))]
        let id = None;
        Place { path: canonical(path), id }
    }

    /// The same file where both exist (device and inode where the platform has them), else the
    /// same canonical path.
    fn same(&self, other: &Place) -> bool {
        match (self.id, other.id) {
            (Some(a), Some(b)) => a == b,
            _ => self.path == other.path,
        }
    }
}

/// Whether two paths, existing or not, name the same place.
pub fn same_destination(a: &Path, b: &Path) -> bool {
    Place::of(a).same(&Place::of(b))
}

struct Entry<K> {
    place: Place,
    /// As the user gave it.
    shown: PathBuf,
    what: String,
    /// An output of this kind may replace this input (a resumed checkpoint that training keeps
    /// writing).
    continued_by: Option<K>,
    /// Output files may be written into this input folder (new ones, or over earlier outputs of
    /// their kind).
    open: bool,
}

/// Entries by file and by canonical path, so that a run's thousands of images and outputs are
/// checked against each other without comparing every pair.
struct Index<K> {
    entries: Vec<Entry<K>>,
    ids: HashMap<(u64, u64), usize>,
    paths: BTreeMap<PathBuf, usize>,
}

impl<K> Index<K> {
    fn new() -> Self {
        Index { entries: Vec::new(), ids: HashMap::new(), paths: BTreeMap::new() }
    }

    fn push(&mut self, entry: Entry<K>) {
        let i = self.entries.len();
        if let Some(id) = entry.place.id {
            self.ids.entry(id).or_insert(i);
        }
        self.paths.entry(entry.place.path.clone()).or_insert(i);
        self.entries.push(entry);
    }

    /// The entry that `place` is, however it is spelt.
    fn same(&self, place: &Place) -> Option<&Entry<K>> {
        let i = place.id.and_then(|id| self.ids.get(&id)).or_else(|| self.paths.get(&place.path))?;
        Some(&self.entries[*i])
    }

    /// The entries (folders) that `place` lies inside, the nearest first.
    fn around<'s>(&'s self, place: &'s Place) -> impl Iterator<Item = &'s Entry<K>> + 's {
        place.path.ancestors().skip(1).filter_map(|a| self.paths.get(a)).map(|&i| &self.entries[i])
    }

    /// An entry that lies inside `place`: paths sort by component, so one follows it directly.
    fn within(&self, place: &Place) -> Option<&Entry<K>> {
        let (path, &i) = self.paths.range::<Path, _>((Excluded(place.path.as_path()), Unbounded)).next()?;
        path.starts_with(&place.path).then(|| &self.entries[i])
    }
}

/// The inputs and outputs of one command, checked as the outputs are added.
pub struct Outputs<K> {
    force: bool,
    inputs: Index<K>,
    outputs: Index<K>,
}

impl<K: OutputKind> Outputs<K> {
    /// `force`: existing files that are not earlier outputs of their kind may be replaced
    /// (inputs never are).
    pub fn new(force: bool) -> Self {
        Outputs { force, inputs: Index::new(), outputs: Index::new() }
    }

    pub fn force(&self) -> bool {
        self.force
    }

    fn entry(path: &Path, what: String, continued_by: Option<K>, open: bool) -> Entry<K> {
        Entry { place: Place::of(path), shown: path.to_path_buf(), what, continued_by, open }
    }

    /// A file or folder the command reads ("the configuration file", as errors name it).
    pub fn input(&mut self, path: &Path, what: impl Into<String>) -> &mut Self {
        self.inputs.push(Self::entry(path, what.into(), None, false));
        self
    }

    /// An input that the output of `kind` at the same path continues (it has been read by then).
    pub fn continued_input(&mut self, path: &Path, what: impl Into<String>, kind: K) -> &mut Self {
        self.inputs.push(Self::entry(path, what.into(), Some(kind), false));
        self
    }

    /// An input folder that output files may be written into (a model directory that receives
    /// its evaluation report): as new files or over earlier outputs of their kind, never over
    /// its other files, not even with `force`.
    pub fn open_input(&mut self, path: &Path, what: impl Into<String>) -> &mut Self {
        self.inputs.push(Self::entry(path, what.into(), None, true));
        self
    }

    /// An output file of `kind`, named `what` in errors (the flag that gave it).
    pub fn file(&mut self, path: &Path, what: &str, kind: K) -> Result<(), OutputError> {
        let (what_s, shown) = (what.to_string(), path.to_path_buf());
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(OutputError::IsDirectory { what: what_s, path: shown });
        }
        let place = Place::of(path);
        self.against_inputs(&place, what, path, Some(kind))?;
        self.against_outputs(&place, what, path)?;
        // symlink_metadata: a dangling link is still something that would be replaced.
        if std::fs::symlink_metadata(path).is_ok() && !self.force && !kind.recognises(path) {
            return Err(OutputError::NotOurs { what: what_s, path: shown, kind: kind.describe(), writer: K::WRITER });
        }
        self.outputs.push(Entry { place, shown, what: what_s, continued_by: None, open: false });
        Ok(())
    }

    /// Output files all named `what`, every refused one reported: those refused even with
    /// `force` first.
    pub fn files(&mut self, what: &str, planned: impl IntoIterator<Item = (PathBuf, K)>) -> Result<(), OutputError> {
        let mut refused: Vec<(OutputError, PathBuf)> =
            planned.into_iter().filter_map(|(path, kind)| self.file(&path, what, kind).err().map(|e| (e, path))).collect();
        refused.sort_by_key(|(e, _)| matches!(e, OutputError::NotOurs { .. }));
        let mut refused = refused.into_iter();
        let Some((first, _)) = refused.next() else { return Ok(()) };
        let others: Vec<PathBuf> = refused.map(|(_, path)| path).collect();
        Err(if others.is_empty() { first } else { OutputError::Several { first: Box::new(first), others } })
    }

    /// An output folder, replaced as a whole: clear of the inputs and the other outputs. What
    /// may already be there is the caller's to check.
    pub fn folder(&mut self, path: &Path, what: &str) -> Result<(), OutputError> {
        let place = Place::of(path);
        self.against_inputs(&place, what, path, None)?;
        self.against_outputs(&place, what, path)?;
        self.outputs.push(Entry { place, shown: path.to_path_buf(), what: what.to_string(), continued_by: None, open: false });
        Ok(())
    }

    fn against_inputs(&self, place: &Place, what: &str, path: &Path, kind: Option<K>) -> Result<(), OutputError> {
        let named = |input: &Entry<K>| (what.to_string(), path.to_path_buf(), input.what.clone(), input.shown.clone());
        if let Some(input) = self.inputs.same(place)
            && (kind.is_none() || kind != input.continued_by)
        {
            let (what, path, input, input_path) = named(input);
            return Err(OutputError::IsInput { what, path, input, input_path });
        }
        for input in self.inputs.around(place) {
            let exists = std::fs::symlink_metadata(path).is_ok();
            match kind {
                Some(kind) if input.open && exists && !kind.recognises(path) => {
                    let (what, path, input, input_path) = named(input);
                    let kind = format!("{} written by {}", kind.describe(), K::WRITER);
                    return Err(OutputError::FileOfInput { what, path, input, input_path, kind });
                }
                Some(_) if input.open => {}
                _ => {
                    let (what, path, input, input_path) = named(input);
                    return Err(OutputError::InsideInput { what, path, input, input_path });
                }
            }
        }
        if let Some(input) = self.inputs.within(place) {
            let (what, path, input, input_path) = named(input);
            return Err(OutputError::ContainsInput { what, path, input, input_path });
        }
        Ok(())
    }

    fn against_outputs(&self, place: &Place, what: &str, path: &Path) -> Result<(), OutputError> {
        let named = |other: &Entry<K>| (what.to_string(), path.to_path_buf(), other.what.clone(), other.shown.clone());
        if let Some(other) = self.outputs.same(place) {
            let (what, path, other, other_path) = named(other);
            return Err(OutputError::SameAsOutput { what, path, other, other_path });
        }
        if let Some(other) = self.outputs.around(place).next().or_else(|| self.outputs.within(place)) {
            let (what, path, other, other_path) = named(other);
            return Err(OutputError::InsideOutput { what, path, other, other_path });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files of ours start with "ours".
    #[derive(Clone, Copy, PartialEq)]
    struct Note;

    impl OutputKind for Note {
        const WRITER: &'static str = "the test";
        fn describe(self) -> String {
            "a note".into()
        }
        fn recognises(self, path: &Path) -> bool {
            std::fs::read(path).is_ok_and(|b| b.starts_with(b"ours"))
        }
    }

    #[test]
    fn canonical_resolves_paths_that_do_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        assert_eq!(canonical(&dir.path().join("a/../b/c.json")), real.join("b/c.json"));
        assert_eq!(canonical(&dir.path().join("a/./")), real.join("a"));
        assert!(same_destination(&dir.path().join("new.json"), &dir.path().join("a/../new.json")));
        assert!(!same_destination(&dir.path().join("new.json"), &dir.path().join("a/new.json")));
    }

    #[test]
    fn an_input_is_never_an_output_however_it_is_spelt() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        std::fs::create_dir(p("sub")).unwrap();
        std::fs::write(p("in.txt"), "ours, and read").unwrap();
        std::fs::hard_link(p("in.txt"), p("sub/link.txt")).unwrap();
        for spelt in [p("sub/../in.txt"), p("sub/link.txt")] {
            let mut outputs = Outputs::new(true);
            outputs.input(&p("in.txt"), "the input");
            let e = outputs.file(&spelt, "--out", Note).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--out {} is the input (", spelt.display())) && e.contains("own input"), "{e}");
        }
        assert!(same_destination(&p("in.txt"), &p("sub/link.txt")));
        // Inside an input folder, or around one: refused too.
        let mut outputs = Outputs::new(true);
        outputs.input(&p("sub"), "a data set");
        assert!(outputs.file(&p("sub/new.txt"), "--out", Note).unwrap_err().to_string().contains("inside a data set"));
        assert!(outputs.folder(dir.path(), "--out").unwrap_err().to_string().contains("contains a data set"));
    }

    #[test]
    fn a_foreign_file_is_replaced_only_with_force_and_our_own_always() {
        let dir = tempfile::tempdir().unwrap();
        let (theirs, ours) = (dir.path().join("theirs.txt"), dir.path().join("ours.txt"));
        std::fs::write(&theirs, "someone's").unwrap();
        std::fs::write(&ours, "ours, earlier").unwrap();
        let e = Outputs::new(false).file(&theirs, "--out", Note).unwrap_err().to_string();
        assert_eq!(e, format!("--out {} exists and is not a note (the test did not write it as one); refusing to replace it (--force replaces it)", theirs.display()));
        Outputs::new(true).file(&theirs, "--out", Note).unwrap();
        Outputs::new(false).file(&ours, "--out", Note).unwrap();
        Outputs::new(false).file(&dir.path().join("new.txt"), "--out", Note).unwrap();
        let e = Outputs::new(true).file(dir.path(), "--out", Note).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn several_refusals_are_told_at_once_the_unforceable_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        for name in ["a", "b", "in"] {
            std::fs::write(p(name), "someone's").unwrap();
        }
        let mut outputs = Outputs::new(false);
        outputs.input(&p("in"), "the input");
        let e = outputs.files("--out", [(p("a"), Note), (p("in"), Note), (p("b"), Note)]).unwrap_err().to_string();
        assert!(e.contains("own input") && e.ends_with(&format!("also refused: {}, {}", p("a").display(), p("b").display())), "{e}");
        // Two outputs never share a path.
        let mut outputs = Outputs::new(true);
        let e = outputs.files("--out", [(p("new"), Note), (p("./new"), Note)]).unwrap_err().to_string();
        assert!(e.contains("is also --out"), "{e}");
    }

    #[test]
    fn a_continued_input_is_written_on_by_its_own_kind_only() {
        #[derive(Clone, Copy, PartialEq)]
        enum K {
            Checkpoint,
            Report,
        }
        impl OutputKind for K {
            const WRITER: &'static str = "the test";
            fn describe(self) -> String {
                "a file".into()
            }
            fn recognises(self, _: &Path) -> bool {
                true
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("c");
        std::fs::write(&c, "").unwrap();
        let outputs = || {
            let mut o = Outputs::new(true);
            o.continued_input(&c, "the checkpoint being resumed", K::Checkpoint);
            o
        };
        outputs().file(&c, "--checkpoint", K::Checkpoint).unwrap();
        assert!(outputs().file(&c, "--json", K::Report).unwrap_err().to_string().contains("is the checkpoint being resumed"));
    }
}
