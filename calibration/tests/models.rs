//! Camera models: formulas against hand-computed values, project/unproject round trips over whole
//! images, validity regions, and CameraInfo validation messages.
use calibration::{Camera, CalibrationError, Distortion, Intrinsics, PinholeCamera};
use nalgebra::{Point2, Point3, Vector3};

const PLUMB_BOB: [f64; 5] = [-0.28, 0.07, 1e-4, -2e-4, 0.0];
/// Azure-Kinect-like rational_polynomial (strong, with a nearly cancelling denominator).
const RATIONAL: [f64; 8] = [0.52, -2.59, 6.9e-4, -1.9e-4, 1.46, 0.40, -2.42, 1.39];
/// Intel T265-like equidistant (~163° lens): monotonic, valid over the whole image.
const T265: [f64; 4] = [-0.0080, 0.0437, -0.0418, 0.0082];
/// A 180°-ish equidistant lens whose polynomial folds back at ~120°: valid inside an image circle.
const FOLDING_FISHEYE: [f64; 4] = [-0.02, 0.004, -0.003, 0.0002];

fn k(fx: f64, fy: f64, cx: f64, cy: f64) -> [f64; 9] {
    [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
}

fn close(a: Point2<f64>, b: Point2<f64>, tol: f64) -> bool {
    (a - b).norm() <= tol
}

/// Every pixel on a grid that includes the last row and column.
fn grid(width: u32, height: u32, step: usize) -> impl Iterator<Item = Point2<f64>> {
    let xs: Vec<f64> = (0..width).step_by(step).map(f64::from).chain([width as f64 - 1.0]).collect();
    let ys: Vec<f64> = (0..height).step_by(step).map(f64::from).chain([height as f64 - 1.0]).collect();
    ys.into_iter().flat_map(move |y| xs.clone().into_iter().map(move |x| Point2::new(x + 0.0, y)))
}

/// project(unproject(px)) == px for every grid pixel where unproject succeeds; returns how many
/// did not.
fn round_trip(camera: &Camera, step: usize) -> usize {
    let mut refused = 0;
    for px in grid(camera.width(), camera.height(), step) {
        let Some(ray) = camera.unproject(&px) else {
            refused += 1;
            continue;
        };
        assert!((ray.norm() - 1.0).abs() < 1e-12);
        for scale in [0.3, 12.0] {
            let back = camera.project(&Point3::from(ray.into_inner() * scale)).unwrap();
            assert!(close(back, px, 1e-6), "{}: {px} -> {ray:?} -> {back}", camera.distortion().name());
        }
    }
    refused
}

#[test]
fn plumb_bob_formula_by_hand() {
    // (x, y) = (0.5, -0.25): r² = 0.3125, R = 1 - 0.28 r² + 0.07 r⁴ = 0.9193359375
    // xd = x R + 2 p1 x y + p2 (r² + 2x²) = 0.45966796875 - 0.000025 - 0.0001625 = 0.45948046875
    // yd = y R + p1 (r² + 2y²) + 2 p2 x y = -0.229833984375 + 0.00004375 + 0.00005 = -0.229740234375
    let d = Distortion::from_ros("plumb_bob", &PLUMB_BOB).unwrap();
    let out = d.distort(&Point2::new(0.5, -0.25));
    assert!(close(out, Point2::new(0.45948046875, -0.229740234375), 1e-15), "{out}");
}

#[test]
fn rational_polynomial_formula_by_hand() {
    // (0.6, 0.8): r² = 1, R = (1 + 0.5 + 0.1 + 0.01) / (1 + 0.6 + 0.12 + 0.02) = 1.61 / 1.74,
    // no tangential terms, so (xd, yd) = R (0.6, 0.8).
    let d = Distortion::RationalPolynomial { k1: 0.5, k2: 0.1, p1: 0.0, p2: 0.0, k3: 0.01, k4: 0.6, k5: 0.12, k6: 0.02 };
    let out = d.distort(&Point2::new(0.6, 0.8));
    let r = 1.61 / 1.74;
    assert!(close(out, Point2::new(0.6 * r, 0.8 * r), 1e-15), "{out}");
}

#[test]
fn equidistant_formula_by_hand() {
    // (1, 0): θ = atan(1) = π/4, θ² = 0.6168502750680849,
    // θd = θ (1 + 0.1 θ² + 0.01 θ⁴ + 0.001 θ⁶ + 0.0001 θ⁸) = 0.837029659532698, xd = θd / r · x.
    let d = Distortion::from_ros("equidistant", &[0.1, 0.01, 0.001, 0.0001]).unwrap();
    let out = d.distort(&Point2::new(1.0, 0.0));
    assert!(close(out, Point2::new(0.837029659532698, 0.0), 1e-15), "{out}");
    // Zero coefficients: the ideal equidistant lens, r_d = θ.
    let ideal = Distortion::Equidistant { k1: 0.0, k2: 0.0, k3: 0.0, k4: 0.0 };
    let out = ideal.distort(&Point2::new(0.0, 3f64.sqrt()));
    assert!(close(out, Point2::new(0.0, std::f64::consts::FRAC_PI_3), 1e-15), "{out}");
}

#[test]
fn plumb_bob_round_trip_over_the_whole_image() {
    let camera = Camera::from_camera_info("plumb_bob", &PLUMB_BOB, &k(500.0, 498.0, 319.5, 239.5), 640, 480).unwrap();
    assert_eq!(round_trip(&camera, 16), 0);
}

#[test]
fn rational_polynomial_round_trip_over_the_whole_image() {
    let camera = Camera::from_camera_info("rational_polynomial", &RATIONAL, &k(504.0, 504.2, 321.3, 330.1), 640, 576).unwrap();
    assert_eq!(round_trip(&camera, 16), 0);
}

#[test]
fn equidistant_round_trip_over_the_whole_image() {
    let camera = Camera::from_camera_info("equidistant", &T265, &k(286.2, 286.3, 424.1, 400.5), 848, 800).unwrap();
    assert_eq!(round_trip(&camera, 16), 0);
    // The corners see beyond 90°: a fisheye model must still invert them.
    let corner = camera.unproject(&Point2::new(0.0, 0.0)).unwrap();
    assert!(corner.z < 0.0, "{corner:?}");
}

#[test]
fn folding_equidistant_round_trips_inside_its_image_circle_and_refuses_outside() {
    let camera = Camera::from_camera_info("equidistant", &FOLDING_FISHEYE, &k(300.0, 300.0, 640.0, 480.0), 1280, 960).unwrap();
    let limit = camera.max_incidence_angle();
    assert!((limit.to_degrees() - 120.45).abs() < 0.05, "{}", limit.to_degrees());
    // Image circle radius in pixels: f θd(limit), the formula written out.
    let [k1, k2, k3, k4] = FOLDING_FISHEYE;
    let t2 = limit * limit;
    let circle = 300.0 * limit * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))));
    assert!((480.0..800.0).contains(&circle), "{circle}");
    let refused = round_trip(&camera, 16);
    assert!(refused > 0);
    for px in grid(1280, 960, 16) {
        let r = (px - Point2::new(640.0, 480.0)).norm();
        let ray = camera.unproject(&px);
        if r < circle - 1e-6 {
            assert!(ray.is_some(), "{px} at {r} px inside the {circle} px circle");
        } else if r > circle + 1e-6 {
            assert!(ray.is_none(), "{px} at {r} px outside the {circle} px circle");
        }
    }
    // A full 180° field: the 90° direction projects inside the image, straight back does not.
    let side = camera.project(&Point3::new(0.0, 1.0, 0.0)).unwrap();
    assert!(side.y > 480.0 && side.y < 960.0, "{side}");
    assert!(camera.project(&Point3::new(0.0, 0.0, -1.0)).is_none());
    assert!(camera.project(&Point3::new(-1.0, 0.0, -1.0)).is_none(), "135° is past the fold");
}

