//! Depth from one calibrated camera over flat ground: pixels of ground labels take the depth where
//! their ray meets the ground plane; pixels of other things take the depth of the ground where
//! their column meets it (the obstacle's contact point), with lower confidence.
use crate::{CalibrationError, GroundPlane, PixelRays};

/// What a pixel's label says about its depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Flat ground (road, grass, crop row...): the ray meets the plane.
    Ground,
    /// Something standing on the ground: depth of the ground just below it in the image.
    Obstacle,
    /// Below the unknown threshold: no depth, but an obstacle above still reaches the ground
    /// through it.
    Unknown,
    /// Never has depth (sky): no depth, and nothing above it is attached to the ground below.
    NoDepth,
}

/// Confidence of a depth read off the obstacle's ground contact rather than its own ray.
pub const CONTACT_CONFIDENCE: f32 = 0.5;

/// Per pixel: z-depth in metres (NaN where there is none) and how much to trust it (1 on
/// ground, [`CONTACT_CONFIDENCE`] on obstacles, 0 where there is no depth).
#[derive(Debug, Clone, PartialEq)]
pub struct GroundDepth {
    pub depth: Vec<f32>,
    pub confidence: Vec<f32>,
}

/// Depth of every pixel of an image whose surfaces are given row by row, with the rays of its
/// pixel centres ([`PixelRays::centres`] of the camera, distortion included).
pub fn ground_depth(rays: &PixelRays, plane: &GroundPlane, surfaces: &[Surface]) -> Result<GroundDepth, CalibrationError> {
    let (w, h) = rays.size();
    if surfaces.len() != w * h {
        return Err(CalibrationError::Count { field: "surfaces", got: surfaces.len(), expected: format!("{w} x {h} = {}", w * h) });
    }
    let mut depth = vec![f32::NAN; w * h];
    let mut confidence = vec![0.0f32; w * h];
    // z-depth of the ground along the ray through (x, y): the plane scale of a ray with z = 1.
    let ground_z = |x: usize, y: usize| -> Option<f64> {
        let ray = rays.at(x, y)?;
        plane.ray_intersection(&ray).filter(|z| *z > 0.0)
    };
    for x in 0..w {
        // Walking up each column, the ground depth just below the current obstacle.
        let mut contact: Option<f64> = None;
        for y in (0..h).rev() {
            let i = y * w + x;
            let (d, c) = match surfaces[i] {
                Surface::Ground => {
                    contact = ground_z(x, y);
                    (contact, 1.0)
                }
                Surface::Obstacle => (contact, CONTACT_CONFIDENCE),
                Surface::Unknown => (None, 0.0),
                Surface::NoDepth => {
                    contact = None;
                    (None, 0.0)
                }
            };
            if let Some(d) = d {
                depth[i] = d as f32;
                confidence[i] = c;
            }
        }
    }
    Ok(GroundDepth { depth, confidence })
}

#[cfg(test)]
mod tests {
    use nalgebra::{Matrix3, Point2, Rotation3, Vector3};

    use super::*;
    use crate::{Camera, PinholeCamera};

    fn camera() -> PinholeCamera {
        PinholeCamera::new(420.0, 410.0, 322.5, 236.0, 640, 480).unwrap()
    }

    fn rays() -> PixelRays {
        PixelRays::centres(&Camera::from(camera()))
    }

    /// Camera-to-world rotation built independently of `GroundPlane::from_extrinsics`: world x
    /// forward, y left, z up; pitch down about world y, roll about the optical axis (+x down).
    fn camera_to_world(pitch: f64, roll: f64) -> Matrix3<f64> {
        let optical_to_world = Matrix3::new(0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0);
        let pitch_down = Rotation3::from_axis_angle(&Vector3::y_axis(), pitch).into_inner();
        let roll_optical = Rotation3::from_axis_angle(&Vector3::z_axis(), roll).into_inner();
        pitch_down * optical_to_world * roll_optical
    }

