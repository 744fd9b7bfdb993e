//! The ground plane in the camera optical frame (x right, y down, z forward): from a known
//! mounting (height, pitch, roll) or fitted to a point cloud with RANSAC, and intersected with
//! pixel rays to give metric positions of things standing on the ground without a depth sensor.
use nalgebra::{Matrix3, Point3, SymmetricEigen, Unit, Vector3};

use crate::CalibrationError;

/// The plane `normal · p + offset = 0` in the camera frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroundPlane {
    /// Unit normal pointing from the ground towards the camera's side ("up").
    pub normal: Unit<Vector3<f64>>,
    /// Signed distance of the camera (the origin) from the plane along `normal`: the camera
    /// height when the camera is above the ground.
    pub offset: f64,
}

const RANSAC: &str = "ground plane RANSAC";

impl GroundPlane {
    /// A plane from any non-zero normal (normalized here) and offset.
    pub fn new(normal: Vector3<f64>, offset: f64) -> Result<Self, CalibrationError> {
        let norm = normal.norm();
        if !(norm.is_finite() && norm > 0.0) {
            return Err(CalibrationError::invalid("normal", format!("{normal:?}"), "must be finite and non-zero"));
        }
        if !offset.is_finite() {
            return Err(CalibrationError::invalid("offset", offset, "must be finite"));
        }
        Ok(GroundPlane { normal: Unit::new_unchecked(normal / norm), offset })
    }

    /// Flat ground under a camera mounted `height_m` above it, pitched down by `pitch_rad`
    /// (0 = optical axis horizontal, π/2 = looking straight down) and rolled by `roll_rad`
    /// about the optical axis (positive = the image's right side, +x, tilted down).
    pub fn from_extrinsics(height_m: f64, pitch_rad: f64, roll_rad: f64) -> Result<Self, CalibrationError> {
        if !(height_m.is_finite() && height_m > 0.0) {
            return Err(CalibrationError::invalid("height_m", height_m, "camera height above the ground must be finite and > 0"));
        }
        for (field, v) in [("pitch_rad", pitch_rad), ("roll_rad", roll_rad)] {
            if !v.is_finite() {
                return Err(CalibrationError::invalid(field, v, "angle must be finite"));
            }
        }
        // World up in the camera frame: (0, -1, 0) for a level camera; pitching down turns it
        // towards -z, rolling moves its -y part into -x.
        let (sp, cp) = pitch_rad.sin_cos();
        let (sr, cr) = roll_rad.sin_cos();
        let up = Vector3::new(-sr * cp, -cr * cp, -sp);
        Ok(GroundPlane { normal: Unit::new_normalize(up), offset: height_m })
    }

    /// The ground under a camera whose optical frame has pose `camera_in_ground_frame` in a
    /// frame whose z = 0 plane is the ground and z points up (ROS `base_footprint`), as a URDF
    /// or a tf lookup gives it. The camera must be above the ground.
    pub fn from_camera_pose(camera_in_ground_frame: &crate::Extrinsics) -> Result<Self, CalibrationError> {
        let iso = &camera_in_ground_frame.isometry;
        let height = iso.translation.vector.z;
        if !(height.is_finite() && height > 0.0) {
            return Err(CalibrationError::invalid("camera_pose z", height, "the camera must be above the ground (z > 0)"));
        }
        // Ground frame up, seen from the camera: R^T e_z.
        let up = iso.rotation.inverse() * Vector3::z();
        GroundPlane::new(up, height)
    }

    /// Camera height, pitch and roll over this plane: the inverse of
    /// [`GroundPlane::from_extrinsics`] (pitch and roll in -π/2..=π/2).
    pub fn mounting(&self) -> [f64; 3] {
        let n = self.normal;
        let pitch = (-n.z).clamp(-1.0, 1.0).asin();
        let roll = (-n.x).atan2(-n.y);
        [self.offset, pitch, roll]
    }

