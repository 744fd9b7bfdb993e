//! INT8 calibration from real frames: the image encoder runs on ONNX Runtime's CPU provider with
//! every intermediate tensor exposed, and each tensor's largest magnitude over the frames
//! becomes its dynamic range, written as a TensorRT calibration cache (max calibration). The
//! TensorRT provider reads that file (`trt_int8_use_native_calibration_table`) and sets each
//! tensor's range from it, so no calibrator has to run on the robot.
use std::collections::BTreeMap;
use std::path::Path;

use onnx_rs::ast::{DataType, OpType, TensorTypeProto, TypeProto, TypeValue, ValueInfo};
use ort::value::TensorRef;

use crate::error::{EngineError, Result};
use crate::frame::Frame;
use crate::manifest::Layout;
use crate::pipeline::Model;
use crate::preprocess::preprocess;
use crate::runtime;

/// Largest magnitude seen per tensor (graph input, every float node output).
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationTable {
    pub ranges: BTreeMap<String, f32>,
}

/// Operators whose outputs are float when their inputs are: the ones calibrated. Anything else
/// (shape arithmetic, indices) is left to TensorRT.
fn float_op(op: &OpType<'_>) -> bool {
    matches!(
        op.as_str(),
        "Conv" | "Clip" | "Relu" | "Add" | "Sub" | "Mul" | "Div" | "Sigmoid" | "HardSigmoid" | "HardSwish" | "Softmax"
            | "AveragePool" | "MaxPool" | "GlobalAveragePool" | "Identity" | "Concat" | "Resize" | "BatchNormalization"
            | "Tanh" | "Transpose" | "Gemm" | "MatMul" | "LpNormalization" | "Exp"
    )
}

const HEADER_SUFFIX: &str = "MinMaxCalibration";

impl CalibrationTable {
    /// Runs the model's image encoder over `frames` (preprocessed as the pipeline does);
    /// `on_frame` hears how many are done.
    pub fn measure(model: &Model, frames: &[Frame], threads: usize, on_frame: &mut dyn FnMut(usize)) -> Result<Self> {
        if frames.is_empty() {
            return Err(EngineError::TensorRt("INT8 calibration needs at least one frame".into()));
        }
        let path = model.dir.join(&model.manifest.image_encoder.file);
        let bytes = std::fs::read(&path).map_err(|e| EngineError::io(format!("reading {}", path.display()), e))?;
        let exposed = expose_intermediates(&path, &bytes)?;
        let mut session = runtime::open_session_from_memory(&path, &exposed, threads)?;
        let spec = &model.manifest.image_encoder.input;
        let mut ranges: BTreeMap<String, f32> = BTreeMap::new();
        let mut keep = |name: &str, values: &[f32]| {
            let amax = values.iter().fold(0.0f32, |m, v| if v.is_finite() { m.max(v.abs()) } else { m });
            let entry = ranges.entry(name.to_string()).or_insert(0.0);
            *entry = entry.max(amax);
        };
        for (done, frame) in frames.iter().enumerate() {
            on_frame(done);
            let input = preprocess(frame, spec);
            keep(&spec.name, &input.data);
            let shape = match input.layout {
                Layout::Nchw => [1i64, 3, input.height as i64, input.width as i64],
                Layout::Nhwc => [1i64, input.height as i64, input.width as i64, 3],
            };
            let tensor = TensorRef::from_array_view((shape, input.data.as_slice()))?;
            let outputs = session.run(ort::inputs![spec.name.as_str() => tensor])?;
            for (name, value) in outputs.iter() {
                if let Ok((_, data)) = value.try_extract_tensor::<f32>() {
                    keep(name, data);
                }
            }
        }
        on_frame(frames.len());
        Ok(CalibrationTable { ranges })
    }

    /// TensorRT's calibration cache text: a header line, then `tensor: scale` with the scale
    /// (range / 127) as the hex of its float bits. Tensors whose range is 0 get the smallest
    /// positive scale (a zero scale would be rejected).
    /// `tensorrt_version` is `getInferLibVersion()`'s number where TensorRT is present (0 in the
    /// header otherwise; the TensorRT provider reads the ranges, not the header).
    pub fn to_cache(&self, tensorrt_version: Option<u32>) -> String {
        let mut out = format!("TRT-{}-{HEADER_SUFFIX}\n", tensorrt_version.unwrap_or(0));
        for (name, amax) in &self.ranges {
            let scale = (amax / 127.0).max(f32::MIN_POSITIVE);
            out.push_str(&format!("{name}: {:08x}\n", scale.to_bits()));
        }
        out
    }

