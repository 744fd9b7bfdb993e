//! Rectification maps and bilinear remap: identity for an ideal camera, straight lines from a
//! distorted checkerboard, consistency with projection under a rotation, and buffer checks.
use calibration::{Camera, Distortion, INVALID_SOURCE, Intrinsics, rectify_map, remap_gray8, remap_rgb8};
use nalgebra::{Matrix3, Matrix3x4, Point2, Point3, Rotation3, Vector3};

fn p_of(k: &Matrix3<f64>) -> Matrix3x4<f64> {
    let mut p = Matrix3x4::zeros();
    p.fixed_view_mut::<3, 3>(0, 0).copy_from(k);
    p
}

#[test]
fn pinhole_with_identity_rectification_maps_every_pixel_to_itself() {
    let intrinsics = Intrinsics { fx: 525.0, fy: 521.3, cx: 319.7, cy: 241.2 };
    let camera = Camera::new(intrinsics, Distortion::None, 640, 480).unwrap();
    let (mx, my) = rectify_map(&camera, &Matrix3::identity(), &p_of(&camera.k()), 640, 480).unwrap();
    assert_eq!((mx.len(), my.len()), (640 * 480, 640 * 480));
    for v in 0..480 {
        for u in 0..640 {
            let i = v * 640 + u;
            assert!((mx[i] as f64 - u as f64).abs() < 1e-9 && (my[i] as f64 - v as f64).abs() < 1e-9, "({u}, {v})");
        }
    }
    // And remapping through it is a copy.
    let src: Vec<u8> = (0..640 * 480).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(remap_gray8(&src, 640, 480, &mx, &my).unwrap(), src);
    // These intrinsics put K^-1 K a rounding error (-3e-14 px) left of column 0: still a copy.
    let camera = Camera::new(Intrinsics { fx: 497.489, fy: 497.489, cx: 187.5, cy: 124.5 }, Distortion::None, 370, 250).unwrap();
    let (mx, my) = rectify_map(&camera, &Matrix3::identity(), &p_of(&camera.k()), 370, 250).unwrap();
    let src: Vec<u8> = (0..370 * 250).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(remap_gray8(&src, 370, 250, &mx, &my).unwrap(), src);
}

/// Square size of the synthetic checkerboard, in ideal (undistorted) pixels.
const SQUARE: f64 = 20.0;

/// The checkerboard as the distorted camera sees it, and the camera. Squares are axis-aligned in
/// the undistorted image, centred on the principal point; the pattern is the sign of
/// sin(π u / S) sin(π v / S) through a smooth ramp, so edges are exactly at u, v = multiples of S
/// and sampling it at pixel centres does not alias.
fn distorted_checkerboard() -> (Camera, Vec<u8>) {
    let d = Distortion::PlumbBob { k1: -0.28, k2: 0.07, p1: 1e-4, p2: -2e-4, k3: 0.0 };
    let camera = Camera::new(Intrinsics { fx: 250.0, fy: 250.0, cx: 160.0, cy: 120.0 }, d, 320, 240).unwrap();
    let (w, h) = (320usize, 240usize);
    let mut img = vec![0u8; w * h];
    for y in 0..h {
        for x in 0..w {
            let ray = camera.unproject(&Point2::new(x as f64, y as f64)).unwrap();
            let (u, v) = (250.0 * ray.x / ray.z, 250.0 * ray.y / ray.z);
            let s = (std::f64::consts::PI * u / SQUARE).sin() * (std::f64::consts::PI * v / SQUARE).sin();
            img[y * w + x] = (127.5 + 127.0 * (3.0 * s).tanh()).round() as u8;
        }
    }
    (camera, img)
}

/// Sub-pixel x where row `y` of `img` crosses mid-gray inside [from, to).
fn crossing(img: &[u8], w: usize, y: usize, from: usize, to: usize) -> Option<f64> {
    (from..to).find_map(|x| {
        let (a, b) = (img[y * w + x] as f64 - 127.5, img[y * w + x + 1] as f64 - 127.5);
        (a.signum() != b.signum()).then(|| x as f64 + a / (a - b))
    })
}

/// Largest distance of the points from their least-squares line x = a + b y.
fn deviation_from_line(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (my, mx) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let b = points.iter().map(|p| (p.0 - my) * (p.1 - mx)).sum::<f64>() / points.iter().map(|p| (p.0 - my).powi(2)).sum::<f64>();
    points.iter().map(|p| (p.1 - (mx + b * (p.0 - my))).abs()).fold(0.0, f64::max)
}