#[test]
fn distort_undistort_round_trip_in_normalized_coordinates() {
    let models = [
        Distortion::from_ros("plumb_bob", &PLUMB_BOB).unwrap(),
        Distortion::from_ros("rational_polynomial", &RATIONAL).unwrap(),
        Distortion::from_ros("equidistant", &T265).unwrap(),
        Distortion::None,
    ];
    for d in models {
        let camera = Camera::new(Intrinsics { fx: 400.0, fy: 400.0, cx: 320.0, cy: 240.0 }, d, 640, 480).unwrap();
        for i in -8..=8 {
            for j in -6..=6 {
                let p = Point2::new(i as f64 * 0.1, j as f64 * 0.1);
                let back = camera.undistort(&camera.distort(&p)).unwrap();
                assert!(close(back, p, 1e-12), "{}: {p} -> {back}", d.name());
            }
        }
    }
}

#[test]
fn undistort_refuses_points_beyond_the_fold() {
    // r (1 - 0.5 r²) peaks at r = sqrt(2/3), distorted radius sqrt(2/3) * 2/3 = 0.5443.
    let d = Distortion::PlumbBob { k1: -0.5, k2: 0.0, p1: 0.0, p2: 0.0, k3: 0.0 };
    let camera = Camera::new(Intrinsics { fx: 100.0, fy: 100.0, cx: 50.0, cy: 50.0 }, d, 100, 100).unwrap();
    assert!((camera.max_incidence_angle() - (2.0f64 / 3.0).sqrt().atan()).abs() < 1e-12);
    let inside = camera.undistort(&Point2::new(0.5, 0.0)).unwrap();
    assert!(inside.x < (2.0f64 / 3.0).sqrt() && (camera.distort(&inside).x - 0.5).abs() < 1e-14);
    assert!(camera.undistort(&Point2::new(0.6, 0.0)).is_none());
    assert!(camera.undistort(&Point2::new(f64::NAN, 0.0)).is_none());
    // The folded branch exists (r = 1.2 distorts to 0.336), but project refuses it.
    assert!(camera.project(&Point3::new(1.2, 0.0, 1.0)).is_none());
    assert!(camera.project(&Point3::new(0.5, 0.0, 1.0)).is_some());
    // Equidistant: undistorted (x/z, y/z) does not exist at or beyond 90°.
    let fisheye = Camera::from_camera_info("equidistant", &T265, &k(286.0, 286.0, 424.0, 400.0), 848, 800).unwrap();
    let beyond = fisheye.distort(&Point2::new(1e9, 0.0)).x * 1.05;
    assert!(fisheye.undistort(&Point2::new(beyond, 0.0)).is_none());
}

