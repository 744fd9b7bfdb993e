//! The node's parameters: one table of names, descriptions, constraints and defaults, the
//! validation every set goes through, and the typed settings the rest of the node reads.
use std::collections::BTreeMap;

use engine::Manifest;
use ros2_client::ParameterValue;
use ros2_client::parameters::raw;

/// Longest accepted label text; longer ones are almost certainly a mistake (a pasted file).
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest accepted `label: sentence` description or prompt template.
pub const MAX_SENTENCE_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    None,
    Int(i64, i64),
    Float(f64, f64),
}

pub struct ParamSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// Plain-text constraints beyond the range (shown by `ros2 param describe`).
    pub constraints: &'static str,
    pub range: Range,
    /// Fixed after start: set with `-p` or a params file.
    pub read_only: bool,
    /// Allowed values of a string parameter.
    pub choices: &'static [&'static str],
}

const fn spec(name: &'static str, description: &'static str) -> ParamSpec {
    ParamSpec { name, description, constraints: "", range: Range::None, read_only: false, choices: &[] }
}

pub const PUBLISH_TOGGLES: [&str; 7] = [
    "publish_mask",
    "publish_mask_color",
    "publish_overlay",
    "publish_confidence",
    "publish_depth",
    "publish_points",
    "publish_label_info",
];

pub const DEPTH_MODES: &[&str] = &["none", "rgbd", "ground", "stereo", "model"];
pub const BACKENDS: &[&str] = engine::BackendKind::AVAILABLE;
pub const QOS_PROFILES: &[&str] = &["sensor_data", "reliable"];
pub const DEPTH_REGISTRATIONS: &[&str] = &["none", "extrinsics", "tf"];
pub const IMAGE_TRANSPORTS: &[&str] = &["raw", "compressed"];
pub const DEPTH_TRANSPORTS: &[&str] = &["raw", "compressedDepth"];