#[test]
fn undistorting_a_checkerboard_straightens_its_lines() {
    let (camera, distorted) = distorted_checkerboard();
    let (mx, my) = rectify_map(&camera, &Matrix3::identity(), &p_of(&camera.k()), 320, 240).unwrap();
    let rectified = remap_gray8(&distorted, 320, 240, &mx, &my).unwrap();
    // The vertical edge 5 squares left of centre: x = 60 in the undistorted image. Rows away
    // from horizontal edges, where the square boundary is a clean step.
    let rows: Vec<usize> = (20..220).filter(|&y| ((y as f64 - 120.0).rem_euclid(SQUARE) - SQUARE / 2.0).abs() < 6.0).collect();
    assert!(rows.len() > 60);
    let straight: Vec<(f64, f64)> = rows.iter().map(|&y| (y as f64, crossing(&rectified, 320, y, 50, 70).unwrap())).collect();
    let curved: Vec<(f64, f64)> = rows.iter().map(|&y| (y as f64, crossing(&distorted, 320, y, 55, 75).unwrap())).collect();
    let (bent, fixed) = (deviation_from_line(&curved), deviation_from_line(&straight));
    assert!(bent > 1.5, "the distorted edge should bow: {bent}");
    assert!(fixed < 0.05, "the rectified edge should be straight: {fixed}");
    for (y, x) in &straight {
        assert!((x - 60.0).abs() < 0.05, "row {y}: edge at {x}, expected 60");
    }
}

#[test]
fn rgb_remap_is_gray_remap_per_channel() {
    let (camera, gray) = distorted_checkerboard();
    let (mx, my) = rectify_map(&camera, &Matrix3::identity(), &p_of(&camera.k()), 320, 240).unwrap();
    let channels = [gray.clone(), gray.iter().map(|g| 255 - g).collect(), gray.iter().map(|g| g / 3 + 40).collect::<Vec<u8>>()];
    let rgb: Vec<u8> = (0..gray.len()).flat_map(|i| channels.iter().map(move |c| c[i])).collect();
    let out = remap_rgb8(&rgb, 320, 240, &mx, &my).unwrap();
    for (c, channel) in channels.iter().enumerate() {
        let expected = remap_gray8(channel, 320, 240, &mx, &my).unwrap();
        let got: Vec<u8> = out.iter().skip(c).step_by(3).copied().collect();
        assert_eq!(got, expected, "channel {c}");
    }
}

#[test]
fn bilinear_values_and_out_of_range_fill() {
    // 0 100
    // 200 255
    let src = [0u8, 100, 200, 255];
    let map_x = [0.5f32, 1.0, 0.25, 1.0001, -0.0001, f32::NAN, INVALID_SOURCE, 0.0];
    let map_y = [0.5f32, 0.0, 1.0, 0.0, 0.0, 0.0, INVALID_SOURCE, 1.0];
    let out = remap_gray8(&src, 2, 2, &map_x, &map_y).unwrap();
    // (0 + 100 + 200 + 255) / 4 = 138.75; 200 * 0.75 + 255 * 0.25 = 213.75.
    assert_eq!(out, vec![139, 100, 214, 0, 0, 0, 0, 200]);
}

#[test]
fn a_rotated_rectification_agrees_with_projection() {
    let d = Distortion::RationalPolynomial { k1: 0.3, k2: -0.1, p1: 5e-4, p2: -3e-4, k3: 0.01, k4: 0.25, k5: -0.05, k6: 0.005 };
    let camera = Camera::new(Intrinsics { fx: 400.0, fy: 401.0, cx: 330.0, cy: 235.0 }, d, 640, 480).unwrap();
    let r = Rotation3::from_euler_angles(0.01, 0.04, -0.02).into_inner();
    let mut p = p_of(&Matrix3::new(380.0, 0.0, 320.0, 0.0, 380.0, 240.0, 0.0, 0.0, 1.0));
    p[(0, 3)] = -38.0; // a stereo baseline term: must not move pixels
    let (mx, my) = rectify_map(&camera, &r, &p, 640, 480).unwrap();
    // A 3-D point seen through both: rectified pixel q = P3 (R X), raw pixel = project(X); the
    // map bilinearly sampled at q must give the raw pixel.
    for x in [-1.0, -0.2, 0.0, 0.5, 1.1] {
        for y in [-0.6, 0.0, 0.3, 0.7] {
            let world = Point3::new(x, y, 2.0);
            let raw = camera.project(&world).unwrap();
            let rect = p.fixed_view::<3, 3>(0, 0) * (r * world.coords);
            let q = Point2::new(rect.x / rect.z, rect.y / rect.z);
            let (u0, v0) = (q.x.floor() as usize, q.y.floor() as usize);
            let (au, av) = (q.x - u0 as f64, q.y - v0 as f64);
            let sample = |m: &[f32]| {
                let at = |u: usize, v: usize| m[v * 640 + u] as f64;
                (at(u0, v0) * (1.0 - au) + at(u0 + 1, v0) * au) * (1.0 - av) + (at(u0, v0 + 1) * (1.0 - au) + at(u0 + 1, v0 + 1) * au) * av
            };
            let mapped = Point2::new(sample(&mx), sample(&my));
            assert!((mapped - raw).norm() < 0.01, "{world}: map {mapped} vs projection {raw}");
        }
    }
}

