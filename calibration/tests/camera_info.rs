//! camera_info YAML: reading what ROS tools write, exact and byte-stable writing, and validation
//! messages that name the field.
use calibration::{CalibrationError, Camera, CameraInfoYaml, Distortion};

/// As written by the Python `camera_calibration` tool (YAML 1.1 floats like `0.`, wrapped rows).
const FROM_CAMERA_CALIBRATION: &str = "\
image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [ 580.46715,    0.     ,  315.27153,
            0.     ,  576.62721,  247.47257,
            0.     ,    0.     ,    1.     ]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [0.134462, -0.311908, 0.002304, 0.003083, 0.000000]
rectification_matrix:
  rows: 3
  cols: 3
  data: [ 1.,  0.,  0.,
          0.,  1.,  0.,
          0.,  0.,  1.]
projection_matrix:
  rows: 3
  cols: 4
  data: [ 587.73773,    0.     ,  316.77307,    0.     ,
            0.     ,  585.66626,  248.29638,    0.     ,
            0.     ,    0.     ,    1.     ,    0.     ]
";

/// Old-style file (integers, no distortion_model, no camera_name) as some drivers ship.
const OLD_STYLE: &str = "\
image_width: 800
image_height: 600
camera_matrix:
  rows: 3
  cols: 3
  data: [538.63, 0, 457.698, 0, 539.723, 297.003, 0, 0, 1]
distortion_coefficients:
  rows: 1
  cols: 5
  data: [-0.30678, 0.0825017, 0.0028784, -0.00015829, 0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
projection_matrix:
  rows: 3
  cols: 4
  data: [538.63, 0, 457.698, 0, 0, 539.723, 297.003, 0, 0, 0, 1, 0]
";

fn sample() -> CameraInfoYaml {
    CameraInfoYaml {
        image_width: 1280,
        image_height: 960,
        camera_name: "front/left: \"wide\" \\ été\ttab".to_string(),
        camera_matrix: [0.1 + 0.2, 0.0, 640.123456789012, 0.0, 1e20 / 3.0, 479.5, 0.0, 0.0, 1.0],
        distortion_model: "rational_polynomial".to_string(),
        distortion_coefficients: vec![-0.0, 1e-20, 5e-324, -1.7976931348623157e308 / 1e300, 2.2250738585072014e-308, 1.0 / 3.0, 12345678.9, -7e-5],
        rectification_matrix: [0.9998, -0.0175, 0.0021, 0.0175, 0.9998, 1e-7, -0.0021, -1e-7, 1.0],
        projection_matrix: [700.5, 0.0, 640.0, -42.123, 0.0, 700.5, 480.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    }
}

#[test]
fn reads_camera_calibration_output() {
    let info = CameraInfoYaml::parse(FROM_CAMERA_CALIBRATION).unwrap();
    assert_eq!((info.image_width, info.image_height, info.camera_name.as_str()), (640, 480, "narrow_stereo"));
    assert_eq!(info.camera_matrix, [580.46715, 0.0, 315.27153, 0.0, 576.62721, 247.47257, 0.0, 0.0, 1.0]);
    assert_eq!(info.projection_matrix[0], 587.73773);
    assert_eq!(info.rectification(), nalgebra::Matrix3::identity());
    assert_eq!(info.projection()[(1, 2)], 248.29638);
    let camera = info.camera().unwrap();
    assert_eq!(camera.distortion(), Distortion::PlumbBob { k1: 0.134462, k2: -0.311908, p1: 0.002304, p2: 0.003083, k3: 0.0 });
    assert_eq!((camera.intrinsics().fx, camera.intrinsics().cy), (580.46715, 247.47257));
}

#[test]
fn missing_name_and_model_default_like_camera_calibration_parsers() {
    let info = CameraInfoYaml::parse(OLD_STYLE).unwrap();
    assert_eq!(info.camera_name, "unknown");
    assert_eq!(info.distortion_model, "plumb_bob");
    assert_eq!(info.camera_matrix[2], 457.698);
}

#[test]
fn writes_the_canonical_layout() {
    let camera = Camera::from_camera_info("plumb_bob", &[-0.28, 0.07, 1e-4, -2e-4, 0.0], &[525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0], 640, 480).unwrap();
    let text = CameraInfoYaml::from_camera("narrow_stereo", &camera).to_yaml();
    let expected = "\
image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [525.0, 0.0, 319.5, 0.0, 525.0, 239.5, 0.0, 0.0, 1.0]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [-0.28, 0.07, 0.0001, -0.0002, 0.0]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
projection_matrix:
  rows: 3
  cols: 4
  data: [525.0, 0.0, 319.5, 0.0, 0.0, 525.0, 239.5, 0.0, 0.0, 0.0, 1.0, 0.0]
";
    assert_eq!(text, expected);
    assert_eq!(CameraInfoYaml::parse(&text).unwrap().camera().unwrap(), camera);
}

#[test]
fn write_read_is_exact_and_byte_stable() {
    let mut cases = vec![sample(), CameraInfoYaml::parse(FROM_CAMERA_CALIBRATION).unwrap(), CameraInfoYaml::parse(OLD_STYLE).unwrap()];
    let fisheye = Camera::from_camera_info("equidistant", &[-0.008, 0.0437, -0.0418, 0.0082], &[286.2, 0.0, 424.1, 0.0, 286.3, 400.5, 0.0, 0.0, 1.0], 848, 800).unwrap();
    cases.push(CameraInfoYaml::from_camera("yes", &fisheye));
    let mut empty = sample();
    (empty.distortion_model, empty.distortion_coefficients, empty.camera_name) = (String::new(), Vec::new(), String::new());
    cases.push(empty);
    for x in cases {
        let text = x.to_yaml();
        let back = CameraInfoYaml::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, x, "{text}");
        // Bit-exact, including the sign of zero.
        let bits = |v: &CameraInfoYaml| v.distortion_coefficients.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&x));
        assert_eq!(back.to_yaml(), text);
    }
}