/// Every parameter the node declares, in the order `--help` and `ros2 param list` show them.
pub static SPECS: &[ParamSpec] = &[
    ParamSpec {
        constraints: "1 to 10000 distinct, non-blank labels of at most 256 bytes",
        ..spec("labels", "Free-text labels to segment; mask value i is labels[i]. Live from the next frame.")
    },
    ParamSpec {
        constraints: "'label: sentence' entries, label and sentence non-empty; a description of a label not in `labels` is \
                      kept unused (and logged) until that label is added",
        ..spec("label_descriptions", "Sentences describing labels, averaged into their text embeddings.")
    },
    ParamSpec {
        constraints: "each contains '{}' exactly once; at most 1024 bytes",
        ..spec("prompt_templates", "Sentence templates the label text is put into ('{}' is the label).")
    },
    ParamSpec {
        range: Range::Float(0.0, 1.0),
        ..spec("unknown_threshold", "Pixels whose top label probability is below this are unknown (255 / 65535).")
    },
    ParamSpec {
        range: Range::Int(0, 64),
        ..spec("early_rejection_top_k", "Labels kept per coarse cell for the fine level; 0 scores every label everywhere.")
    },
    ParamSpec { range: Range::Float(0.0, 1.0), ..spec("overlay_alpha", "Weight of the label colour in `overlay`.") },
    ParamSpec {
        choices: BACKENDS,
        constraints: "auto (CUDA where a device answers, else CPU), cpu, cuda; tensorrt: the image encoder on TensorRT, falling back to \
                      ONNX Runtime's CUDA provider, then the CPU (reason on /diagnostics); a change reloads the model",
        ..spec("backend", "Where the cost map, fusion, post-processing and stereo matching run, and with tensorrt or burn the image encoder too.")
    },
    ParamSpec {
        choices: &["fp32", "fp16", "int8"],
        constraints: "fp32, fp16, or int8 (needs `tensorrt_int8_calibration_table`); a change rebuilds or reloads the engine",
        ..spec("tensorrt_precision", "backend tensorrt: precision the engine is built with.")
    },
    ParamSpec {
        constraints: "empty, or a calibration cache (`ovseg engine calibrate`, trtexec, polygraphy); needed for int8",
        ..spec("tensorrt_int8_calibration_table", "backend tensorrt: INT8 calibration table.")
    },
    ParamSpec {
        range: Range::Int(64, 65536),
        ..spec("tensorrt_workspace_mb", "backend tensorrt: builder workspace limit (MiB).")
    },
    ParamSpec {
        range: Range::Int(-1, 7),
        ..spec("tensorrt_dla_core", "backend tensorrt: Jetson DLA core to run on; -1 = the GPU.")
    },
    ParamSpec {
        constraints: "engines are cached per model, TensorRT version, GPU, precision and build settings",
        ..spec("force_engine_rebuild", "backend tensorrt: rebuild the engine even when an intact one is cached (on the next load).")
    },
    ParamSpec {
        constraints: "a directory with manifest.yaml; a change reloads the model and re-encodes the labels",
        ..spec("model_dir", "Model directory; empty = the built-in default model in the user cache.")
    },
    ParamSpec {
        range: Range::Int(0, engine::runtime::MAX_THREADS as i64),
        read_only: true,
        ..spec("threads", "CPU threads for inference and pixel loops; 0 = all cores.")
    },
    ParamSpec {
        choices: DEPTH_MODES,
        constraints: "none: no depth outputs; rgbd: `depth_registered` (16UC1 mm or 32FC1 m, registered to `image`); \
                      ground: one camera over flat ground (`ground_labels`, `camera_height`, `camera_pitch`, `camera_roll`); \
                      stereo: semi-global matching of `image` against `right/image` (both rectified; baseline from `right/camera_info` P); \
                      model: the model's depth head (models trained with depth by ovseg-train)",
        ..spec("depth_mode", "Where `depth` and `points` come from.")
    },
    ParamSpec {
        constraints: "true: rays from camera_info P (or K when P is unset); false: from K and the distortion model `d` \
                      (plumb_bob, rational_polynomial, equidistant)",
        ..spec("image_rectified", "Whether `image` is rectified (image_rect) or raw from the lens (image_raw); sets the rays of depth, points and registration.")
    },
    ParamSpec {
        choices: DEPTH_REGISTRATIONS,
        constraints: "none: `depth_registered` is already aligned with `image`; extrinsics: `depth/image` with `depth/camera_info` \
                      is redrawn in the colour camera with `depth_extrinsics` (or `depth_extrinsics_file`); tf: the same with the \
                      transform between the two camera_info frames from /tf_static and /tf",
        ..spec("depth_registration", "depth_mode rgbd: whether the node registers the depth camera's image to `image` itself.")
    },
    ParamSpec {
        constraints: "6 finite values: x y z (m) roll pitch yaw (rad, fixed axes as in URDF); pose of the depth camera's optical frame in the colour camera's",
        ..spec("depth_extrinsics", "depth_registration extrinsics: depth camera -> colour camera transform.")
    },
    ParamSpec {
        constraints: "empty, or a YAML file with translation + rotation_rpy | rotation_quaternion, or a 4x4 matrix; read when set",
        ..spec("depth_extrinsics_file", "depth_registration extrinsics: file with the transform; overrides `depth_extrinsics` when set.")
    },
    ParamSpec {
        ..spec("ground_fit", "depth_mode rgbd, stereo or model: fit the ground plane to the depth of `ground_labels` pixels (RANSAC) and fill their holes from it.")
    },
    ParamSpec {
        range: Range::Float(0.001, 1.0),
        ..spec("ground_fit_tolerance", "ground_fit: largest distance (m) of a point from the plane for it to count as ground.")
    },
    ParamSpec {
        constraints: "label texts as in `labels`; other labels (but `depth_invalid_labels`) are obstacles",
        ..spec("ground_labels", "Labels that are flat ground: depth_mode ground intersects their rays with it; ground_fit fits it to them.")
    },
    ParamSpec {
        range: Range::Int(8, 256),
        constraints: "a multiple of 8",
        ..spec("stereo_max_disp", "depth_mode stereo: disparities searched (0..N-1 pixels); sets the nearest depth, f * baseline / N.")
    },
    ParamSpec {
        ..spec("stereo_label_penalties", "depth_mode stereo: smoothness penalties lower inside one label and higher across label borders.")
    },
    ParamSpec {
        range: Range::Int(3, 8),
        constraints: "3, 4, 5 or 8",
        ..spec(
            "stereo_paths",
            "depth_mode stereo: aggregation directions. 8 the most accurate; 4 faster; 3 and 5 (none from below) in one pass with a few rows of memory, the least work per pixel.",
        )
    },
    ParamSpec {
        constraints: "empty, or 6 finite values: x y z (m) roll pitch yaw (rad, URDF convention) of the camera's optical frame in a frame whose \
                      z = 0 plane is the ground (base_footprint); overrides camera_height/pitch/roll",
        ..spec("camera_pose", "depth_mode ground: the camera's pose over the ground, as a URDF or tf gives it.")
    },
    ParamSpec {
        constraints: "empty, or a YAML file (translation + rotation_rpy | rotation_quaternion, or a 4x4 matrix); overrides `camera_pose`",
        ..spec("camera_pose_file", "depth_mode ground: file with the camera's pose over the ground.")
    },
    ParamSpec {
        constraints: "empty, or a frame in /tf_static or /tf whose z = 0 plane is the ground (e.g. base_footprint); the camera's \
                      frame is camera_info's frame_id; overrides camera_pose and camera_height/pitch/roll",
        ..spec("ground_frame", "depth_mode ground: take the camera's pose over the ground from tf, in this frame.")
    },
    ParamSpec {
        range: Range::Float(0.0, 10.0),
        constraints: "seconds; lookups are at the frame's stamp, interpolated between /tf samples",
        ..spec("tf_tolerance", "How far past the newest (or before the oldest) /tf sample a frame's stamp may lie and still take it.")
    },
    ParamSpec {
        range: Range::Float(0.01, 100.0),
        ..spec("camera_height", "depth_mode ground: height (m) of the camera's optical centre above the ground.")
    },
    ParamSpec {
        range: Range::Float(-std::f64::consts::FRAC_PI_2, std::f64::consts::FRAC_PI_2),
        ..spec("camera_pitch", "depth_mode ground: pitch (rad) below the horizontal; 0 = optical axis level.")
    },
    ParamSpec {
        range: Range::Float(-std::f64::consts::FRAC_PI_2, std::f64::consts::FRAC_PI_2),
        ..spec("camera_roll", "depth_mode ground: roll (rad) about the optical axis; positive = image right side down.")
    },
    ParamSpec {
        constraints: "label texts as in `labels`; unknown pixels never get depth",
        ..spec("depth_invalid_labels", "Labels whose pixels get no depth (NaN), e.g. sky: never obstacles.")
    },
    ParamSpec {
        range: Range::Int(0, 5),
        ..spec("depth_filter_radius", "Half-size of the median filter applied to depth within each label; 0 = off.")
    },
    ParamSpec {
        range: Range::Int(0, 10),
        ..spec("depth_fill_radius", "Half-size of the window depth holes are filled from, within their label; 0 = off.")
    },
    ParamSpec {
        range: Range::Float(0.0, 1.0),
        ..spec("depth_sync_tolerance", "Largest stamp difference (s) between an image and the depth image used with it.")
    },
    ParamSpec {
        range: Range::Int(1, 64),
        ..spec("points_stride", "Publish one point per stride x stride pixels in `points`.")
    },
    ParamSpec {
        choices: QOS_PROFILES,
        read_only: true,
        constraints: "sensor_data: best effort, keep last queue_depth (REP 2003); reliable: reliable, keep last queue_depth",
        ..spec("image_qos", "QoS of the image, camera_info, depth and right camera subscriptions.")
    },
    ParamSpec {
        choices: IMAGE_TRANSPORTS,
        read_only: true,
        constraints: "raw: sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage (JPEG or PNG) on `image`/compressed, \
                      as image_transport's compressed publisher sends it",
        ..spec("image_transport", "How colour frames arrive: raw or compressed.")
    },
    ParamSpec {
        choices: DEPTH_TRANSPORTS,
        read_only: true,
        constraints: "raw: sensor_msgs/Image on `depth_registered` and `depth/image`; compressedDepth: sensor_msgs/CompressedImage on \
                      `depth_registered`/compressedDepth and `depth/image`/compressedDepth (16UC1 or 32FC1, png), as \
                      compressed_depth_image_transport sends it",
        ..spec("depth_transport", "How depth images arrive: raw or compressedDepth.")
    },
    ParamSpec {
        range: Range::Int(1, 100),
        read_only: true,
        ..spec("queue_depth", "History depth of the subscriptions and publishers (keep last N).")
    },
    spec("publish_mask", "Publish `mask` (mono8, or mono16 past 255 labels) while it has subscribers."),
    spec("publish_mask_color", "Publish `mask_color` (rgb8) while it has subscribers."),
    spec("publish_overlay", "Publish `overlay` (rgb8) while it has subscribers."),
    spec("publish_confidence", "Publish `confidence` (32FC1, top label probability) while it has subscribers."),
    spec("publish_depth", "Publish `depth` (32FC1 metres, aligned with `mask`) while it has subscribers."),
    spec("publish_points", "Publish `points` (PointCloud2 x y z label confidence) while it has subscribers."),
    spec("publish_label_info", "Publish `label_info` (vision_msgs/LabelInfo, transient local) on every label change."),
    ParamSpec {
        range: Range::Float(0.1, 60.0),
        ..spec("diagnostics_period", "Seconds between /diagnostics messages.")
    },
    ParamSpec { read_only: true, ..spec("use_sim_time", "Stamp diagnostics and label_info with /clock time instead of the system clock.") },
];

