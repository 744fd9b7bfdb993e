//! The data-free dense head of the default model: ImageNet class probabilities per cell,
//! mapped into the sentence space through the sentence embeddings of the class descriptions.
//!
//! Per level: `p = softmax(classifier(features))` over the 1000 classes, `e = sum_c p_c t_c`
//! with `t_c` the sentence embedding of class c's description. The same `t_c` are written as
//! the model's label-calibration anchors: ImageNet's diffuse predictions on non-ImageNet
//! scenes otherwise let labels that resemble many classes ("dog", "helmet") win everywhere.
use super::effnet::{self, BackboneTaps, EffNetError, OutputStride};
use super::onnx_graph::{Attr, ConvParams, DataType, GraphBuilder, Padding};
use super::pth::StateDict;

pub const INPUT_NAME: &str = "image";
pub const FINE_OUTPUT: &str = "embed_s16";
pub const COARSE_OUTPUT: &str = "embed_s32";
/// Cell centres in input pixels (pixel j spans [j, j+1)) for inputs that are multiples of 32:
/// four SAME_UPPER stride-2 stages put cell i at 16 i + 15.5, and the 3x3 stride-2 pooling
/// for the coarse level centres it on every second fine cell (32 i + 31.5).
pub const FINE_CENTER_OFFSET: f32 = 15.5;
pub const COARSE_CENTER_OFFSET: f32 = 31.5;

/// Builds the whole image encoder: backbone at output stride 16, classifier map, and the
/// two embedding levels. `class_text` is `1000 x dim`, row-major, L2-normalised.
pub fn build_image_encoder(weights: &StateDict, class_text: &[f32], dim: usize) -> Result<GraphBuilder, EffNetError> {
    if class_text.len() != effnet::NUM_CLASSES * dim {
        return Err(EffNetError::ShapeMismatch {
            name: "class text embeddings".into(),
            expected: vec![effnet::NUM_CLASSES, dim],
            actual: vec![class_text.len() / dim.max(1), dim],
        });
    }
    effnet::check_lite0_weights(weights)?;
    let mut g = GraphBuilder::new("ovseg_effnetlite0_datafree");
    effnet::declare_image_input(&mut g, INPUT_NAME)?;
    let taps: BackboneTaps = effnet::emit_backbone(&mut g, weights, INPUT_NAME, OutputStride::S16)?;
    let logits = effnet::emit_classifier_map(&mut g, weights, &taps.head.name)?;
    let coarse_logits = g.op1(
        "AveragePool",
        &[&logits],
        vec![
            Attr::ints("kernel_shape", &[3, 3]),
            Attr::ints("strides", &[2, 2]),
            Attr::string("auto_pad", "SAME_UPPER"),
            Attr::int("count_include_pad", 0),
        ],
        "coarse_logits",
    )?;
    // Conv weight [dim, 1000, 1, 1]: output channel d = sum_c p_c * t_c[d].
    let mut projection = vec![0.0f32; dim * effnet::NUM_CLASSES];
    for c in 0..effnet::NUM_CLASSES {
        for d in 0..dim {
            projection[d * effnet::NUM_CLASSES + c] = class_text[c * dim + d];
        }
    }
    let projection = g.initializer_f32("class_text_projection", &[dim, effnet::NUM_CLASSES, 1, 1], &projection)?;
    for (source, output) in [(coarse_logits, COARSE_OUTPUT), (logits, FINE_OUTPUT)] {
        let probs = g.op1("Softmax", &[&source], vec![Attr::int("axis", 1)], "class_probs")?;
        let embedded = g.conv(&probs, &projection, None, &ConvParams { padding: Padding::Valid, ..ConvParams::new(1) }, "embedded")?;
        g.node("Identity", &[&embedded], &[output], Vec::new())?;
        g.add_output(output, DataType::Float, effnet::feature_dims(dim))?;
    }
    Ok(g)
}