#[test]
fn points_behind_the_camera_do_not_project() {
    for (model, d) in [("plumb_bob", &PLUMB_BOB[..]), ("rational_polynomial", &RATIONAL[..]), ("", &[][..])] {
        let camera = Camera::from_camera_info(model, d, &k(500.0, 500.0, 320.0, 240.0), 640, 480).unwrap();
        assert!(camera.project(&Point3::new(0.1, 0.2, -1.0)).is_none(), "{model}");
        assert!(camera.project(&Point3::new(1.0, 0.0, 0.0)).is_none(), "{model}");
        assert!(camera.project(&Point3::origin()).is_none(), "{model}");
        assert!(camera.project(&Point3::new(f64::NAN, 0.0, 1.0)).is_none(), "{model}");
    }
}

#[test]
fn no_distortion_matches_the_pinhole_camera() {
    let pinhole = PinholeCamera::new(525.0, 520.0, 319.5, 239.5, 640, 480).unwrap();
    let camera = Camera::from(pinhole);
    assert_eq!(camera.pinhole(), pinhole);
    assert_eq!(camera, Camera::from_camera_info("", &[], &k(525.0, 520.0, 319.5, 239.5), 640, 480).unwrap());
    for px in grid(640, 480, 64) {
        let ray = camera.unproject(&px).unwrap();
        assert!((ray.into_inner() - pinhole.unproject(&px).into_inner()).norm() < 1e-15);
        let p = Point3::from(ray.into_inner() * 3.0);
        assert!(close(camera.project(&p).unwrap(), pinhole.project(&p).unwrap(), 1e-12));
    }
    // An empty D means no distortion for any model, as image_geometry reads it.
    let empty = Camera::from_camera_info("plumb_bob", &[], &k(525.0, 520.0, 319.5, 239.5), 640, 480).unwrap();
    assert_eq!(empty.distortion(), Distortion::None);
    let ray = Vector3::new(0.0, 0.0, 1.0);
    assert_eq!(empty.project(&Point3::from(ray)), Some(Point2::new(319.5, 239.5)));
}

