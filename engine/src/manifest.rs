//! `manifest.yaml`: the model directory contract.
//!
//! A model directory holds this manifest, an ONNX image encoder producing dense pixel embeddings
//! at one or more strides, an ONNX sentence encoder and its `tokenizer.json`. Any model that
//! follows it loads, e.g. a CLIP-style dense model exported to ONNX.
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

pub const MANIFEST_FILE: &str = "manifest.yaml";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Contract version; this engine reads 1.
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Dimension shared by pixel and text embeddings.
    pub embedding_dim: usize,
    pub image_encoder: ImageEncoderSpec,
    pub text_encoder: TextEncoderSpec,
    /// Optional per-label cost calibration (see [`LabelCalibration`]).
    #[serde(default)]
    pub label_calibration: Option<LabelCalibration>,
    #[serde(default)]
    pub segmentation: SegmentationDefaults,
}

/// Each label's cosine cost is z-scored against its similarities to a reference set of
/// embeddings (for the default model: the sentence embeddings of the classes its image head
/// knows), so labels that resemble everything do not win everywhere.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelCalibration {
    /// Raw little-endian f32 file of `n x embedding_dim` L2-normalised embeddings.
    pub anchors: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageEncoderSpec {
    /// ONNX file, relative to the model directory.
    pub file: String,
    pub input: ImageInputSpec,
    /// Dense pixel-embedding outputs, any order; the engine fuses them coarse to fine.
    pub outputs: Vec<EmbeddingOutput>,
    /// Optional depth output: `[1, 1, h, w]`, metres along the optical axis, on cells laid out
    /// like an embedding output's (its `fusion_weight` is not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<EmbeddingOutput>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Scale each axis independently to the network size.
    Stretch,
    /// Keep aspect ratio, pad the rest with the mean colour.
    Letterbox,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageInputSpec {
    pub name: String,
    pub layout: Layout,
    pub color: ColorOrder,
    /// Per-channel mean and std on the 0-255 scale: x' = (x - mean) / std.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: ResizeMode,
    /// Fixed network input [width, height]; omit for models with dynamic spatial size.
    #[serde(default)]
    pub size: Option<[u32; 2]>,
    /// Dynamic models: the long side frames are scaled to (never up-scaled).
    #[serde(default = "default_max_side")]
    pub max_side: u32,
    /// Dynamic models: both sides are rounded to a multiple of this (keeps cell alignment exact).
    #[serde(default = "one_u32")]
    pub size_multiple: u32,
}

fn one_u32() -> u32 {
    1
}

fn default_max_side() -> u32 {
    512
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingOutput {
    pub name: String,
    /// Input pixels per output cell (power of two).
    pub stride: u32,
    /// Weight of this level in the top-down fusion of cost maps.
    #[serde(default = "one")]
    pub fusion_weight: f32,
    /// Input-pixel position of cell 0's centre (pixel j spans [j, j+1)); cell i sits at
    /// `center_offset + i * stride`. Default `stride / 2`, the symmetric-padding value.
    #[serde(default)]
    pub center_offset: Option<f32>,
}

impl EmbeddingOutput {
    pub fn center_offset(&self) -> f32 {
        self.center_offset.unwrap_or(self.stride as f32 / 2.0)
    }
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over non-padding tokens (sentence-transformers style).
    Mean,
    /// First token.
    Cls,
    /// The output is already one vector per sentence.
    Pooled,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderSpec {
    pub file: String,
    pub tokenizer: String,
    pub input_ids: String,
    pub attention_mask: String,
    #[serde(default)]
    pub token_type_ids: Option<String>,
    pub output: String,
    pub pooling: Pooling,
    /// Longer sentences are truncated (with a warning).
    pub max_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentationDefaults {
    /// Multiplies pixel . label cosine similarities before the softmax (inverse temperature).
    pub logit_scale: f32,
    /// Pixels whose winning probability is below this are "unknown".
    pub unknown_threshold: f32,
    /// Labels kept per coarse cell for finer levels (0 = keep all).
    pub early_rejection_top_k: usize,
    /// Sentences a label is put into before encoding; `{}` stands for the label.
    pub prompt_templates: Vec<String>,
    pub default_labels: Vec<String>,
}

impl Default for SegmentationDefaults {
    fn default() -> Self {
        SegmentationDefaults {
            logit_scale: 50.0,
            unknown_threshold: 0.0,
            early_rejection_top_k: 8,
            prompt_templates: vec!["{}".into()],
            default_labels: Vec::new(),
        }
    }
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::ModelFile {
            path: path.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        let manifest: Manifest = serde_yaml_ng::from_str(&text).map_err(|e| {
            let field = e.to_string().split(':').next().unwrap_or_default().to_string();
            EngineError::Manifest { path: path.clone(), field, reason: e.to_string() }
        })?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_yaml_ng::to_string(self).map_err(|e| EngineError::Manifest {
            path: path.clone(),
            field: "*".into(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|e| EngineError::io(format!("writing {}", path.display()), e))
    }

    /// Checks values that the YAML types alone cannot.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, reason: String| EngineError::Manifest {
            path: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        if self.format_version != FORMAT_VERSION {
            return Err(bad("format_version", format!("{} is not supported (expected {FORMAT_VERSION})", self.format_version)));
        }
        if self.embedding_dim == 0 {
            return Err(bad("embedding_dim", "must be > 0".into()));
        }
        let input = &self.image_encoder.input;
        if input.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(bad("image_encoder.input.std", format!("{:?} must be finite and non-zero", input.std)));
        }
        if let Some([w, h]) = input.size
            && (w == 0 || h == 0)
        {
            return Err(bad("image_encoder.input.size", format!("[{w}, {h}] must be positive")));
        }
        if input.size_multiple == 0 || input.size_multiple > input.max_side {
            return Err(bad("image_encoder.input.size_multiple", format!("{} must be 1..=max_side", input.size_multiple)));
        }
        if input.max_side < 16 {
            return Err(bad("image_encoder.input.max_side", format!("{} is below 16", input.max_side)));
        }
        let outputs = &self.image_encoder.outputs;
        if outputs.is_empty() {
            return Err(bad("image_encoder.outputs", "at least one pixel-embedding output is needed".into()));
        }
        for (i, out) in outputs.iter().enumerate() {
            if !out.stride.is_power_of_two() {
                return Err(bad(&format!("image_encoder.outputs[{i}].stride"), format!("{} is not a power of two", out.stride)));
            }
            if !out.fusion_weight.is_finite() || out.fusion_weight < 0.0 {
                return Err(bad(&format!("image_encoder.outputs[{i}].fusion_weight"), format!("{} must be >= 0", out.fusion_weight)));
            }
            if outputs[..i].iter().any(|o| o.stride == out.stride) {
                return Err(bad(&format!("image_encoder.outputs[{i}].stride"), format!("stride {} appears twice", out.stride)));
            }
        }
        if self.text_encoder.max_tokens < 4 {
            return Err(bad("text_encoder.max_tokens", format!("{} is below 4", self.text_encoder.max_tokens)));
        }
        let seg = &self.segmentation;
        if !seg.logit_scale.is_finite() || seg.logit_scale <= 0.0 {
            return Err(bad("segmentation.logit_scale", format!("{} must be > 0", seg.logit_scale)));
        }
        if !(0.0..=1.0).contains(&seg.unknown_threshold) {
            return Err(bad("segmentation.unknown_threshold", format!("{} is outside 0..=1", seg.unknown_threshold)));
        }
        if seg.prompt_templates.is_empty() {
            return Err(bad("segmentation.prompt_templates", "needs at least one template (\"{}\" is the bare label)".into()));
        }
        if let Some(t) = seg.prompt_templates.iter().find(|t| t.matches("{}").count() != 1) {
            return Err(bad("segmentation.prompt_templates", format!("{t:?} must contain exactly one {{}}")));
        }
        Ok(())
    }

    /// Outputs sorted coarse to fine.
    pub fn levels_coarse_to_fine(&self) -> Vec<EmbeddingOutput> {
        let mut levels = self.image_encoder.outputs.clone();
        levels.sort_by_key(|l| std::cmp::Reverse(l.stride));
        levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
    }

    fn valid_yaml() -> String {
        serde_yaml_ng::to_string(&crate::zoo::build::default_manifest()).unwrap()
    }

    #[test]
    fn default_manifest_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &valid_yaml());
        assert_eq!(Manifest::read(dir.path()).unwrap(), crate::zoo::build::default_manifest());
    }

    #[test]
    fn missing_manifest_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.yaml") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn yaml_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &valid_yaml().replace("embedding_dim: 384", "embedding_dim: lots"));
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.yaml") && e.contains("embedding_dim"), "{e}");
        write(dir.path(), &valid_yaml().replace("  tokenizer: tokenizer.json\n", ""));
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("text_encoder") && e.contains("tokenizer"), "{e}");
        write(dir.path(), &valid_yaml().replace("layout: NCHW", "layout: CHWN"));
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("layout") && e.contains("CHWN"), "{e}");
    }

    #[test]
    fn values_are_checked_and_named() {
        let cases = [
            ("format_version: 1", "format_version: 7", "format_version"),
            ("embedding_dim: 384", "embedding_dim: 0", "embedding_dim"),
            ("stride: 16", "stride: 12", "image_encoder.outputs[1].stride"),
            ("stride: 16", "stride: 32", "appears twice"),
            ("logit_scale: 2.0", "logit_scale: -1.0", "segmentation.logit_scale"),
            ("unknown_threshold: 0.0", "unknown_threshold: 1.5", "segmentation.unknown_threshold"),
            ("size_multiple: 32", "size_multiple: 0", "image_encoder.input.size_multiple"),
            ("- a photo of a {}.", "- a photo of a thing.", "prompt_templates"),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (from, to, needle) in cases {
            let yaml = valid_yaml();
            assert!(yaml.contains(from), "test setup: {from:?} not in the default manifest");
            write(dir.path(), &yaml.replacen(from, to, 1));
            let e = Manifest::read(dir.path()).unwrap_err().to_string();
            assert!(e.contains(needle), "{to:?}: {e}");
        }
    }
}