#[test]
fn load_and_save_files() {
    let dir = std::env::temp_dir().join(format!("ovseg-calibration-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("camera.yaml");
    sample().save(&path).unwrap();
    assert_eq!(CameraInfoYaml::load(&path).unwrap(), sample());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), sample().to_yaml());
    std::fs::write(&path, OLD_STYLE.replace("0.0825017", "nope")).unwrap();
    let e = CameraInfoYaml::load(&path).unwrap_err().to_string();
    assert!(e.contains("camera.yaml") && e.contains("distortion_coefficients"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let e = CameraInfoYaml::load(dir.join("missing.yaml")).unwrap_err();
    assert!(matches!(&e, CalibrationError::File { path, .. } if path.ends_with("missing.yaml")), "{e}");
}

fn parse_error(from: &str, to: &str) -> String {
    assert!(FROM_CAMERA_CALIBRATION.contains(from), "{from}");
    CameraInfoYaml::parse(&FROM_CAMERA_CALIBRATION.replacen(from, to, 1)).unwrap_err().to_string()
}

#[test]
fn validation_errors_name_the_field() {
    let e = parse_error("1.     ]", "]");
    assert!(e.contains("`camera_matrix.data` has 8 values, expected 9"), "{e}");
    let e = parse_error("  rows: 3\n  cols: 4", "  rows: 4\n  cols: 4");
    assert!(e.contains("`projection_matrix.rows` = 4"), "{e}");
    let e = parse_error("cols: 5", "cols: 4");
    assert!(e.contains("`distortion_coefficients.data` has 5 values, expected 4 (1x4)"), "{e}");
    let e = parse_error("  rows: 1\n  cols: 5", "  rows: 2\n  cols: 3");
    assert!(e.contains("`distortion_coefficients.rows` = 2: distortion_coefficients is a 1xN (or Nx1) vector"), "{e}");
    let column = FROM_CAMERA_CALIBRATION.replacen("  rows: 1\n  cols: 5", "  rows: 5\n  cols: 1", 1);
    assert_eq!(CameraInfoYaml::parse(&column).unwrap().distortion_coefficients.len(), 5);
    let e = parse_error("0.003083, 0.000000]", "0.003083]");
    assert!(e.contains("`distortion_coefficients.data` has 4 values, expected 5 (1x5)"), "{e}");
    let e = parse_error("distortion_model: plumb_bob", "distortion_model: fov");
    assert!(e.contains("`distortion_model` = \"fov\"") && e.contains("rational_polynomial"), "{e}");
    let e = parse_error("[ 580.46715", "[ 0.0");
    assert!(e.contains("`camera_matrix.data[0] (fx)` = 0"), "{e}");
    let e = parse_error("image_width: 640", "image_width: 0");
    assert!(e.contains("`image_width` = 0"), "{e}");
    let e = parse_error("[ 587.73773", "[ .nan");
    assert!(e.contains("`projection_matrix.data` = NaN at index 0"), "{e}");
    let e = parse_error("image_height: 480\n", "");
    assert!(e.contains("image_height"), "{e}");
    let e = parse_error("image_width: 640", "image_width: -640");
    assert!(e.contains("image_width"), "{e}");
    let e = parse_error("data: [0.134462", "data: [zero");
    assert!(e.contains("distortion_coefficients"), "{e}");
}

#[test]
fn distortion_count_must_match_the_model() {
    let mut info = sample();
    info.distortion_coefficients.truncate(5);
    let e = CameraInfoYaml::parse(&info.to_yaml()).unwrap_err().to_string();
    assert_eq!(e, "`distortion_coefficients.data` has 5 values, expected 8 for distortion_model \"rational_polynomial\" (or 0 for none)");
}
