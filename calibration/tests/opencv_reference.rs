//! Values computed by OpenCV 4.14 (Python: `cv2.projectPoints`, `cv2.fisheye.projectPoints`,
//! `cv2.initUndistortRectifyMap`, `cv2.fisheye.initUndistortRectifyMap`) for the same cameras,
//! so "OpenCV conventions" is checked against OpenCV itself rather than against our reading of it.
use calibration::{Camera, rectify_map};
use nalgebra::{Matrix3, Matrix3x4, Point3, Rotation3};

struct Case {
    model: &'static str,
    d: &'static [f64],
    k: [f64; 9],
    size: (u32, u32),
    /// (X, Y, Z) -> OpenCV pixel.
    projections: [([f64; 3], [f64; 2]); 3],
    /// Output pixel (u, v) -> OpenCV (map_x, map_y), with R and P from `rectification()`.
    map: [([usize; 2], [f32; 2]); 4],
}

const CASES: [Case; 3] = [
    Case {
        model: "plumb_bob",
        d: &[-0.28, 0.07, 1e-4, -2e-4, 0.0],
        k: [500.0, 0.0, 319.5, 0.0, 498.0, 239.5, 0.0, 0.0, 1.0],
        size: (640, 480),
        projections: [
            ([0.3, -0.2, 1.0], [464.18044999999995, 143.4300232]),
            ([-0.5, 0.4, 1.0], [95.14725000000001, 418.2520204]),
            ([0.7, 0.6, 1.0], [603.76025, 482.291932]),
        ],
        map: [
            ([0, 0], [70.20071, 49.547802]),
            ([100, 50], [177.15115, 94.355446]),
            ([320, 240], [478.8702, 348.47238]),
            ([500, 400], [655.83276, 508.25287]),
        ],
    },
    Case {
        model: "rational_polynomial",
        d: &[0.52, -2.59, 6.9e-4, -1.9e-4, 1.46, 0.40, -2.42, 1.39],
        k: [504.0, 0.0, 321.3, 0.0, 504.2, 330.1, 0.0, 0.0, 1.0],
        size: (640, 576),
        projections: [
            ([0.3, -0.2, 1.0], [474.3489739233862, 228.06378581786865]),
            ([-0.5, 0.4, 1.0], [61.55584578638383, 538.088998268548]),
            ([0.7, 0.6, 1.0], [691.7812451223996, 648.1468759767242]),
        ],
        map: [
            ([0, 0], [22.741346, 14.453738]),
            ([100, 50], [166.0028, 84.17418]),
            ([320, 240], [486.54395, 352.0332]),
            ([500, 400], [787.5997, 604.7136]),
        ],
    },
    Case {
        model: "equidistant",
        d: &[-0.0080, 0.0437, -0.0418, 0.0082],
        k: [286.2, 0.0, 424.1, 0.0, 286.3, 400.5, 0.0, 0.0, 1.0],
        size: (848, 800),
        projections: [
            ([0.3, -0.2, 1.0], [506.4720423690514, 345.5661175628711]),
            ([-0.5, 0.4, 1.0], [296.7327946523676, 502.4293665717042]),
            ([0.7, 0.6, 1.0], [586.3763603359514, 539.6426234327131]),
        ],
        map: [
            ([0, 0], [202.57195, 191.42567]),
            ([100, 50], [250.34776, 194.35193]),
            ([320, 240], [470.04697, 349.10132]),
            ([500, 400], [653.8694, 530.78735]),
        ],
    },
];

/// A small stereo-like rotation and a zoomed-out P (0.7 K, P[2][2] = 1), as given to OpenCV.
fn rectification(k: &[f64; 9]) -> (Matrix3<f64>, Matrix3x4<f64>) {
    let r = Rotation3::from_euler_angles(0.02, -0.05, 0.01).into_inner();
    let mut p = Matrix3x4::zeros();
    p.fixed_view_mut::<3, 3>(0, 0).copy_from(&(Matrix3::from_row_slice(k) * 0.7));
    p[(2, 2)] = 1.0;
    (r, p)
}

#[test]
fn project_matches_opencv() {
    for case in &CASES {
        let camera = Camera::from_camera_info(case.model, case.d, &case.k, case.size.0, case.size.1).unwrap();
        for ([x, y, z], [u, v]) in case.projections {
            let px = camera.project(&Point3::new(x, y, z)).unwrap();
            assert!((px.x - u).abs() < 1e-9 && (px.y - v).abs() < 1e-9, "{}: {px} vs ({u}, {v})", case.model);
        }
    }
}

#[test]
fn rectify_map_matches_opencv() {
    for case in &CASES {
        let camera = Camera::from_camera_info(case.model, case.d, &case.k, case.size.0, case.size.1).unwrap();
        let (r, p) = rectification(&case.k);
        let (map_x, map_y) = rectify_map(&camera, &r, &p, case.size.0, case.size.1).unwrap();
        for ([u, v], [mx, my]) in case.map {
            let i = v * case.size.0 as usize + u;
            // f32 maps: a few ulps at these magnitudes.
            assert!((map_x[i] - mx).abs() < 1e-3 && (map_y[i] - my).abs() < 1e-3, "{}: ({u}, {v}) -> ({}, {}) vs ({mx}, {my})", case.model, map_x[i], map_y[i]);
        }
    }
}