pub fn find(name: &str) -> Option<&'static ParamSpec> {
    SPECS.iter().find(|s| s.name == name)
}

/// Default values; those the model decides come from its manifest.
pub fn defaults(manifest: &Manifest) -> BTreeMap<String, ParameterValue> {
    use ParameterValue::*;
    let seg = &manifest.segmentation;
    let mut values = BTreeMap::new();
    let mut put = |name: &str, value: ParameterValue| {
        values.insert(name.to_string(), value);
    };
    put("labels", StringArray(seg.default_labels.clone()));
    put("label_descriptions", StringArray(vec![]));
    put("prompt_templates", StringArray(seg.prompt_templates.clone()));
    put("unknown_threshold", Double(seg.unknown_threshold as f64));
    put("early_rejection_top_k", Integer(seg.early_rejection_top_k as i64));
    put("overlay_alpha", Double(0.5));
    put("backend", String("auto".into()));
    put("model_dir", String("".into()));
    put("tensorrt_precision", String("fp16".into()));
    put("tensorrt_int8_calibration_table", String("".into()));
    put("tensorrt_workspace_mb", Integer(1024));
    put("tensorrt_dla_core", Integer(-1));
    put("force_engine_rebuild", Boolean(false));
    put("threads", Integer(0));
    put("depth_mode", String("none".into()));
    put("image_rectified", Boolean(true));
    put("depth_registration", String("none".into()));
    put("depth_extrinsics", DoubleArray(vec![0.0; 6]));
    put("depth_extrinsics_file", String("".into()));
    put("ground_fit", Boolean(false));
    put("ground_fit_tolerance", Double(0.05));
    put("depth_invalid_labels", StringArray(engine::depth::DEFAULT_NO_DEPTH_LABELS.iter().map(|l| l.to_string()).collect()));
    let ground = ["ground", "grass", "road", "floor", "sidewalk", "earth", "field", "path", "dirt track", "sand", "crop row"];
    put("ground_labels", StringArray(ground.iter().map(|s| s.to_string()).collect()));
    put("stereo_max_disp", Integer(64));
    put("stereo_label_penalties", Boolean(true));
    put("stereo_paths", Integer(8));
    put("camera_pose", DoubleArray(vec![]));
    put("camera_pose_file", String("".into()));
    put("ground_frame", String("".into()));
    put("tf_tolerance", Double(0.1));
    put("camera_height", Double(1.0));
    put("camera_pitch", Double(0.0));
    put("camera_roll", Double(0.0));
    put("depth_filter_radius", Integer(1));
    put("depth_fill_radius", Integer(2));
    put("depth_sync_tolerance", Double(0.02));
    put("points_stride", Integer(4));
    put("image_qos", String("sensor_data".into()));
    put("image_transport", String("raw".into()));
    put("depth_transport", String("raw".into()));
    put("queue_depth", Integer(2));
    for toggle in PUBLISH_TOGGLES {
        put(toggle, Boolean(true));
    }
    put("diagnostics_period", Double(1.0));
    put("use_sim_time", Boolean(false));
    values
}