#[test]
fn ros_names_and_coefficients_round_trip() {
    for (name, d) in [("plumb_bob", &PLUMB_BOB[..]), ("rational_polynomial", &RATIONAL[..]), ("equidistant", &T265[..])] {
        let model = Distortion::from_ros(name, d).unwrap();
        assert_eq!((model.name(), model.coefficients().as_slice()), (name, d));
        assert_eq!(model.to_ros(), (name, d.to_vec()));
    }
    assert_eq!(Distortion::None.to_ros(), ("plumb_bob", vec![0.0; 5]));
    assert_eq!(Distortion::from_ros("none", &[0.0, 0.0]).unwrap(), Distortion::None);
}

fn message(r: Result<Camera, CalibrationError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn camera_info_errors_name_the_field_and_value() {
    let good = k(500.0, 500.0, 320.0, 240.0);
    let e = message(Camera::from_camera_info("fov", &[0.9], &good, 640, 480));
    assert!(e.contains("`distortion_model` = \"fov\"") && e.contains("plumb_bob") && e.contains("equidistant"), "{e}");
    let e = message(Camera::from_camera_info("plumb_bob", &[0.1, 0.2, 0.0, 0.0], &good, 640, 480));
    assert!(e.contains("`d` has 4 values, expected 5"), "{e}");
    let e = message(Camera::from_camera_info("equidistant", &PLUMB_BOB, &good, 640, 480));
    assert!(e.contains("`d` has 5 values, expected 4"), "{e}");
    let e = message(Camera::from_camera_info("rational_polynomial", &PLUMB_BOB, &good, 640, 480));
    assert!(e.contains("has 5 values, expected 8"), "{e}");
    let e = message(Camera::from_camera_info("plumb_bob", &[f64::NAN, 0.0, 0.0, 0.0, 0.0], &good, 640, 480));
    assert!(e.contains("`d` = NaN at index 0"), "{e}");
    let e = message(Camera::from_camera_info("", &[], &k(0.0, 500.0, 320.0, 240.0), 640, 480));
    assert!(e.contains("`k[0] (fx)` = 0"), "{e}");
    let e = message(Camera::from_camera_info("", &[], &k(500.0, -1.0, 320.0, 240.0), 640, 480));
    assert!(e.contains("`k[4] (fy)` = -1"), "{e}");
    let e = message(Camera::from_camera_info("", &[], &k(f64::NAN, 500.0, 320.0, 240.0), 640, 480));
    assert!(e.contains("`k[0] (fx)` = NaN"), "{e}");
    let e = message(Camera::from_camera_info("", &[], &k(500.0, 500.0, f64::INFINITY, 240.0), 640, 480));
    assert!(e.contains("`k[2] (cx)` = inf"), "{e}");
    let e = message(Camera::from_camera_info("", &[], &good, 0, 480));
    assert!(e.contains("`width` = 0"), "{e}");
    let e = message(Camera::from_camera_info("", &[], &good, 640, 0));
    assert!(e.contains("`height` = 0"), "{e}");
    let mut skewed = good;
    skewed[1] = 0.5;
    let e = message(Camera::from_camera_info("", &[], &skewed, 640, 480));
    assert!(e.contains("`k`") && e.contains("0.5"), "{e}");
    let e = message(Camera::new(Intrinsics { fx: 1.0, fy: 1.0, cx: 0.0, cy: 0.0 }, Distortion::Equidistant { k1: f64::INFINITY, k2: 0.0, k3: 0.0, k4: 0.0 }, 1, 1));
    assert!(e.contains("`distortion` = inf"), "{e}");
}
