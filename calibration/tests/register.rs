//! Depth registration on a rendered scene: a wall with a box in front of it, seen by a
//! low-resolution distorted depth camera beside a higher-resolution colour camera. Both images are
//! ray-cast independently; registering the depth image must give the colour camera's own view.
use calibration::{Camera, DepthRegistration, Extrinsics};
use nalgebra::{Point2, Point3, Vector3};

/// Scene in the colour camera's frame: a tilted wall, and a square board at 1.4 m.
fn cast(origin: &Point3<f64>, dir: &Vector3<f64>) -> Option<(f64, bool)> {
    let board = {
        let t = (1.4 - origin.z) / dir.z;
        let p = origin + dir * t;
        (t > 0.0 && p.x.abs() < 0.25 && p.y.abs() < 0.2).then_some(t)
    };
    // Wall: 0.15 x + z = 3.
    let normal = Vector3::new(0.15, 0.0, 1.0);
    let wall = (3.0 - normal.dot(&origin.coords)) / normal.dot(dir);
    match board {
        Some(t) => Some((t, true)),
        None => (wall > 0.0).then_some((wall, false)),
    }
}

fn color_camera() -> Camera {
    let k = [520.0, 0.0, 321.0, 0.0, 518.0, 238.5, 0.0, 0.0, 1.0];
    Camera::from_camera_info("plumb_bob", &[0.08, -0.15, 2e-4, -1e-4, 0.0], &k, 640, 480).unwrap()
}

fn depth_camera() -> Camera {
    let k = [285.0, 0.0, 158.0, 0.0, 286.0, 121.0, 0.0, 0.0, 1.0];
    Camera::from_camera_info("plumb_bob", &[-0.12, 0.03, 0.0, 0.0, 0.0], &k, 320, 240).unwrap()
}

#[test]
fn registered_depth_is_what_the_colour_camera_sees_and_the_board_occludes_the_wall() {
    let depth_to_color = Extrinsics::from_xyz_rpy([0.05, -0.004, 0.01], [0.01, -0.015, 0.02]).unwrap();
    let (depth_cam, color_cam) = (depth_camera(), color_camera());
    // Depth image: z along the depth camera's axis of what its rays hit.
    let origin = depth_to_color.transform(&Point3::origin());
    let mut depth = vec![0.0f32; 320 * 240];
    for v in 0..240 {
        for u in 0..320 {
            let ray = depth_cam.unproject(&Point2::new(u as f64, v as f64)).unwrap().into_inner();
            let dir = depth_to_color.isometry.rotation * ray;
            if let Some((t, _)) = cast(&origin, &dir) {
                depth[v * 320 + u] = (t * ray.z) as f32;
            }
        }
    }
    depth[100 * 320 + 100] = f32::NAN; // invalid measurements are skipped, not drawn
    let registration = DepthRegistration::new(&depth_cam, &color_cam, depth_to_color);
    let got = registration.register(&depth).unwrap();
    assert_eq!(got.len(), 640 * 480);

    let (mut checked, mut covered, mut board_pixels) = (0, 0, 0);
    for y in 0..480 {
        for x in 0..640 {
            let ray = color_cam.unproject(&Point2::new(x as f64, y as f64)).unwrap().into_inner();
            let Some((t, on_board)) = cast(&Point3::origin(), &ray) else { continue };
            // Pixels near the board's outline mix the two surfaces; the depth camera does not
            // see the wall just beside the board (its shadow): skip both.
            let near_edge = [(-3.0, 0.0), (3.0, 0.0), (0.0, -3.0), (0.0, 3.0)].iter().any(|(dx, dy)| {
                let r = color_cam.unproject(&Point2::new(x as f64 + dx, y as f64 + dy)).unwrap().into_inner();
                cast(&Point3::origin(), &r).map(|(_, b)| b) != Some(on_board)
            });
            // Only what the depth camera sees: inside its image, not hidden behind the board.
            let point = Point3::from(ray * t);
            let seen_by_depth = depth_cam.project(&depth_to_color.inverse().transform(&point)).is_some_and(|px| {
                (0.0..319.0).contains(&px.x) && (0.0..239.0).contains(&px.y)
            }) && cast(&origin, &(point - origin).normalize()).is_some_and(|(s, _)| s > (point - origin).norm() - 1e-6);
            if near_edge || !seen_by_depth {
                continue;
            }
            checked += 1;
            let want = t * ray.z;
            let g = got[y * 640 + x];
            if g.is_nan() {
                continue;
            }
            covered += 1;
            board_pixels += on_board as usize;
            // Each colour pixel takes the depth of the depth pixel covering it: off by at most
            // the wall's slope across one depth pixel.
            assert!(((g as f64 - want) / want).abs() < 4e-3, "({x}, {y}) on board {on_board}: {g} vs {want}");
        }
    }
    assert!(board_pixels > 20_000, "{board_pixels} board pixels");
    assert!(covered as f64 > 0.999 * checked as f64, "{covered} of {checked} pixels have depth");
}

#[test]
fn same_camera_and_identity_is_the_identity_and_sizes_are_checked() {
    let cam = depth_camera();
    let registration = DepthRegistration::new(&cam, &cam, Extrinsics::identity());
    let depth: Vec<f32> = (0..320 * 240).map(|i| if i % 13 == 0 { 0.0 } else { 0.5 + (i % 1000) as f32 * 1e-3 }).collect();
    let got = registration.register(&depth).unwrap();
    for (i, (&g, &d)) in got.iter().zip(&depth).enumerate() {
        if d == 0.0 {
            assert!(g.is_nan(), "pixel {i}: no measurement must stay NaN, got {g}");
        } else {
            assert_eq!(g, d, "pixel {i}");
        }
    }
    let e = registration.register(&depth[1..]).unwrap_err().to_string();
    assert!(e.contains("depth") && e.contains("320 x 240"), "{e}");
}

