//! What ovseg-train writes, for the checks on its outputs that `engine::outputs` makes before
//! any work starts: how it recognises its own files, and its model directories, which are
//! replaced as a whole.
use std::io::Read;
use std::path::{Path, PathBuf};

use engine::outputs::{OutputError, OutputKind, canonical, json_object, read_small};

/// Every model directory ovseg-train exports says this in its manifest's description.
pub const TRAINED_BY: &str = "trained by ovseg-train";

/// What the inputs are called in errors.
pub const BASE_MODEL: &str = "the default model that trained models build on";

/// The inputs and outputs of one command (see `engine::outputs`).
pub type Outputs = engine::outputs::Outputs<Kind>;

/// What an output file holds, to recognise an earlier output of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Checkpoint,
    Fixture,
    TrainReport,
    EvalMarkdown,
    BenchReport,
}

impl OutputKind for Kind {
    const WRITER: &'static str = "ovseg-train";

    fn describe(self) -> String {
        match self {
            Kind::Checkpoint => "a training checkpoint",
            Kind::Fixture => "a training fixture",
            Kind::TrainReport => "a training report",
            Kind::EvalMarkdown => "an evaluation report",
            Kind::BenchReport => "a bench report",
        }
        .into()
    }

    fn recognises(self, path: &Path) -> bool {
        match self {
            Kind::Checkpoint => safetensors_metadata(path).is_some_and(|m| m.contains_key(crate::checkpoint::METADATA_KEY)),
            Kind::Fixture => safetensors_metadata(path).is_some_and(|m| m.contains_key(crate::fixture::META_KEY)),
            Kind::TrainReport => json_object_with(path, &["config", "steps_done", "untrained", "trained"]),
            Kind::BenchReport => json_object_with(path, &["steps", "cpu", "loss_max_relative_difference"]),
            Kind::EvalMarkdown => read_small(path).is_some_and(|b| String::from_utf8_lossy(&b).contains(crate::eval::MARKDOWN_TABLE_HEADER)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error("{what} {}: name the model directory itself (for example my-model): it is replaced as a whole, and its checkpoint is written beside it", .path.display())]
    NotAName { what: String, path: PathBuf },
    #[error("{what} {} is or contains the current directory; name another model directory (it is replaced as a whole)", .path.display())]
    CurrentDirectory { what: String, path: PathBuf },
    #[error("{} exists and is not a model directory; refusing to overwrite it", .path.display())]
    NotAModelDirectory { path: PathBuf },
    #[error("{} holds a model that ovseg-train did not write ({reason}); refusing to replace it (--force replaces it)", .path.display())]
    ForeignModel { path: PathBuf, reason: String },
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// A model directory among the outputs of `paths`, replaced as a whole by the export: named,
/// not around the current directory, clear of the inputs and other outputs, and holding what
/// [`check_model_destination`] allows.
pub fn model_dir(paths: &mut Outputs, path: &Path, what: &str) -> Result<(), ModelDirError> {
    let (what_s, shown) = (what.to_string(), path.to_path_buf());
    // `.`, `..` and `/` name no directory that could be moved into place beside its parent.
    if path.file_name().is_none() {
        return Err(ModelDirError::NotAName { what: what_s, path: shown });
    }
    if std::env::current_dir().is_ok_and(|cwd| canonical(&cwd).starts_with(canonical(path))) {
        return Err(ModelDirError::CurrentDirectory { what: what_s, path: shown });
    }
    paths.folder(path, what)?;
    check_model_destination(path, paths.force())
}

/// What may be at a model directory's path: nothing, an empty directory, or a model directory
/// that ovseg-train wrote (any model directory with `force`).
pub fn check_model_destination(out: &Path, force: bool) -> Result<(), ModelDirError> {
    if std::fs::symlink_metadata(out).is_err() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(ModelDirError::NotAModelDirectory { path: out.to_path_buf() });
    }
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_none()) {
        return Ok(());
    }
    if !out.join(engine::manifest::MANIFEST_FILE).is_file() {
        return Err(ModelDirError::NotAModelDirectory { path: out.to_path_buf() });
    }
    let reason = match engine::Manifest::read(out) {
        Ok(m) if m.description.contains(TRAINED_BY) => return Ok(()),
        Ok(m) => format!("its manifest names it {:?}", m.name),
        Err(e) => format!("its manifest does not read: {e}"),
    };
    if force { Ok(()) } else { Err(ModelDirError::ForeignModel { path: out.to_path_buf(), reason }) }
}

fn json_object_with(path: &Path, keys: &[&str]) -> bool {
    json_object(path).is_some_and(|o| keys.iter().all(|k| o.contains_key(*k)))
}

/// The `__metadata__` of a safetensors file, from its header alone (the tensors may be large).
fn safetensors_metadata(path: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; usize::try_from(len).ok()?];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header.get("__metadata__")?.as_object().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir_at(dir: &Path, description: &str) {
        let mut manifest = engine::zoo::build::default_manifest();
        manifest.description = description.to_string();
        std::fs::create_dir_all(dir).unwrap();
        manifest.write(dir).unwrap();
    }

