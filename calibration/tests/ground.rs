//! Ground plane: extrinsics checked against an independent world-frame construction, depth by
//! ray intersection, horizon rays, and RANSAC with outliers and degenerate inputs.
use calibration::{Camera, Distortion, GroundPlane, Intrinsics};
use nalgebra::{Matrix3, Point2, Point3, Rotation3, Vector3};

/// Camera-to-world rotation built the long way, independently of `from_extrinsics`: world
/// X forward, Y left, Z up (REP 103); the optical frame of a level camera has x = -Y, y = -Z,
/// z = X; pitch turns about world Y (forward towards down), then roll about the camera's own
/// forward axis (left side up, right side down).
fn camera_to_world(pitch: f64, roll: f64) -> Matrix3<f64> {
    let base = Matrix3::from_columns(&[-Vector3::y(), -Vector3::z(), Vector3::x()]);
    let pitch = Rotation3::from_axis_angle(&Vector3::y_axis(), pitch);
    let roll = Rotation3::from_axis_angle(&Vector3::x_axis(), roll);
    (pitch * roll).into_inner() * base
}

/// A world point (camera at height `h` above the origin) in the camera frame.
fn to_camera(world: Point3<f64>, h: f64, pitch: f64, roll: f64) -> Point3<f64> {
    Point3::from(camera_to_world(pitch, roll).transpose() * (world.coords - Vector3::new(0.0, 0.0, h)))
}

fn plumb_bob_camera() -> Camera {
    let d = Distortion::PlumbBob { k1: -0.28, k2: 0.07, p1: 1e-4, p2: -2e-4, k3: 0.0 };
    Camera::new(Intrinsics { fx: 500.0, fy: 498.0, cx: 319.5, cy: 239.5 }, d, 640, 480).unwrap()
}

#[test]
fn level_camera_depth_by_hand() {
    // Level camera 1.5 m up, f = 500, cy = 240: the ground at pixel row 340 is 100 px below the
    // horizon, so depth = 1.5 * 500 / 100 = 7.5 m.
    let ground = GroundPlane::from_extrinsics(1.5, 0.0, 0.0).unwrap();
    assert_eq!(ground.ray_intersection(&Vector3::new(0.0, 100.0 / 500.0, 1.0)), Some(7.5));
    let unit = Vector3::new(0.0, 0.2, 1.0).normalize();
    let range = ground.ray_intersection(&unit).unwrap();
    assert!((range - 7.5 * 1.04f64.sqrt()).abs() < 1e-12, "{range}");
    assert!((ground.intersect(&unit).unwrap() - Point3::new(0.0, 1.5, 7.5)).norm() < 1e-12);
    // Looking straight down: the optical axis meets the ground at the camera height.
    let down = GroundPlane::from_extrinsics(1.5, std::f64::consts::FRAC_PI_2, 0.0).unwrap();
    assert!((down.ray_intersection(&Vector3::z()).unwrap() - 1.5).abs() < 1e-12);
}

#[test]
fn extrinsics_agree_with_an_independent_world_construction() {
    for (h, pitch, roll) in [(1.3, 0.35, 0.1), (0.4, 0.05, -0.2), (2.5, 1.2, 0.0), (1.0, -0.1, 0.3)] {
        let ground = GroundPlane::from_extrinsics(h, pitch, roll).unwrap();
        let up = camera_to_world(pitch, roll).transpose() * Vector3::z();
        assert!((ground.normal.into_inner() - up).norm() < 1e-12, "{h} {pitch} {roll}");
        let on_ground = to_camera(Point3::new(3.0, -1.0, 0.0), h, pitch, roll);
        assert!(ground.signed_distance(&on_ground).abs() < 1e-12);
        assert!((ground.signed_distance(&Point3::origin()) - h).abs() < 1e-12);
    }
}