    /// Signed distance of a point from the plane, positive on the camera's side.
    pub fn signed_distance(&self, p: &Point3<f64>) -> f64 {
        self.normal.dot(&p.coords) + self.offset
    }

    /// The scale `t > 0` at which `t * ray` lies on the plane: the distance along a unit ray
    /// (`Camera::unproject`), or the depth z for a ray with z = 1. None when the ray misses the
    /// plane: parallel to it (a horizon ray), pointing away from it, or not finite.
    pub fn ray_intersection(&self, ray: &Vector3<f64>) -> Option<f64> {
        let along = self.normal.dot(ray);
        // Relative test so that nearly parallel rays give None instead of a huge, meaningless t
        // (written so that NaN also gives None).
        let crosses = along.abs() > 1e-12 * ray.norm();
        if !crosses {
            return None;
        }
        let t = -self.offset / along;
        (t.is_finite() && t > 0.0).then_some(t)
    }

    /// The point where the ray meets the plane; its z is the depth a depth camera would report.
    pub fn intersect(&self, ray: &Vector3<f64>) -> Option<Point3<f64>> {
        self.ray_intersection(ray).map(|t| Point3::from(ray * t))
    }

    /// Robust plane fit: `iterations` random 3-point samples (a deterministic function of
    /// `seed`), the one with the most points within `inlier_threshold` (metres) wins and is then
    /// refined by least squares on its inliers until the inlier set stops changing. The normal
    /// is oriented so that the camera (origin) is on its positive side.
    pub fn fit_ransac(
        points: &[Point3<f64>],
        iterations: usize,
        inlier_threshold: f64,
        seed: u64,
    ) -> Result<Self, CalibrationError> {
        let degenerate = |reason: String| CalibrationError::Degenerate { what: RANSAC, reason };
        if iterations == 0 {
            return Err(CalibrationError::invalid("iterations", 0, "need at least one RANSAC iteration"));
        }
        if !(inlier_threshold.is_finite() && inlier_threshold > 0.0) {
            return Err(CalibrationError::invalid("inlier_threshold", inlier_threshold, "must be finite and > 0"));
        }
        let n = points.len();
        if n < 3 {
            return Err(degenerate(format!("need at least 3 points, got {n}")));
        }
        if let Some((i, p)) = points.iter().enumerate().find(|(_, p)| !p.coords.iter().all(|v| v.is_finite())) {
            return Err(degenerate(format!("points[{i}] = ({}, {}, {}) is not finite", p.x, p.y, p.z)));
        }
        let all: Vec<usize> = (0..n).collect();
        let (_, spread) = principal_axes(points, &all);
        if spread[2] == 0.0 {
            return Err(degenerate(format!("all {n} points coincide")));
        }
        if spread[1] <= 1e-12 * spread[2] {
            return Err(degenerate(format!("all {n} points are collinear; a plane needs a second direction")));
        }

        let mut rng = XorShift64::new(seed);
        let mut best: Option<(usize, Vector3<f64>, f64)> = None;
        for _ in 0..iterations {
            let [a, b, c] = rng.three_distinct(n).map(|i| points[i]);
            let (ab, ac) = (b - a, c - a);
            let cross = ab.cross(&ac);
            let norm = cross.norm();
            let spans_plane = norm > 1e-12 * ab.norm() * ac.norm();
            if !spans_plane {
                continue;
            }
            let normal = cross / norm;
            let offset = -normal.dot(&a.coords);
            let count = inliers(points, &normal, offset, inlier_threshold).len();
            if best.is_none_or(|(most, _, _)| count > most) {
                best = Some((count, normal, offset));
            }
        }
        let Some((_, mut normal, mut offset)) = best else {
            return Err(degenerate(format!("no non-collinear 3-point sample in {iterations} iterations")));
        };

        let mut set = inliers(points, &normal, offset, inlier_threshold);
        for _ in 0..10 {
            let Some((refined_normal, refined_offset)) = least_squares(points, &set) else { break };
            (normal, offset) = (refined_normal, refined_offset);
            let next = inliers(points, &normal, offset, inlier_threshold);
            if next == set || next.len() < 3 {
                break;
            }
            set = next;
        }
        if offset < 0.0 {
            (normal, offset) = (-normal, -offset);
        }
        GroundPlane::new(normal, offset)
    }
}