#[test]
fn fisheye_rays_beyond_the_image_circle_are_marked_invalid() {
    let d = Distortion::Equidistant { k1: -0.02, k2: 0.004, k3: -0.003, k4: 0.0002 };
    let camera = Camera::new(Intrinsics { fx: 300.0, fy: 300.0, cx: 640.0, cy: 480.0 }, d, 1280, 960).unwrap();
    // A wide virtual pinhole (±72° across) turned 70° to the side: its far side looks ~140° off
    // the fisheye's axis, past the model's fold at ~120°.
    let k = Matrix3::new(100.0, 0.0, 320.0, 0.0, 100.0, 240.0, 0.0, 0.0, 1.0);
    let r = Rotation3::from_axis_angle(&Vector3::y_axis(), 70f64.to_radians()).into_inner();
    let (mx, my) = rectify_map(&camera, &r, &p_of(&k), 640, 480).unwrap();
    let src = vec![255u8; 1280 * 960];
    let out = remap_gray8(&src, 1280, 960, &mx, &my).unwrap();
    let k_inv = k.try_inverse().unwrap();
    let (mut invalid, mut valid) = (0, 0);
    for v in 0..480 {
        for u in 0..640 {
            let i = v * 640 + u;
            let ray = r.transpose() * k_inv * Vector3::new(u as f64, v as f64, 1.0);
            let angle = ray.z.atan2(ray.xy().norm());
            let angle = std::f64::consts::FRAC_PI_2 - angle;
            if mx[i] == INVALID_SOURCE {
                invalid += 1;
                assert_eq!((my[i], out[i]), (INVALID_SOURCE, 0));
                assert!(angle >= camera.max_incidence_angle() - 1e-9, "({u}, {v}) at {angle} rad");
            } else {
                valid += 1;
                assert!(angle < camera.max_incidence_angle() + 1e-9);
                assert_eq!(out[i], 255, "({u}, {v}) -> ({}, {})", mx[i], my[i]);
            }
        }
    }
    assert!(invalid > 1000 && valid > 1000, "{invalid} invalid, {valid} valid");
}

#[test]
fn bad_inputs_are_reported() {
    let camera = Camera::new(Intrinsics { fx: 100.0, fy: 100.0, cx: 50.0, cy: 50.0 }, Distortion::None, 100, 100).unwrap();
    let e = rectify_map(&camera, &Matrix3::identity(), &Matrix3x4::zeros(), 10, 10).unwrap_err().to_string();
    assert!(e.contains("P[:, :3] * R"), "{e}");
    let e = remap_gray8(&[0; 99], 10, 10, &[0.0], &[0.0]).unwrap_err().to_string();
    assert!(e.contains("`src` has 99 values, expected 100"), "{e}");
    let e = remap_rgb8(&[0; 100], 10, 10, &[0.0], &[0.0]).unwrap_err().to_string();
    assert!(e.contains("`src` has 100 values, expected 300"), "{e}");
    let e = remap_gray8(&[0; 100], 10, 10, &[0.0, 1.0], &[0.0]).unwrap_err().to_string();
    assert!(e.contains("`map_y` has 1 values, expected 2"), "{e}");
    assert_eq!(rectify_map(&camera, &Matrix3::identity(), &p_of(&camera.k()), 0, 0).unwrap(), (vec![], vec![]));
}
