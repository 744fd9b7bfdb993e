//! Camera geometry for ovseg: pure nalgebra, no ROS, no async, so it can be tested and reused
//! without a ROS installation.
//!
//! - [`PinholeCamera`]: the ideal pinhole of `sensor_msgs/CameraInfo`'s K (what the node uses).
//! - [`Camera`] with [`Distortion`]: the ROS `distortion_model`s (plumb_bob,
//!   rational_polynomial, equidistant) with OpenCV's formulas; project / unproject / distort /
//!   undistort, refusing points outside the model's invertible region.
//! - [`CameraInfoYaml`]: camera_info_manager's YAML files, read and written exactly.
//! - [`rectify_map`], [`remap_gray8`], [`remap_rgb8`]: undistortion and rectification of images.
//! - [`GroundPlane`]: flat ground from mounting extrinsics or a RANSAC fit, and ray intersection;
//!   [`fit_ground_to_depth`] and [`fill_from_plane`]: the plane from labelled depth, and its holes.
//! - [`ground_depth`]: monocular depth from a label mask over flat ground.
//! - [`Extrinsics`]: rigid transforms between sensor frames from xyz + rpy, a quaternion, a 4x4
//!   matrix or YAML; [`DepthRegistration`]: a depth camera's image redrawn in the colour camera.
//! - [`PixelRays`]: every pixel's viewing ray, computed once per calibration.
//!
//! ```
//! use calibration::{Camera, GroundPlane};
//! use nalgebra::Point2;
//!
//! let k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0];
//! let camera = Camera::from_camera_info("plumb_bob", &[-0.28, 0.07, 1e-4, -2e-4, 0.0], &k, 640, 480)?;
//! let ground = GroundPlane::from_extrinsics(1.2, 0.3, 0.0)?;
//! let ray = camera.unproject(&Point2::new(320.0, 400.0)).ok_or("outside the lens model")?;
//! let metres_along_ray = ground.ray_intersection(&ray).ok_or("above the horizon")?;
//! assert!(metres_along_ray > 1.2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
mod camera;
mod camera_info;
mod error;
mod extrinsics;
mod ground;
mod ground_fit;
mod models;
mod monocular;
mod pinhole;
mod rays;
mod rectify;
mod register;
mod stereo;

pub use camera::{Camera, Intrinsics};
pub use camera_info::CameraInfoYaml;
pub use error::CalibrationError;
pub use extrinsics::Extrinsics;
pub use ground::GroundPlane;
pub use ground_fit::{DepthGroundFit, MAX_FIT_POINTS, MIN_FIT_POINTS, fill_from_plane, fit_ground_to_depth};
pub use models::{ACCEPTED_MODELS, Distortion};
pub use monocular::{CONTACT_CONFIDENCE, GroundDepth, Surface, ground_depth};
pub use pinhole::PinholeCamera;
pub use rays::PixelRays;
pub use rectify::{INVALID_SOURCE, rectify_map, remap_gray8, remap_rgb8};
pub use register::DepthRegistration;
pub use stereo::{StereoFields, StereoGeometry};
