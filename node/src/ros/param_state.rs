//! Parameter values and what a change does: validate, then encode labels or load a model off
//! the camera path, and hand the result to the processing thread as one [`Update`].
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use engine::{BackendKind, LabelBank, LabelSet, Model, Pipeline, SegmentOptions};
use ros2_client::ParameterValue;

use super::params::{self, Settings};
use super::processor::Update;

/// What the processing thread starts with.
pub struct Initial {
    pub pipeline: Pipeline,
    pub labels: Arc<LabelSet>,
}

pub struct ParamState {
    values: BTreeMap<String, ParameterValue>,
    bank: LabelBank,
    /// Options of the loaded model that are not parameters (e.g. its logit scale).
    base_options: SegmentOptions,
    threads: usize,
    updates: Sender<Update>,
}

/// The model directory a `model_dir` value names ("" = the built-in default).
fn model_dir(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

/// Model, pipeline, label bank and encoded labels for these settings.
fn load(settings: &Settings, threads: usize) -> Result<(Pipeline, LabelBank, Arc<LabelSet>)> {
    let model = crate::model::open_dir(model_dir(&settings.model_dir).as_deref())?;
    load_model(&model, settings, threads)
}

fn load_model(model: &Model, settings: &Settings, threads: usize) -> Result<(Pipeline, LabelBank, Arc<LabelSet>)> {
    let kind: BackendKind = settings.backend.parse().context("backend")?;
    let mut pipeline = match kind {
        #[cfg(feature = "tensorrt")]
        BackendKind::TensorRt => model.pipeline_tensorrt(&tensorrt_options(&settings.tensorrt)?, threads)?,
        _ => model.pipeline(kind, threads)?,
    };
    pipeline.set_options(options(settings, pipeline.options())).context("unknown_threshold / early_rejection_top_k")?;
    let mut bank = model.label_bank(threads, Some(engine::paths::label_cache_dir()))?;
    let labels = encode(&mut bank, settings)?;
    Ok((pipeline, bank, labels))
}

#[cfg(feature = "tensorrt")]
fn tensorrt_options(t: &super::params::TensorRtSettings) -> Result<engine::tensorrt::TensorRtOptions> {
    Ok(engine::tensorrt::TensorRtOptions {
        precision: t.precision.parse().context("tensorrt_precision")?,
        workspace_mb: t.workspace_mb,
        dla_core: t.dla_core,
        int8_calibration_table: (!t.int8_calibration_table.is_empty()).then(|| PathBuf::from(&t.int8_calibration_table)),
        force_rebuild: t.force_rebuild,
        ..Default::default()
    })
}

fn options(settings: &Settings, base: &SegmentOptions) -> SegmentOptions {
    SegmentOptions {
        unknown_threshold: settings.unknown_threshold,
        early_rejection_top_k: settings.early_rejection_top_k,
        ..base.clone()
    }
}

fn encode(bank: &mut LabelBank, settings: &Settings) -> Result<Arc<LabelSet>> {
    if bank.templates() != settings.prompt_templates.as_slice() {
        bank.set_templates(settings.prompt_templates.clone()).context("prompt_templates")?;
    }
    let mut descriptions = engine::labels::parse_descriptions(settings.label_descriptions.iter().map(String::as_str))
        .context("label_descriptions")?;
    // Operators keep descriptions for labels they switch in and out; unused ones wait, but are
    // logged, since a typo in a label would otherwise go unnoticed.
    let in_labels = |label: &str| settings.labels.iter().any(|l| l.trim() == label);
    let mut unused: Vec<&String> = descriptions.keys().filter(|label| !in_labels(label)).collect();
    if !unused.is_empty() {
        unused.sort();
        tracing::warn!(
            "label_descriptions: no label in `labels` for {}; kept unused until such a label is added",
            unused.iter().map(|l| format!("'{l}'")).collect::<Vec<_>>().join(", ")
        );
    }
    descriptions.retain(|label, _| in_labels(label));
    let specs = engine::labels::with_descriptions(settings.labels.clone(), &descriptions).context("labels")?;
    Ok(Arc::new(bank.build(&specs).context("encoding labels")?))
}

/// Applies start-up overrides over `values` and returns the names of those the node does not
/// declare, which are skipped: like rclcpp, a params file may carry entries for other code
/// (`qos_overrides.*`, a shared `/**` section). A bad value of a declared parameter is an
/// error naming it.
fn apply_overrides(values: &mut BTreeMap<String, ParameterValue>, overrides: Vec<(String, ParameterValue)>) -> Result<Vec<String>> {
    let mut undeclared = Vec::new();
    for (name, value) in overrides {
        let Some(current) = values.get(&name) else {
            undeclared.push(name);
            continue;
        };
        params::check(&name, &value, current).map_err(|e| anyhow::anyhow!("parameter override: {e}"))?;
        let value = params::coerce(&value, current);
        values.insert(name, value);
    }
    Ok(undeclared)
}

impl ParamState {
    /// Applies start-up overrides (from `-p` and params files) over the defaults (the model's,
    /// and `--model-dir` / `--backend` of the command line) and loads everything. A bad value
    /// is an error naming the parameter; overrides of undeclared parameters are logged and
    /// skipped.
    pub fn start(
        cli: &crate::CommonArgs,
        overrides: Vec<(String, ParameterValue)>,
        threads: usize,
        updates: Sender<Update>,
    ) -> Result<(ParamState, Initial)> {
        let cli_dir = cli.model_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
        let dir = match overrides.iter().rev().find(|(n, _)| n == "model_dir") {
            Some((_, ParameterValue::String(d))) => d.clone(),
            _ => cli_dir,
        };
        let model = crate::model::open_dir(model_dir(&dir).as_deref())?;
        let mut values = params::defaults(&model.manifest);
        values.insert("model_dir".into(), ParameterValue::String(dir));
        values.insert("backend".into(), ParameterValue::String(cli.backend.clone()));
        let undeclared = apply_overrides(&mut values, overrides)?;
        if !undeclared.is_empty() {
            tracing::warn!(
                "ignoring overrides of parameters this node does not declare: {} (`ovseg node --help` lists its parameters)",
                undeclared.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
            );
        }
        let settings = Settings::from_values(&values);
        let threads = if settings.threads > 0 { engine::runtime::resolve_threads(settings.threads) } else { threads };
        engine::runtime::init_thread_pool(threads);
        let (pipeline, bank, labels) = load_model(&model, &settings, threads)?;
        let base_options = pipeline.options().clone();
        Ok((ParamState { values, bank, base_options, threads, updates }, Initial { pipeline, labels }))
    }

    pub fn settings(&self) -> Settings {
        Settings::from_values(&self.values)
    }

    pub fn get(&self, name: &str) -> Option<&ParameterValue> {
        self.values.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.values.keys()
    }

    /// Sets all of `changes` or none. On success the processing thread has been sent the
    /// update, so the next frame it starts uses the new values.
    pub fn set(&mut self, changes: Vec<(String, ParameterValue)>) -> Result<(), String> {
        let mut next = self.values.clone();
        for (name, value) in &changes {
            let spec = params::find(name).ok_or_else(|| format!("no parameter named '{name}'"))?;
            let current = self.values.get(spec.name).ok_or_else(|| format!("'{name}' has no value"))?;
            let value = params::coerce(value, current);
            if spec.read_only && value != *current {
                return Err(format!("'{name}' is read-only: set it at start with -p or --params-file and restart the node"));
            }
            params::check(name, &value, current)?;
            next.insert(name.clone(), value);
        }
        let (old, new) = (self.settings(), Settings::from_values(&next));
        let mut sent = Vec::new();
        let tensorrt_changed = new.backend == "tensorrt" && old.tensorrt != new.tensorrt;
        if (&old.backend, &old.model_dir) != (&new.backend, &new.model_dir) || tensorrt_changed {
            let (pipeline, bank, labels) = load(&new, self.threads).map_err(|e| format!("{e:#}"))?;
            self.bank = bank;
            self.base_options = pipeline.options().clone();
            sent.push(Update::Pipeline(Box::new(pipeline), labels));
        } else {
            if (&old.labels, &old.label_descriptions, &old.prompt_templates) != (&new.labels, &new.label_descriptions, &new.prompt_templates) {
                let labels = encode(&mut self.bank, &new).map_err(|e| {
                    // Keep the bank consistent with the values that stay in force.
                    let _ = self.bank.set_templates(old.prompt_templates.clone());
                    format!("{e:#}")
                })?;
                sent.push(Update::Labels(labels));
            }
            if (old.unknown_threshold, old.early_rejection_top_k) != (new.unknown_threshold, new.early_rejection_top_k) {
                let options = options(&new, &self.base_options);
                options.validate().map_err(|e| e.to_string())?;
                sent.push(Update::Options(options));
            }
        }
        if old.output != new.output {
            sent.push(Update::Output(Box::new(new.output.clone())));
        }
        for update in sent {
            self.updates.send(update).map_err(|_| "the processing thread has stopped".to_string())?;
        }
        self.values = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParameterValue as P;

    #[test]
    fn undeclared_overrides_are_skipped_and_bad_values_refused() {
        let mut values = params::defaults(&engine::zoo::build::default_manifest());
        let overrides = vec![
            ("bogus_param".to_string(), P::Integer(3)),
            ("overlay_alpha".to_string(), P::Integer(1)),
            ("qos_overrides./parameter_events.publisher.depth".to_string(), P::Integer(1000)),
        ];
        let undeclared = apply_overrides(&mut values, overrides).unwrap();
        assert_eq!(undeclared, ["bogus_param", "qos_overrides./parameter_events.publisher.depth"]);
        assert_eq!(values.get("overlay_alpha"), Some(&P::Double(1.0)));
        assert!(!values.contains_key("bogus_param"));
        let e = apply_overrides(&mut values, vec![("overlay_alpha".to_string(), P::Double(2.0))]).unwrap_err().to_string();
        assert!(e.starts_with("parameter override: 'overlay_alpha' must be in 0..=1, got 2"), "{e}");
    }
}