    #[test]
    fn model_directories_are_replaced_only_when_ovseg_train_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        let (base, ours, foreign, photos) = (dir.path().join("base"), dir.path().join("ours"), dir.path().join("foreign"), dir.path().join("photos"));
        model_dir_at(&base, "built by `ovseg models fetch`");
        model_dir_at(&ours, &format!("a head; {TRAINED_BY}."));
        model_dir_at(&foreign, "someone else's model");
        std::fs::create_dir(&photos).unwrap();
        std::fs::write(photos.join("holiday.jpg"), b"precious").unwrap();
        let check = |out: &Path, force: bool| {
            let mut paths = Outputs::new(force);
            paths.input(&base, BASE_MODEL);
            model_dir(&mut paths, out, "--out").map_err(|e| e.to_string())
        };
        check(&ours, false).unwrap();
        check(&dir.path().join("new"), false).unwrap();
        let err = check(&foreign, false).unwrap_err();
        assert!(err.contains("foreign") && err.contains("did not write") && err.contains("--force"), "{err}");
        check(&foreign, true).unwrap();
        // Never the base model (the same folder by another name, inside it, or around it), nor a
        // folder that is not a model, not even with --force.
        for (out, needle) in [(base.join("../base/"), "is the default model"), (base.join("sub"), "inside"), (dir.path().to_path_buf(), "contains")] {
            let err = check(&out, true).unwrap_err();
            assert!(err.contains(needle), "{needle:?} missing from: {err}");
        }
        assert!(check(&photos, true).unwrap_err().contains("not a model directory"));
        assert!(check(&photos.join("holiday.jpg"), true).unwrap_err().contains("not a model directory"));
        for unnamed in [".", "..", "/", "a/.."] {
            let err = check(Path::new(unnamed), true).unwrap_err();
            assert!(err.contains("name the model directory itself"), "{unnamed}: {err}");
        }
        let cwd = std::env::current_dir().unwrap();
        assert!(check(&cwd, true).unwrap_err().contains("current directory"));
    }

    #[test]
    fn output_files_never_replace_inputs_or_files_of_another_kind() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        std::fs::create_dir_all(p("set/images")).unwrap();
        std::fs::write(p("set/labels.txt"), "sky\n").unwrap();
        std::fs::write(p("train.yaml"), "steps: 2\n").unwrap();
        std::fs::write(p("notes.json"), r#"{"mine": true}"#).unwrap();
        std::fs::write(p("report.json"), r#"{"config": {}, "steps_done": 2, "untrained": {}, "trained": {}}"#).unwrap();
        std::fs::write(p("old.md"), format!("## m\n\n{}\n", crate::eval::MARKDOWN_TABLE_HEADER)).unwrap();
        let paths = |force: bool| {
            let mut paths = Outputs::new(force);
            paths.input(&p("set"), "a training data set").input(&p("train.yaml"), "the configuration file");
            paths.continued_input(&p("m.checkpoint.safetensors"), "the checkpoint being resumed", Kind::Checkpoint);
            model_dir(&mut paths, &p("m"), "--out").unwrap();
            paths
        };
        let err = |path: PathBuf, kind: Kind, force: bool| paths(force).file(&path, "--json", kind).unwrap_err().to_string();
        assert!(err(p("set/labels.txt"), Kind::TrainReport, true).contains("inside a training data set"));
        assert!(err(p("set"), Kind::TrainReport, true).contains("is a directory"));
        assert!(err(p("set/../train.yaml"), Kind::TrainReport, true).contains("is the configuration file"));
        assert!(err(p("m/report.json"), Kind::TrainReport, true).contains("inside --out"));
        // The resumed checkpoint may be written on by the checkpoint, not by anything else.
        assert!(err(p("m.checkpoint.safetensors"), Kind::Fixture, true).contains("is the checkpoint being resumed"));
        paths(false).file(&p("m.checkpoint.safetensors"), "the running checkpoint", Kind::Checkpoint).unwrap();
        // An existing file is replaced when it is an earlier output of the same kind, or with --force.
        let e = err(p("notes.json"), Kind::TrainReport, false);
        assert!(e.contains("notes.json exists and is not a training report") && e.contains("--force"), "{e}");
        paths(true).file(&p("notes.json"), "--json", Kind::TrainReport).unwrap();
        paths(false).file(&p("report.json"), "--json", Kind::TrainReport).unwrap();
        assert!(err(p("report.json"), Kind::BenchReport, false).contains("not a bench report"));
        paths(false).file(&p("old.md"), "--markdown", Kind::EvalMarkdown).unwrap();
        assert!(err(p("train.yaml"), Kind::EvalMarkdown, true).contains("configuration file"));
        // Two outputs never share a path.
        let mut both = paths(false);
        both.file(&p("pool.fixture"), "--write-fixture", Kind::Fixture).unwrap();
        let e = both.file(&p("pool.fixture"), "--json", Kind::TrainReport).unwrap_err().to_string();
        assert!(e.contains("is also --write-fixture"), "{e}");
    }

    #[test]
    fn an_evaluation_report_may_go_into_the_model_it_evaluates() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        model_dir_at(&model, TRAINED_BY);
        let check = |name: &str, force: bool| {
            let mut paths = Outputs::new(force);
            paths.open_input(&model, "the model being evaluated");
            paths.file(&model.join(name), "--markdown", Kind::EvalMarkdown).map_err(|e| e.to_string())
        };
        check("eval.md", false).unwrap();
        std::fs::write(model.join("eval.md"), format!("{}\n", crate::eval::MARKDOWN_TABLE_HEADER)).unwrap();
        check("eval.md", false).unwrap();
        let err = check("manifest.yaml", true).unwrap_err();
        assert!(err.contains("is a file of the model being evaluated"), "{err}");
        assert!(check(".", true).unwrap_err().contains("is a directory"));
    }

    #[test]
    fn checkpoints_and_fixtures_are_recognised_by_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        let views: Vec<(&str, safetensors::tensor::TensorView)> = Vec::new();
        let meta = |key: &str| Some(std::collections::HashMap::from([(key.to_string(), "{}".to_string())]));
        std::fs::write(&path, safetensors::serialize(views.clone(), meta(crate::checkpoint::METADATA_KEY)).unwrap()).unwrap();
        assert!(Kind::Checkpoint.recognises(&path) && !Kind::Fixture.recognises(&path));
        std::fs::write(&path, safetensors::serialize(views, meta(crate::fixture::META_KEY)).unwrap()).unwrap();
        assert!(Kind::Fixture.recognises(&path) && !Kind::Checkpoint.recognises(&path));
        std::fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\xffnot one").unwrap();
        assert!(!Kind::Checkpoint.recognises(&path));
    }
}