fn inliers(points: &[Point3<f64>], normal: &Vector3<f64>, offset: f64, threshold: f64) -> Vec<usize> {
    (0..points.len()).filter(|&i| (normal.dot(&points[i].coords) + offset).abs() <= threshold).collect()
}

/// Centroid and covariance eigen-decomposition of the selected points: eigenvectors as columns
/// and eigenvalues, both sorted by increasing eigenvalue.
fn principal_axes(points: &[Point3<f64>], idx: &[usize]) -> (Matrix3<f64>, [f64; 3]) {
    let eig = SymmetricEigen::new(covariance(points, idx).1);
    let mut order = [0, 1, 2];
    order.sort_by(|&i, &j| eig.eigenvalues[i].total_cmp(&eig.eigenvalues[j]));
    let vectors = Matrix3::from_columns(&order.map(|i| eig.eigenvectors.column(i).into_owned()));
    (vectors, order.map(|i| eig.eigenvalues[i].max(0.0)))
}

fn covariance(points: &[Point3<f64>], idx: &[usize]) -> (Vector3<f64>, Matrix3<f64>) {
    let count = idx.len().max(1) as f64;
    let centroid = idx.iter().map(|&i| points[i].coords).sum::<Vector3<f64>>() / count;
    let cov = idx
        .iter()
        .map(|&i| {
            let d = points[i].coords - centroid;
            d * d.transpose()
        })
        .sum::<Matrix3<f64>>()
        / count;
    (centroid, cov)
}

/// Total least squares plane through the selected points: through their centroid, normal along
/// the direction of least spread. None when they do not span a plane.
fn least_squares(points: &[Point3<f64>], idx: &[usize]) -> Option<(Vector3<f64>, f64)> {
    if idx.len() < 3 {
        return None;
    }
    let (centroid, _) = covariance(points, idx);
    let (axes, spread) = principal_axes(points, idx);
    let spans_plane = spread[1] > 1e-12 * spread[2];
    if !spans_plane {
        return None;
    }
    let normal = axes.column(0).normalize();
    Some((normal, -normal.dot(&centroid)))
}

/// xorshift64* (Vigna 2016). Local rather than the `rand` crate to keep this crate
/// dependency-free; RANSAC needs reproducible, not cryptographic, randomness.
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // splitmix64 turns any seed, 0 included, into a well-mixed non-zero state.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift64(if z == 0 { 0x9E37_79B9_7F4A_7C15 } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (multiply-shift, bias below 2^-64 * n).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Three distinct indices in 0..n (n >= 3), uniformly.
    fn three_distinct(&mut self, n: usize) -> [usize; 3] {
        let i = self.below(n);
        let mut j = self.below(n - 1);
        if j >= i {
            j += 1;
        }
        let (lo, hi) = (i.min(j), i.max(j));
        let mut k = self.below(n - 2);
        if k >= lo {
            k += 1;
        }
        if k >= hi {
            k += 1;
        }
        [i, j, k]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_seeded_and_samples_distinct_indices() {
        let (mut a, mut b, mut c) = (XorShift64::new(0), XorShift64::new(0), XorShift64::new(1));
        let first = a.next_u64();
        assert_eq!(first, b.next_u64());
        assert_ne!(first, c.next_u64());
        let mut hits = [0usize; 4];
        for _ in 0..4000 {
            let [i, j, k] = a.three_distinct(4);
            assert!(i != j && j != k && i != k && i < 4 && j < 4 && k < 4);
            for idx in [i, j, k] {
                hits[idx] += 1;
            }
        }
        // Each index is in 3 of the 4 possible triples: 3000 expected.
        assert!(hits.iter().all(|&h| (2800..3200).contains(&h)), "{hits:?}");
    }
}