    /// Reads a cache written by [`Self::to_cache`] (or by TensorRT); errors name the line.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |line: usize, why: &str| EngineError::TensorRt(format!("calibration cache line {line}: {why}"));
        let mut lines = text.lines();
        match lines.next() {
            Some(h) if h.starts_with("TRT-") => {}
            other => return Err(bad(1, &format!("expected a `TRT-<version>-<calibrator>` header, found {other:?}"))),
        }
        let mut ranges = BTreeMap::new();
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let (name, hex) = line.rsplit_once(':').ok_or_else(|| bad(i + 2, "expected `tensor: hexscale`"))?;
            let bits = u32::from_str_radix(hex.trim(), 16).map_err(|e| bad(i + 2, &format!("scale {:?}: {e}", hex.trim())))?;
            ranges.insert(name.trim().to_string(), f32::from_bits(bits) * 127.0);
        }
        Ok(CalibrationTable { ranges })
    }

    /// Writes the cache to `path` through a temporary file and a rename, making its folder. An
    /// existing file that is not a calibration cache is never replaced.
    pub fn save(&self, path: &Path, tensorrt_version: Option<u32>) -> Result<()> {
        if path.exists() {
            let existing = std::fs::read(path).map_err(|e| EngineError::io(format!("reading {}", path.display()), e))?;
            if !existing.starts_with(b"TRT-") {
                return Err(EngineError::TensorRt(format!("{} exists and is not a calibration cache; not replacing it", path.display())));
            }
        }
        crate::labels::write_atomic(path, self.to_cache(tensorrt_version).as_bytes())
            .map_err(|e| EngineError::io(format!("writing {}", path.display()), e))
    }
}

/// The model with every float node output also declared a graph output.
fn expose_intermediates(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut model = onnx_rs::parse(bytes).map_err(|e| EngineError::ModelFile { path: path.to_path_buf(), reason: format!("parsing: {e}") })?;
    let graph = model.graph.as_mut().ok_or_else(|| EngineError::ModelFile { path: path.to_path_buf(), reason: "no graph".into() })?;
    let declared: Vec<&str> = graph.output.iter().map(|o| o.name).collect();
    let float = TypeProto { value: Some(TypeValue::Tensor(TensorTypeProto { elem_type: DataType::Float, shape: None })), denotation: "" };
    let extra: Vec<ValueInfo<'_>> = graph
        .node
        .iter()
        .filter(|n| float_op(&n.op_type))
        .flat_map(|n| n.output.iter().copied())
        .filter(|name| !name.is_empty() && !declared.contains(name))
        .map(|name| ValueInfo { name, r#type: Some(float.clone()), ..Default::default() })
        .collect();
    graph.output.extend(extra);
    Ok(onnx_rs::encode(&model))
}

/// Frames for calibration: every PNG/JPEG in `dir` (sorted, at most `max`), decoded to RGB.
/// An unreadable image is an error naming it.
pub fn frames_from_dir(dir: &Path, max: usize) -> Result<Vec<Frame>> {
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(format!("calibration frames {}", dir.display()), e))?;
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|x| x.to_str()).is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")))
        .collect();
    paths.sort();
    paths.truncate(max);
    if paths.is_empty() {
        return Err(EngineError::TensorRt(format!("calibration frames: no PNG or JPEG images in {}", dir.display())));
    }
    paths
        .iter()
        .map(|p| {
            let img = image::open(p).map_err(|e| EngineError::TensorRt(format!("calibration frame {}: {e}", p.display())))?;
            Ok(Frame::from_rgb_image(&img.to_rgb8()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_text_round_trips_and_bad_lines_are_named() {
        let table = CalibrationTable { ranges: BTreeMap::from([("image".to_string(), 2.64), ("conv_1".to_string(), 6.0), ("dead".to_string(), 0.0)]) };
        let text = table.to_cache(Some(100_300));
        assert!(text.starts_with("TRT-100300-MinMaxCalibration\n"), "{text}");
        // 6 / 127 as float bits.
        assert!(text.contains(&format!("conv_1: {:08x}\n", (6.0f32 / 127.0).to_bits())), "{text}");
        let back = CalibrationTable::parse(&text).unwrap();
        for (name, amax) in &table.ranges {
            assert!((back.ranges[name] - amax).abs() <= 1e-6 * amax.max(1.0), "{name}: {} vs {amax}", back.ranges[name]);
        }
        assert!(back.ranges["dead"] > 0.0, "a zero range is written as the smallest positive scale");
        let e = CalibrationTable::parse("TRT-0-MinMaxCalibration\nconv: zz\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("\"zz\""), "{e}");
        assert!(CalibrationTable::parse("conv: 3f800000\n").unwrap_err().to_string().contains("header"));
    }
}