#[test]
fn ground_pixel_depth_from_ray_intersection() {
    let (h, pitch, roll) = (1.3, 0.35, 0.1);
    let ground = GroundPlane::from_extrinsics(h, pitch, roll).unwrap();
    let pinhole = Camera::from(plumb_bob_camera().pinhole());
    for camera in [plumb_bob_camera(), pinhole] {
        let mut checked = 0;
        for xi in 0..60 {
            for yi in -40..=40 {
                let world = Point3::new(0.5 + xi as f64 * 0.5, yi as f64 * 0.25, 0.0);
                let p = to_camera(world, h, pitch, roll);
                let Some(px) = camera.project(&p) else { continue };
                if !(0.0..640.0).contains(&px.x) || !(0.0..480.0).contains(&px.y) {
                    continue;
                }
                let ray = camera.unproject(&px).unwrap();
                let depth = ground.intersect(&ray).unwrap().z;
                assert!((depth - p.z).abs() <= 1e-9 * p.z, "{world} at {px}: {depth} vs {}", p.z);
                let range = ground.ray_intersection(&ray).unwrap();
                assert!((range - p.coords.norm()).abs() <= 1e-9 * range);
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked}");
        // Above the horizon there is no ground.
        let sky = camera.unproject(&Point2::new(320.0, 0.0)).unwrap();
        assert_eq!(ground.ray_intersection(&sky), None);
    }
}

#[test]
fn rays_parallel_to_or_away_from_the_ground_give_none_not_infinity() {
    let level = GroundPlane::from_extrinsics(1.5, 0.0, 0.0).unwrap();
    assert_eq!(level.ray_intersection(&Vector3::z()), None, "optical axis along the horizon");
    assert_eq!(level.ray_intersection(&Vector3::new(0.3, 1e-15, 1.0)), None, "numerically parallel");
    assert_eq!(level.ray_intersection(&Vector3::new(0.0, -0.1, 1.0)), None, "above the horizon");
    assert_eq!(level.ray_intersection(&Vector3::zeros()), None);
    assert_eq!(level.ray_intersection(&Vector3::new(f64::NAN, 1.0, 1.0)), None);
    assert_eq!(level.intersect(&Vector3::x()), None);
    let looking_up = GroundPlane::from_extrinsics(1.5, -0.2, 0.0).unwrap();
    assert_eq!(looking_up.ray_intersection(&Vector3::z()), None);
    // Far but finite is still an answer.
    let far = level.ray_intersection(&Vector3::new(0.0, 1e-6, 1.0)).unwrap();
    assert!((far - 1.5e6).abs() < 1e-3, "{far}");
}

#[test]
fn a_camera_pose_in_the_ground_frame_gives_the_same_plane_as_height_pitch_roll() {
    use calibration::Extrinsics;
    use nalgebra::{Isometry3, Translation3, UnitQuaternion};
    // The optical frame (z forward, x right, y down) of a level camera, in a body frame
    // (x forward, y left, z up): URDF's usual rpy (-pi/2, 0, -pi/2).
    let optical = Rotation3::from_euler_angles(-std::f64::consts::FRAC_PI_2, 0.0, -std::f64::consts::FRAC_PI_2);
    for (h, pitch, roll) in [(1.2, 0.0, 0.0), (0.8, 0.35, 0.0), (1.5, 0.2, 0.05)] {
        // Pitch down about the body's y axis, roll about the optical axis.
        let rotation = Rotation3::from_axis_angle(&Vector3::y_axis(), pitch) * optical * Rotation3::from_axis_angle(&Vector3::z_axis(), roll);
        let pose = Extrinsics { isometry: Isometry3::from_parts(Translation3::new(0.3, -0.1, h), UnitQuaternion::from_rotation_matrix(&rotation)) };
        let got = GroundPlane::from_camera_pose(&pose).unwrap();
        let want = GroundPlane::from_extrinsics(h, pitch, roll).unwrap();
        assert!((got.normal.into_inner() - want.normal.into_inner()).norm() < 1e-12 && (got.offset - want.offset).abs() < 1e-12, "{got:?} vs {want:?}");
    }
    let below = Extrinsics::from_xyz_rpy([0.0, 0.0, -0.2], [0.0; 3]).unwrap();
    let e = GroundPlane::from_camera_pose(&below).unwrap_err().to_string();
    assert!(e.contains("camera_pose z") && e.contains("above the ground"), "{e}");
}

#[test]
fn mounting_inverts_from_extrinsics() {
    for (h, pitch, roll) in [(1.2, 0.3, 0.0), (0.4, -0.2, 0.1), (2.5, 1.2, -0.7), (1.0, 0.0, 0.0)] {
        let [h2, p2, r2] = GroundPlane::from_extrinsics(h, pitch, roll).unwrap().mounting();
        assert!((h2 - h).abs() < 1e-12 && (p2 - pitch).abs() < 1e-12 && (r2 - roll).abs() < 1e-12, "{h} {pitch} {roll}");
    }
}

#[test]
fn bad_extrinsics_are_rejected() {
    for (h, pitch, roll, field) in [
        (0.0, 0.0, 0.0, "`height_m` = 0"),
        (-1.0, 0.0, 0.0, "`height_m` = -1"),
        (f64::NAN, 0.0, 0.0, "`height_m` = NaN"),
        (f64::INFINITY, 0.0, 0.0, "`height_m` = inf"),
        (1.0, f64::NAN, 0.0, "`pitch_rad` = NaN"),
        (1.0, 0.0, f64::NEG_INFINITY, "`roll_rad` = -inf"),
    ] {
        let e = GroundPlane::from_extrinsics(h, pitch, roll).unwrap_err().to_string();
        assert!(e.contains(field), "{e}");
    }
    assert!(GroundPlane::new(Vector3::zeros(), 1.0).unwrap_err().to_string().contains("`normal`"));
}

/// Deterministic pseudo-random values in [0, 1) for test data (splitmix64 of a counter).
fn uniform(i: u64) -> f64 {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x1234_5678);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / 2f64.powi(64)
}

