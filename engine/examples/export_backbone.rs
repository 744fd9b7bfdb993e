//! Writes EfficientNet-Lite0 as ONNX: all backbone taps plus the per-pixel ImageNet
//! logit map, for checking the conversion (see `engine/src/zoo/check_backbone.py`).
//!
//! cargo run -p ovseg-engine --example export_backbone -- WEIGHTS.pth OUT.onnx [s16|s32]

use std::error::Error;
use std::path::PathBuf;

use engine::zoo::effnet::{self, OutputStride};
use engine::zoo::onnx_graph::{DataType, GraphBuilder};
use engine::zoo::pth;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(pth_path), Some(out_path)) = (args.first(), args.get(1)) else {
        return Err("usage: export_backbone WEIGHTS.pth OUT.onnx [s16|s32]".into());
    };
    let stride = match args.get(2).map(String::as_str) {
        None | Some("s32") => OutputStride::S32,
        Some("s16") => OutputStride::S16,
        Some(other) => return Err(format!("unknown output stride {other:?}").into()),
    };

    let weights = pth::load_state_dict(&PathBuf::from(pth_path))?;
    effnet::check_lite0_weights(&weights)?;

    let mut g = GraphBuilder::new("efficientnet_lite0");
    effnet::declare_image_input(&mut g, "image")?;
    let taps = effnet::emit_backbone(&mut g, &weights, "image", stride)?;
    let logits = effnet::emit_classifier_map(&mut g, &weights, &taps.head.name)?;

    // Stable output names, whatever the internal ones are.
    let outputs = [
        (&taps.stride8.name, taps.stride8.channels, "stride8"),
        (&taps.stride16.name, taps.stride16.channels, "stride16"),
        (
            &taps.last_block.name,
            taps.last_block.channels,
            "last_block",
        ),
        (&taps.head.name, taps.head.channels, "head"),
        (&logits, effnet::NUM_CLASSES, "logits"),
    ];
    for (inner, channels, public) in outputs {
        g.node("Identity", &[inner], &[public], Vec::new())?;
        g.add_output(public, DataType::Float, effnet::feature_dims(channels))?;
    }
    g.write(&PathBuf::from(out_path))?;
    println!(
        "{out_path}: {} nodes, {} initializers, {} parameters, taps: {:?}",
        g.node_count(),
        g.initializer_count(),
        g.parameter_count(),
        [&taps.stride8, &taps.stride16, &taps.last_block, &taps.head]
            .map(|t| (t.channels, t.stride))
    );
    Ok(())
}
