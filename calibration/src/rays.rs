//! The viewing ray of every pixel of a camera, computed once per calibration: undistortion is
//! iterative, and a node asks for the same rays every frame.
use nalgebra::{Point2, Vector3};

use crate::Camera;

/// Rays with z = 1 (the (x/z, y/z) of each grid point) on a regular grid of pixel positions:
/// pixel centres, or pixel corners for footprints.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelRays {
    width: usize,
    height: usize,
    /// Grid point (x, y) is pixel position (x + origin, y + origin).
    origin: f64,
    /// Row-major; NaN where the camera model cannot be inverted or the ray points backwards.
    rays: Vec<[f64; 2]>,
}

impl PixelRays {
    /// One ray per pixel centre: `width x height` grid points at (x, y).
    pub fn centres(camera: &Camera) -> Self {
        Self::grid(camera, camera.width() as usize, camera.height() as usize, 0.0)
    }

    /// One ray per pixel corner: `(width + 1) x (height + 1)` grid points at (x - 0.5, y - 0.5),
    /// so pixel (x, y) spans corners (x, y) to (x + 1, y + 1).
    pub fn corners(camera: &Camera) -> Self {
        Self::grid(camera, camera.width() as usize + 1, camera.height() as usize + 1, -0.5)
    }

    fn grid(camera: &Camera, width: usize, height: usize, origin: f64) -> Self {
        let mut rays = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                let px = Point2::new(x as f64 + origin, y as f64 + origin);
                let ray = camera.unproject(&px).map(|r| r.into_inner()).filter(|r| r.z > 1e-12);
                rays.push(ray.map_or([f64::NAN; 2], |r| [r.x / r.z, r.y / r.z]));
            }
        }
        PixelRays { width, height, origin, rays }
    }

    /// Grid width and height.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The pixel position of grid point (0, 0): 0 for centres, -0.5 for corners.
    pub fn origin(&self) -> f64 {
        self.origin
    }

    /// The ray with z = 1 through grid point (x, y), so `depth * ray` is the 3-D point of a
    /// z-depth; None outside the grid or where the model has no ray.
    pub fn at(&self, x: usize, y: usize) -> Option<Vector3<f64>> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let [rx, ry] = self.rays[y * self.width + x];
        rx.is_finite().then(|| Vector3::new(rx, ry, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Distortion, Intrinsics};

    #[test]
    fn centre_and_corner_rays_reproject_onto_their_pixels() {
        let intrinsics = Intrinsics { fx: 300.0, fy: 310.0, cx: 80.5, cy: 60.0 };
        let distortion = Distortion::PlumbBob { k1: -0.2, k2: 0.05, p1: 1e-3, p2: -5e-4, k3: 0.0 };
        let camera = Camera::new(intrinsics, distortion, 160, 120).unwrap();
        for (rays, offset) in [(PixelRays::centres(&camera), 0.0), (PixelRays::corners(&camera), -0.5)] {
            let (w, h) = rays.size();
            assert_eq!(rays.origin(), offset);
            for (x, y) in [(0, 0), (w - 1, h - 1), (w / 2, 7), (3, h - 2)] {
                let ray = rays.at(x, y).unwrap();
                assert_eq!(ray.z, 1.0);
                let px = camera.project(&(ray * 2.5).into()).unwrap();
                assert!((px - Point2::new(x as f64 + offset, y as f64 + offset)).norm() < 1e-6, "({x}, {y}) -> {px}");
            }
            assert_eq!(rays.at(w, 0), None);
        }
    }
}
