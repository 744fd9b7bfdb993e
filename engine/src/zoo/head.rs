//! The data-free dense head of the default model: ImageNet class probabilities per cell,
//! mapped into the sentence space through the sentence embeddings of the class descriptions.
//!
//! Per level: `p = softmax(classifier(features))` over the 1000 classes, `e = sum_c p_c t_c`
//! with `t_c` the sentence embedding of class c's description. The same `t_c` are written as
//! the model's label-calibration anchors: ImageNet's diffuse predictions on non-ImageNet
//! scenes otherwise let labels that resemble many classes ("dog", "helmet") win everywhere.
use super::effnet::{self, EffNetError, OutputStride};
use super::onnx_graph::{Attr, ConvParams, DataType, GraphBuilder, Padding};
use super::pth::StateDict;

pub const INPUT_NAME: &str = "image";
pub const FINE_OUTPUT: &str = "embed_s16";
pub const COARSE_OUTPUT: &str = "embed_s32";
/// Initializer holding the class-description embeddings as a `dim x 1000` 1x1 conv kernel.
pub const PROJECTION_NAME: &str = "class_text_projection";
/// Cell centres in input pixels (pixel j spans [j, j+1)) for inputs that are multiples of 32:
/// four SAME_UPPER stride-2 stages put cell i at 16 i + 15.5, and the 3x3 stride-2 pooling
/// for the coarse level centres it on every second fine cell (32 i + 31.5).
pub const FINE_CENTER_OFFSET: f32 = 15.5;
pub const COARSE_CENTER_OFFSET: f32 = 31.5;

/// Graph tensors of one embedding level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelTensors {
    /// Backbone head features (1280 channels, ReLU6) at this level's stride.
    pub features: String,
    /// The data-free embedding (not normalised).
    pub base: String,
}

/// The backbone's head features and the data-free embeddings of both levels.
pub struct DataFreeLevels {
    /// Backbone head features at the fine level's stride.
    pub features: String,
    pub coarse_base: String,
    pub fine_base: String,
    /// Every backbone block's output (for graphs that tap one).
    pub blocks: Vec<effnet::Tap>,
}

impl DataFreeLevels {
    /// Both levels with their features, coarse first. Pools the coarse features, so only
    /// graphs that use them call this (an unused node would only bloat the data-free graph).
    pub fn with_features(self, g: &mut GraphBuilder) -> Result<[LevelTensors; 2], EffNetError> {
        let coarse_features = pool_to_coarse(g, &self.features, "coarse_features")?;
        Ok([LevelTensors { features: coarse_features, base: self.coarse_base }, LevelTensors { features: self.features, base: self.fine_base }])
    }
}

/// Emits the image input, the backbone at output stride 16, the classifier map and the
/// data-free embeddings of the two levels. `class_text` is `1000 x dim`, row-major,
/// L2-normalised.
pub fn emit_data_free(g: &mut GraphBuilder, weights: &StateDict, class_text: &[f32], dim: usize) -> Result<DataFreeLevels, EffNetError> {
    if class_text.len() != effnet::NUM_CLASSES * dim {
        return Err(EffNetError::ShapeMismatch {
            name: "class text embeddings".into(),
            expected: vec![effnet::NUM_CLASSES, dim],
            actual: vec![class_text.len() / dim.max(1), dim],
        });
    }
    effnet::check_lite0_weights(weights)?;
    effnet::declare_image_input(g, INPUT_NAME)?;
    let taps = effnet::emit_backbone(g, weights, INPUT_NAME, OutputStride::S16)?;
    let logits = effnet::emit_classifier_map(g, weights, &taps.head.name)?;
    let coarse_logits = pool_to_coarse(g, &logits, "coarse_logits")?;
    // Conv weight [dim, 1000, 1, 1]: output channel d = sum_c p_c * t_c[d].
    let mut projection = vec![0.0f32; dim * effnet::NUM_CLASSES];
    for c in 0..effnet::NUM_CLASSES {
        for d in 0..dim {
            projection[d * effnet::NUM_CLASSES + c] = class_text[c * dim + d];
        }
    }
    let projection = g.initializer_f32(PROJECTION_NAME, &[dim, effnet::NUM_CLASSES, 1, 1], &projection)?;
    let embed = |g: &mut GraphBuilder, source: &str| -> Result<String, EffNetError> {
        let probs = g.op1("Softmax", &[source], vec![Attr::int("axis", 1)], "class_probs")?;
        Ok(g.conv(&probs, &projection, None, &ConvParams { padding: Padding::Valid, ..ConvParams::new(1) }, "embedded")?)
    };
    let coarse_base = embed(g, &coarse_logits)?;
    let fine_base = embed(g, &logits)?;
    Ok(DataFreeLevels { features: taps.head.name, coarse_base, fine_base, blocks: taps.blocks })
}

/// The coarse level: 3x3 stride-2 average (SAME_UPPER, padding not counted).
fn pool_to_coarse(g: &mut GraphBuilder, x: &str, hint: &str) -> Result<String, EffNetError> {
    Ok(g.op1(
        "AveragePool",
        &[x],
        vec![
            Attr::ints("kernel_shape", &[3, 3]),
            Attr::ints("strides", &[2, 2]),
            Attr::string("auto_pad", "SAME_UPPER"),
            Attr::int("count_include_pad", 0),
        ],
        hint,
    )?)
}

/// Declares `tensor` as graph output `name` with `channels` channels.
pub fn emit_output(g: &mut GraphBuilder, tensor: &str, name: &str, channels: usize) -> Result<(), EffNetError> {
    g.node("Identity", &[tensor], &[name], Vec::new())?;
    g.add_output(name, DataType::Float, effnet::feature_dims(channels))?;
    Ok(())
}

/// Builds the whole data-free image encoder: backbone at output stride 16, classifier map, and
/// the two embedding levels.
pub fn build_image_encoder(weights: &StateDict, class_text: &[f32], dim: usize) -> Result<GraphBuilder, EffNetError> {
    let mut g = GraphBuilder::new("ovseg_effnetlite0_datafree");
    let levels = emit_data_free(&mut g, weights, class_text, dim)?;
    emit_output(&mut g, &levels.coarse_base, COARSE_OUTPUT, dim)?;
    emit_output(&mut g, &levels.fine_base, FINE_OUTPUT, dim)?;
    Ok(g)
}