/// Checks one value against its parameter's type, range and rules; the error says why.
/// `current` gives the type the parameter has (types never change).
pub fn check(name: &str, value: &ParameterValue, current: &ParameterValue) -> Result<(), String> {
    let spec = find(name).ok_or_else(|| format!("no parameter named '{name}'"))?;
    let value = &coerce(value, current);
    if std::mem::discriminant(value) != std::mem::discriminant(current) {
        return Err(format!(
            "'{name}' is {}, got {}",
            type_name(current.to_parameter_type() as u8),
            type_name(value.to_parameter_type() as u8)
        ));
    }
    match (spec.range, value) {
        (Range::Int(lo, hi), ParameterValue::Integer(v)) if !(lo..=hi).contains(v) => {
            return Err(format!("'{name}' must be in {lo}..={hi}, got {v}"));
        }
        (Range::Float(lo, hi), ParameterValue::Double(v)) if !(lo..=hi).contains(v) => {
            return Err(format!("'{name}' must be in {lo}..={hi}, got {v}"));
        }
        _ => {}
    }
    if let ParameterValue::String(s) = value
        && !spec.choices.is_empty()
        && !spec.choices.contains(&s.as_str())
    {
        return Err(format!("'{name}' must be one of {}, got '{s}'", spec.choices.join(", ")));
    }
    match (name, value) {
        ("labels", ParameterValue::StringArray(labels)) => check_labels(labels),
        ("stereo_max_disp", ParameterValue::Integer(n)) if n % 8 != 0 => Err(format!("'stereo_max_disp' must be a multiple of 8, got {n}")),
        ("stereo_paths", ParameterValue::Integer(n)) if stereo_paths(*n).is_none() => Err(format!("'stereo_paths' must be 3, 4, 5 or 8, got {n}")),
        ("ground_frame", ParameterValue::String(frame)) if frame.trim().contains(char::is_whitespace) => {
            Err(format!("'ground_frame' is a tf frame name, which has no blanks; got '{frame}'"))
        }
        ("ground_frame", ParameterValue::String(frame)) if !frame.trim().is_empty() && super::tf::frame_name(frame).is_empty() => {
            Err(format!("'ground_frame' names no frame: '{frame}' (\"\" turns it off)"))
        }
        ("depth_extrinsics", ParameterValue::DoubleArray(v)) => xyz_rpy(name, v).map(|_| ()),
        ("camera_pose", ParameterValue::DoubleArray(v)) if !v.is_empty() => xyz_rpy(name, v).map(|_| ()),
        ("tensorrt_int8_calibration_table", ParameterValue::String(path)) if !path.is_empty() && !std::path::Path::new(path).is_file() => {
            Err(format!("'tensorrt_int8_calibration_table': {path} is not a file"))
        }
        ("depth_extrinsics_file" | "camera_pose_file", ParameterValue::String(path)) if !path.is_empty() => {
            calibration::Extrinsics::from_yaml_file(std::path::Path::new(path)).map(|_| ()).map_err(|e| format!("'{name}': {e}"))
        }
        ("label_descriptions", ParameterValue::StringArray(lines)) => {
            too_long(name, lines, MAX_SENTENCE_BYTES)?;
            check_descriptions(lines)
        }
        ("prompt_templates", ParameterValue::StringArray(templates)) => {
            if templates.is_empty() {
                return Err("'prompt_templates' is empty; give at least one, e.g. ['{}']".into());
            }
            too_long(name, templates, MAX_SENTENCE_BYTES)?;
            match templates.iter().find(|t| t.matches("{}").count() != 1) {
                Some(bad) => Err(format!("prompt template {bad:?} must contain '{{}}' exactly once")),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// A pose parameter (x y z roll pitch yaw) as a transform; errors name the parameter.
pub fn xyz_rpy(name: &str, v: &[f64]) -> Result<calibration::Extrinsics, String> {
    let [x, y, z, roll, pitch, yaw] = v else {
        return Err(format!("'{name}' needs 6 values (x y z roll pitch yaw), got {}", v.len()));
    };
    calibration::Extrinsics::from_xyz_rpy([*x, *y, *z], [*roll, *pitch, *yaw]).map_err(|e| format!("'{name}': {e}"))
}

/// The path directions for a `stereo_paths` value (checked before it is stored).
fn stereo_paths(n: i64) -> Option<engine::stereo::Paths> {
    usize::try_from(n).ok().and_then(engine::stereo::Paths::from_count)
}

fn check_labels(labels: &[String]) -> Result<(), String> {
    too_long("labels", labels, MAX_LABEL_BYTES)?;
    let specs: Vec<engine::LabelSpec> = labels.iter().map(engine::LabelSpec::new).collect();
    engine::labels::validate(&specs).map_err(|e| e.to_string())
}

/// Each entry is `label: sentence` with both parts non-blank; blank entries and `#` comments
/// are skipped, as in a descriptions file.
fn check_descriptions(lines: &[String]) -> Result<(), String> {
    for (i, line) in lines.iter().enumerate() {
        let entry = line.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let problem = match entry.split_once(':') {
            None => "has no ':'",
            Some((label, _)) if label.trim().is_empty() => "has no label before ':'",
            Some((_, sentence)) if sentence.trim().is_empty() => "has no sentence after ':'",
            Some(_) => continue,
        };
        return Err(format!("'label_descriptions'[{i}] {line:?} {problem}; expected 'label: sentence'"));
    }
    Ok(())
}

fn too_long(name: &str, items: &[String], max: usize) -> Result<(), String> {
    match items.iter().enumerate().find(|(_, s)| s.len() > max) {
        Some((i, s)) => {
            let head: String = s.chars().take(40).collect();
            Err(format!("'{name}'[{i}] is {} bytes (\"{head}...\"); at most {max} are accepted", s.len()))
        }
        None => Ok(()),
    }
}

/// An integer given where a double is expected is taken as that double (`-p x:=1`), integer
/// arrays as double arrays, and an empty array of any type as an empty array of the
/// parameter's type (YAML `[]` has no element type).
pub fn coerce(value: &ParameterValue, current: &ParameterValue) -> ParameterValue {
    match (value, current) {
        (ParameterValue::Integer(i), ParameterValue::Double(_)) => ParameterValue::Double(*i as f64),
        (ParameterValue::IntegerArray(a), ParameterValue::DoubleArray(_)) => ParameterValue::DoubleArray(a.iter().map(|&i| i as f64).collect()),
        (ParameterValue::StringArray(a), ParameterValue::DoubleArray(_)) if a.is_empty() => ParameterValue::DoubleArray(vec![]),
        (ParameterValue::BooleanArray(a), ParameterValue::DoubleArray(_)) if a.is_empty() => ParameterValue::DoubleArray(vec![]),
        (ParameterValue::IntegerArray(a), ParameterValue::StringArray(_)) if a.is_empty() => ParameterValue::StringArray(vec![]),
        (ParameterValue::DoubleArray(a), ParameterValue::StringArray(_)) if a.is_empty() => ParameterValue::StringArray(vec![]),
        (ParameterValue::BooleanArray(a), ParameterValue::StringArray(_)) if a.is_empty() => ParameterValue::StringArray(vec![]),
        _ => value.clone(),
    }
}

pub fn type_name(ptype: u8) -> &'static str {
    match ptype {
        raw::ParameterType::BOOL => "a bool",
        raw::ParameterType::INTEGER => "an integer",
        raw::ParameterType::DOUBLE => "a double",
        raw::ParameterType::STRING => "a string",
        raw::ParameterType::BYTE_ARRAY => "a byte array",
        raw::ParameterType::BOOL_ARRAY => "a bool array",
        raw::ParameterType::INTEGER_ARRAY => "an integer array",
        raw::ParameterType::DOUBLE_ARRAY => "a double array",
        raw::ParameterType::STRING_ARRAY => "a string array",
        _ => "not set",
    }
}

/// The descriptor `ros2 param describe` shows.
pub fn descriptor(spec: &ParamSpec, value: &ParameterValue) -> raw::ParameterDescriptor {
    let (floating_point_range, integer_range) = match spec.range {
        Range::Float(from_value, to_value) => (vec![raw::FloatingPointRange { from_value, to_value, step: 0.0 }], vec![]),
        Range::Int(from_value, to_value) => (vec![], vec![raw::IntegerRange { from_value, to_value, step: 1 }]),
        Range::None => (vec![], vec![]),
    };
    let mut constraints = spec.constraints.to_string();
    if !spec.choices.is_empty() && constraints.is_empty() {
        constraints = format!("one of: {}", spec.choices.join(", "));
    }
    raw::ParameterDescriptor {
        name: spec.name.to_string(),
        r#type: value.to_parameter_type() as u8,
        description: spec.description.to_string(),
        additional_constraints: constraints,
        read_only: spec.read_only,
        dynamic_typing: false,
        floating_point_range,
        integer_range,
    }
}

/// Parameters as typed settings. Built only from values that passed [`check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub labels: Vec<String>,
    pub label_descriptions: Vec<String>,
    pub prompt_templates: Vec<String>,
    pub unknown_threshold: f32,
    pub early_rejection_top_k: usize,
    pub backend: String,
    pub model_dir: String,
    /// backend tensorrt: how the engine is built.
    pub tensorrt: TensorRtSettings,
    pub threads: usize,
    pub image_qos: String,
    /// Whether frames come as sensor_msgs/CompressedImage on `image`/compressed.
    pub compressed_images: bool,
    /// Whether depth images come compressed (`depth_transport` compressedDepth).
    pub compressed_depth: bool,
    pub queue_depth: usize,
    pub output: OutputSettings,
    pub use_sim_time: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorRtSettings {
    pub precision: String,
    pub int8_calibration_table: String,
    pub workspace_mb: u64,
    pub dla_core: Option<u32>,
    pub force_rebuild: bool,
}

/// What the processing thread needs besides the model and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSettings {
    pub overlay_alpha: f32,
    pub depth_mode: DepthMode,
    pub depth_sync_tolerance: f64,
    /// Lower-cased, trimmed label texts that get no depth.
    pub depth_invalid_labels: Vec<String>,
    pub depth_conditioning: engine::depth::DepthConditioning,
    /// Whether `image` is rectified (rays from P) or raw (K and distortion).
    pub image_rectified: bool,
    /// depth_mode rgbd: register `depth/image` with this transform (depth_registration
    /// extrinsics or tf) instead of reading `depth_registered`.
    pub depth_registration: Option<PoseSource>,
    /// Lower-cased, trimmed label texts that are flat ground (depth_mode ground, ground_fit).
    pub ground_labels: Vec<String>,
    /// depth_mode rgbd, stereo or model: RANSAC inlier distance (m) of the ground fit, if on.
    pub ground_fit: Option<f64>,
    /// Camera height (m), pitch and roll (rad) over the ground (depth_mode ground)...
    pub camera_mounting: [f64; 3],
    /// ...unless the camera's pose over the ground is given...
    pub camera_pose: Option<PoseParam>,
    /// ...or to be looked up in tf, in this frame (leading slash and blanks trimmed).
    pub ground_frame: Option<String>,
    /// Seconds a frame's stamp may lie past the newest (or before the oldest) /tf sample.
    pub tf_tolerance: f64,
    /// The `backend` parameter: where stereo matching runs (auto/cuda: CUDA where a device
    /// answers).
    pub backend: String,
    /// depth_mode stereo: disparity levels, label-aware smoothness, path directions.
    pub stereo_max_disp: usize,
    pub stereo_label_penalties: bool,
    pub stereo_paths: engine::stereo::Paths,
    pub points_stride: usize,
    pub diagnostics_period: f64,
    pub publish: BTreeMap<&'static str, bool>,
}

impl OutputSettings {
    pub fn publishes(&self, toggle: &str) -> bool {
        self.publish.get(toggle).copied().unwrap_or(false)
    }
}

/// A transform given by a pair of parameters: `<name>_file` when set, else the `<name>` array.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseParam {
    pub name: &'static str,
    pub xyz_rpy: Vec<f64>,
    pub file: String,
}

impl PoseParam {
    /// The transform; the file is read here (it was checked when set, but may have changed).
    pub fn load(&self) -> Result<calibration::Extrinsics, String> {
        if self.file.is_empty() {
            xyz_rpy(self.name, &self.xyz_rpy)
        } else {
            calibration::Extrinsics::from_yaml_file(std::path::Path::new(&self.file)).map_err(|e| format!("'{}_file': {e}", self.name))
        }
    }
}

/// Where a transform between two sensors comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum PoseSource {
    Given(PoseParam),
    /// From /tf_static and /tf, between the frames the messages name.
    Tf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthMode {
    None,
    Rgbd,
    Ground,
    Stereo,
    Model,
}

impl Settings {
    pub fn from_values(values: &BTreeMap<String, ParameterValue>) -> Settings {
        let strings = |n: &str| match values.get(n) {
            Some(ParameterValue::StringArray(v)) => v.clone(),
            _ => vec![],
        };
        let string = |n: &str| match values.get(n) {
            Some(ParameterValue::String(v)) => v.clone(),
            _ => String::new(),
        };
        let double = |n: &str| match values.get(n) {
            Some(ParameterValue::Double(v)) => *v,
            _ => 0.0,
        };
        let int = |n: &str| match values.get(n) {
            Some(ParameterValue::Integer(v)) => *v,
            _ => 0,
        };
        let boolean = |n: &str| matches!(values.get(n), Some(ParameterValue::Boolean(true)));
        let doubles = |n: &str| match values.get(n) {
            Some(ParameterValue::DoubleArray(v)) => v.clone(),
            _ => vec![],
        };
        Settings {
            labels: strings("labels"),
            label_descriptions: strings("label_descriptions"),
            prompt_templates: strings("prompt_templates"),
            unknown_threshold: double("unknown_threshold") as f32,
            early_rejection_top_k: int("early_rejection_top_k").max(0) as usize,
            backend: string("backend"),
            model_dir: string("model_dir"),
            tensorrt: TensorRtSettings {
                precision: string("tensorrt_precision"),
                int8_calibration_table: string("tensorrt_int8_calibration_table"),
                workspace_mb: int("tensorrt_workspace_mb").max(1) as u64,
                dla_core: u32::try_from(int("tensorrt_dla_core")).ok(),
                force_rebuild: boolean("force_engine_rebuild"),
            },
            threads: int("threads").max(0) as usize,
            image_qos: string("image_qos"),
            compressed_images: string("image_transport") == "compressed",
            compressed_depth: string("depth_transport") == "compressedDepth",
            queue_depth: int("queue_depth").max(1) as usize,
            output: OutputSettings {
                overlay_alpha: double("overlay_alpha") as f32,
                depth_mode: match string("depth_mode").as_str() {
                    "rgbd" => DepthMode::Rgbd,
                    "ground" => DepthMode::Ground,
                    "stereo" => DepthMode::Stereo,
                    "model" => DepthMode::Model,
                    _ => DepthMode::None,
                },
                depth_sync_tolerance: double("depth_sync_tolerance"),
                depth_invalid_labels: strings("depth_invalid_labels").iter().map(|l| l.trim().to_lowercase()).collect(),
                depth_conditioning: engine::depth::DepthConditioning {
                    median_radius: int("depth_filter_radius").max(0) as usize,
                    fill_radius: int("depth_fill_radius").max(0) as usize,
                    ..Default::default()
                },
                image_rectified: boolean("image_rectified"),
                depth_registration: match string("depth_registration").as_str() {
                    "extrinsics" => Some(PoseSource::Given(PoseParam {
                        name: "depth_extrinsics",
                        xyz_rpy: doubles("depth_extrinsics"),
                        file: string("depth_extrinsics_file"),
                    })),
                    "tf" => Some(PoseSource::Tf),
                    _ => None,
                },
                ground_labels: strings("ground_labels").iter().map(|l| l.trim().to_lowercase()).collect(),
                ground_fit: boolean("ground_fit").then(|| double("ground_fit_tolerance")),
                camera_mounting: [double("camera_height"), double("camera_pitch"), double("camera_roll")],
                camera_pose: (!doubles("camera_pose").is_empty() || !string("camera_pose_file").is_empty())
                    .then(|| PoseParam { name: "camera_pose", xyz_rpy: doubles("camera_pose"), file: string("camera_pose_file") }),
                ground_frame: Some(super::tf::frame_name(&string("ground_frame")).to_string()).filter(|f| !f.is_empty()),
                tf_tolerance: double("tf_tolerance"),
                backend: string("backend"),
                stereo_max_disp: int("stereo_max_disp").max(8) as usize,
                stereo_label_penalties: boolean("stereo_label_penalties"),
                stereo_paths: stereo_paths(int("stereo_paths")).unwrap_or(engine::stereo::Paths::Eight),
                points_stride: int("points_stride").max(1) as usize,
                diagnostics_period: double("diagnostics_period"),
                publish: PUBLISH_TOGGLES.iter().map(|t| (*t, boolean(t))).collect(),
            },
            use_sim_time: boolean("use_sim_time"),
        }
    }
}

/// One line per parameter for `--help`.
pub fn help_text() -> String {
    let mut out = String::from("ROS parameters (set with --ros-args -p name:=value or --params-file; live unless read-only):\n");
    let width = SPECS.iter().map(|s| s.name.len()).max().unwrap_or(0) + 2;
    for spec in SPECS {
        let mut extra = Vec::new();
        match spec.range {
            Range::Int(lo, hi) => extra.push(format!("{lo}..={hi}")),
            Range::Float(lo, hi) => extra.push(format!("{lo}..={hi}")),
            Range::None => {}
        }
        if !spec.choices.is_empty() {
            extra.push(spec.choices.join("|"));
        }
        if spec.read_only {
            extra.push("read-only".into());
        }
        let extra = if extra.is_empty() { String::new() } else { format!(" [{}]", extra.join(", ")) };
        out.push_str(&format!("  {:<width$}{}{extra}\n", spec.name, spec.description));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ParameterValue::*;

    fn strings(v: &[&str]) -> ParameterValue {
        StringArray(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn poses_are_six_finite_numbers_or_a_readable_file() {
        assert_eq!(coerce(&StringArray(vec![]), &DoubleArray(vec![1.0])), DoubleArray(vec![]));
        assert_eq!(coerce(&IntegerArray(vec![1, 2]), &DoubleArray(vec![])), DoubleArray(vec![1.0, 2.0]));
        check("camera_pose", &DoubleArray(vec![]), &DoubleArray(vec![])).unwrap();
        let e = check("camera_pose", &DoubleArray(vec![0.0; 5]), &DoubleArray(vec![])).unwrap_err();
        assert!(e.contains("'camera_pose' needs 6 values"), "{e}");
        let e = check("depth_extrinsics", &DoubleArray(vec![0.0, 0.0, f64::NAN, 0.0, 0.0, 0.0]), &DoubleArray(vec![0.0; 6])).unwrap_err();
        assert!(e.contains("'depth_extrinsics'") && e.contains("finite"), "{e}");
        let e = check("camera_pose_file", &String("/nonexistent/pose.yaml".into()), &String("".into())).unwrap_err();
        assert!(e.contains("'camera_pose_file'") && e.contains("/nonexistent/pose.yaml"), "{e}");
    }

    #[test]
    fn every_spec_has_a_default_and_every_default_a_spec() {
        let manifest = engine::zoo::build::default_manifest();
        let values = defaults(&manifest);
        for spec in SPECS {
            let v = values.get(spec.name).unwrap_or_else(|| panic!("{} has no default", spec.name));
            check(spec.name, v, v).unwrap_or_else(|e| panic!("default of {} is refused: {e}", spec.name));
        }
        assert_eq!(values.len(), SPECS.len());
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let labels = strings(&["a"]);
        let e = check("labels", &strings(&[]), &labels).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = check("labels", &IntegerArray(vec![1, 2]), &labels).unwrap_err();
        assert!(e.contains("string array") && e.contains("integer array"), "{e}");
        let long = "x".repeat(100_000);
        let e = check("labels", &StringArray(vec!["road".into(), long]), &labels).unwrap_err();
        assert!(e.contains("'labels'[1] is 100000 bytes"), "{e}");
        let e = check("labels", &strings(&["Road", "road "]), &labels).unwrap_err();
        assert!(e.contains("duplicate"), "{e}");
        let e = check("unknown_threshold", &Double(1.5), &Double(0.5)).unwrap_err();
        assert!(e.contains("0..=1") && e.contains("1.5"), "{e}");
        let e = check("early_rejection_top_k", &Integer(-1), &Integer(8)).unwrap_err();
        assert!(e.contains("-1"), "{e}");
        let e = check("stereo_max_disp", &Integer(60), &Integer(64)).unwrap_err();
        assert!(e.contains("multiple of 8") && e.contains("60"), "{e}");
        let e = check("stereo_paths", &Integer(6), &Integer(8)).unwrap_err();
        assert!(e.contains("3, 4, 5 or 8") && e.contains("6"), "{e}");
        assert!(check("stereo_paths", &Integer(3), &Integer(8)).is_ok());
        let e = check("camera_height", &Double(0.0), &Double(1.0)).unwrap_err();
        assert!(e.contains("camera_height") || e.contains("0.01"), "{e}");
        let e = check("depth_mode", &String("lidar".into()), &String("none".into())).unwrap_err();
        assert!(e.contains("ground") && e.contains("'lidar'"), "{e}");
        let e = check("backend", &String("gpu".into()), &String("auto".into())).unwrap_err();
        assert!(e.contains("auto, cpu") && e.contains("'gpu'"), "{e}");
        let e = check("prompt_templates", &strings(&["a photo"]), &strings(&["{}"])).unwrap_err();
        assert!(e.contains("exactly once"), "{e}");
        let e = check("label_descriptions", &strings(&["no colon"]), &strings(&[])).unwrap_err();
        assert_eq!(e, "'label_descriptions'[0] \"no colon\" has no ':'; expected 'label: sentence'");
        let e = check("label_descriptions", &strings(&["weed: a plant", ": empty label"]), &strings(&[])).unwrap_err();
        assert_eq!(e, "'label_descriptions'[1] \": empty label\" has no label before ':'; expected 'label: sentence'");
        let e = check("label_descriptions", &strings(&["person:  "]), &strings(&[])).unwrap_err();
        assert_eq!(e, "'label_descriptions'[0] \"person:  \" has no sentence after ':'; expected 'label: sentence'");
        // Labels and descriptions are set one at a time, so one for a label not (yet) in
        // `labels` is accepted; encoding leaves it unused and logs it.
        let kept = strings(&["ghost: a pale figure", "", "# note", "crop row : plants in a line"]);
        check("label_descriptions", &kept, &strings(&[])).unwrap();
        assert!(check("nonexistent", &Integer(1), &Integer(1)).unwrap_err().contains("no parameter named"));
    }

    #[test]
    fn integers_pass_for_doubles_and_empty_lists_for_string_arrays() {
        check("overlay_alpha", &Integer(1), &Double(0.5)).unwrap();
        assert_eq!(coerce(&Integer(1), &Double(0.5)), Double(1.0));
        check("label_descriptions", &IntegerArray(vec![]), &strings(&[])).unwrap();
    }

    #[test]
    fn settings_read_the_values() {
        let manifest = engine::zoo::build::default_manifest();
        let mut values = defaults(&manifest);
        values.insert("depth_mode".into(), String("rgbd".into()));
        values.insert("publish_overlay".into(), Boolean(false));
        let s = Settings::from_values(&values);
        assert_eq!(s.labels, manifest.segmentation.default_labels);
        assert_eq!(s.output.depth_mode, DepthMode::Rgbd);
        assert!(!s.output.publishes("publish_overlay") && s.output.publishes("publish_mask"));
        assert_eq!(s.queue_depth, 2);
        values.insert("depth_mode".into(), String("ground".into()));
        values.insert("ground_labels".into(), StringArray(vec![" Crop Row ".into()]));
        values.insert("camera_pitch".into(), Double(0.3));
        let s = Settings::from_values(&values);
        assert_eq!(s.output.depth_mode, DepthMode::Ground);
        assert_eq!(s.output.ground_labels, ["crop row"]);
        assert_eq!(s.output.camera_mounting, [1.0, 0.3, 0.0]);
        assert_eq!(s.output.ground_frame, None);
        values.insert("ground_frame".into(), String(" /base_footprint".into()));
        values.insert("depth_registration".into(), String("tf".into()));
        let s = Settings::from_values(&values);
        assert_eq!(s.output.ground_frame.as_deref(), Some("base_footprint"));
        assert_eq!(s.output.depth_registration, Some(PoseSource::Tf));
    }

    #[test]
    fn tf_frames_and_sources_are_checked() {
        check("depth_registration", &String("tf".into()), &String("none".into())).unwrap();
        check("ground_frame", &String("base_footprint".into()), &String("".into())).unwrap();
        let e = check("ground_frame", &String("base footprint".into()), &String("".into())).unwrap_err();
        assert!(e.contains("'ground_frame'") && e.contains("'base footprint'"), "{e}");
        let e = check("ground_frame", &String(" / ".into()), &String("".into())).unwrap_err();
        assert!(e.contains("'ground_frame' names no frame"), "{e}");
        let e = check("depth_registration", &String("tf2".into()), &String("none".into())).unwrap_err();
        assert!(e.contains("none, extrinsics, tf"), "{e}");
    }

    #[test]
    fn descriptors_carry_ranges_and_read_only() {
        let d = descriptor(find("queue_depth").unwrap(), &Integer(2));
        assert!(d.read_only);
        assert_eq!(d.integer_range[0].to_value, 100);
        let d = descriptor(find("backend").unwrap(), &String("auto".into()));
        assert!(d.additional_constraints.contains("auto (CUDA where a device answers, else CPU), cpu"), "{}", d.additional_constraints);
        assert!(help_text().lines().count() > SPECS.len());
    }
}