    #[test]
    fn ground_pixels_get_the_depth_of_the_rendered_scene_within_a_millionth() {
        let (height, pitch, roll) = (1.35, 0.28, 0.04);
        let cam = camera();
        let plane = GroundPlane::from_extrinsics(height, pitch, roll).unwrap();
        let r = camera_to_world(pitch, roll);
        let out = ground_depth(&rays(), &plane, &vec![Surface::Ground; 640 * 480]).unwrap();
        let mut checked = 0;
        for y in 0..480 {
            for x in 0..640 {
                // Render: the world ray from the camera centre (0, 0, height) hits z = 0 at t.
                let ray = cam.unproject(&Point2::new(x as f64, y as f64));
                let world = r * ray.into_inner();
                let got = out.depth[y * 640 + x];
                if world.z >= -1e-9 {
                    assert!(got.is_nan(), "pixel ({x}, {y}) above the horizon got {got}");
                    continue;
                }
                let want = (height / -world.z) * ray.z;
                assert!(((got as f64 - want) / want).abs() < 1e-6, "pixel ({x}, {y}): {got} vs {want}");
                assert_eq!(out.confidence[y * 640 + x], 1.0);
                checked += 1;
            }
        }
        assert!(checked > 100_000, "only {checked} ground pixels");
    }

    #[test]
    fn with_lens_distortion_every_ground_depth_projects_back_onto_its_pixel_and_the_ground() {
        let (height, pitch, roll) = (0.9, 0.35, -0.03);
        let k = [410.0, 0.0, 318.0, 0.0, 405.0, 242.0, 0.0, 0.0, 1.0];
        let camera = Camera::from_camera_info("plumb_bob", &[-0.3, 0.09, 4e-4, -3e-4, -0.01], &k, 640, 480).unwrap();
        let plane = GroundPlane::from_extrinsics(height, pitch, roll).unwrap();
        let r = camera_to_world(pitch, roll);
        let out = ground_depth(&PixelRays::centres(&camera), &plane, &vec![Surface::Ground; 640 * 480]).unwrap();
        let mut checked = 0;
        for y in (0..480).step_by(3) {
            for x in (0..640).step_by(3) {
                let z = out.depth[y * 640 + x];
                if z.is_nan() {
                    continue;
                }
                // The forward (closed-form) model, not the iterative inverse used to get there.
                let ray = camera.unproject(&Point2::new(x as f64, y as f64)).unwrap().into_inner();
                let p = ray * (z as f64 / ray.z);
                let px = camera.project(&p.into()).unwrap();
                assert!((px - Point2::new(x as f64, y as f64)).norm() < 1e-3, "({x}, {y}) -> {px}");
                let world_height = height + (r * p).z;
                assert!(world_height.abs() < 1e-5 * z as f64, "({x}, {y}) at {z} m is {world_height} m off the ground");
                checked += 1;
            }
        }
        assert!(checked > 15_000, "only {checked} ground pixels");
    }

    #[test]
    fn obstacles_take_their_ground_contact_depth_and_sky_breaks_the_column() {
        let plane = GroundPlane::from_extrinsics(1.0, 0.3, 0.0).unwrap();
        let mut surfaces = vec![Surface::Ground; 640 * 480];
        // Column 100: ground below row 350, unknown at 349, obstacle 300..349, sky above 300.
        for y in 0..350 {
            surfaces[y * 640 + 100] = match y {
                349 => Surface::Unknown,
                300..=348 => Surface::Obstacle,
                _ => Surface::NoDepth,
            };
        }
        let out = ground_depth(&rays(), &plane, &surfaces).unwrap();
        let contact = out.depth[350 * 640 + 100];
        assert!(contact.is_finite() && contact > 1.0);
        assert!(out.depth[349 * 640 + 100].is_nan(), "unknown pixels have no depth");
        for y in 300..349 {
            assert_eq!(out.depth[y * 640 + 100], contact, "row {y}");
            assert_eq!(out.confidence[y * 640 + 100], CONTACT_CONFIDENCE);
        }
        assert!(out.depth[299 * 640 + 100].is_nan() && out.confidence[299 * 640 + 100] == 0.0);
        // Unknown depth is NaN, never 0.
        assert!(out.depth.iter().all(|d| d.is_nan() || *d > 0.0));
    }

    #[test]
    fn a_mask_of_another_size_is_refused_by_name() {
        let plane = GroundPlane::from_extrinsics(1.0, 0.3, 0.0).unwrap();
        let e = ground_depth(&rays(), &plane, &[Surface::Ground; 10]).unwrap_err();
        assert!(e.to_string().contains("surfaces") && e.to_string().contains("640 x 480"), "{e}");
    }
}