/// 700 ground points with ±0.5 mm noise and 300 (30%) obstacle points 5 cm to 2 m above it.
fn scene(h: f64, pitch: f64, roll: f64) -> Vec<Point3<f64>> {
    let mut points = Vec::new();
    for i in 0..1000u64 {
        let (x, y) = (1.0 + 14.0 * uniform(3 * i), -5.0 + 10.0 * uniform(3 * i + 1));
        let z = if i % 10 < 3 { 0.05 + 1.95 * uniform(3 * i + 2) } else { 0.001 * (uniform(3 * i + 2) - 0.5) };
        points.push(to_camera(Point3::new(x, y, z), h, pitch, roll));
    }
    points
}

#[test]
fn ransac_recovers_the_ground_despite_30_percent_outliers() {
    let (h, pitch, roll) = (1.2, 0.3, -0.05);
    let truth = GroundPlane::from_extrinsics(h, pitch, roll).unwrap();
    let points = scene(h, pitch, roll);
    for seed in [0, 1, 42] {
        let fit = GroundPlane::fit_ransac(&points, 200, 0.01, seed).unwrap();
        assert!((fit.normal.into_inner() - truth.normal.into_inner()).norm() < 1e-3, "seed {seed}: {fit:?}");
        assert!((fit.offset - h).abs() < 1e-3, "seed {seed}: {fit:?}");
        // Deterministic for a seed.
        assert_eq!(GroundPlane::fit_ransac(&points, 200, 0.01, seed).unwrap(), fit);
    }
}

#[test]
fn ransac_reports_degenerate_input() {
    let fit = |points: &[Point3<f64>]| GroundPlane::fit_ransac(points, 50, 0.01, 7).unwrap_err().to_string();
    let e = fit(&[Point3::new(0.0, 1.0, 2.0), Point3::new(1.0, 1.0, 2.0)]);
    assert!(e.contains("need at least 3 points, got 2"), "{e}");
    let line: Vec<_> = (0..20).map(|i| Point3::new(i as f64, 2.0 * i as f64 + 1.0, -0.5 * i as f64)).collect();
    let e = fit(&line);
    assert!(e.contains("all 20 points are collinear"), "{e}");
    let e = fit(&[Point3::new(1.0, 2.0, 3.0); 5]);
    assert!(e.contains("all 5 points coincide"), "{e}");
    let mut with_nan = scene(1.0, 0.2, 0.0);
    with_nan[4].y = f64::NAN;
    let e = fit(&with_nan);
    assert!(e.contains("points[4]") && e.contains("NaN"), "{e}");
    let points = scene(1.0, 0.2, 0.0);
    for threshold in [0.0, -1.0, f64::NAN] {
        let e = GroundPlane::fit_ransac(&points, 50, threshold, 7).unwrap_err().to_string();
        assert!(e.contains("`inlier_threshold`"), "{e}");
    }
    let e = GroundPlane::fit_ransac(&points, 0, 0.01, 7).unwrap_err().to_string();
    assert!(e.contains("`iterations` = 0"), "{e}");
}
