//! Depth registration: a depth image from its own camera redrawn as the z-depth the colour camera
//! would see, so depth lines up with the colour image (and its segmentation) pixel for pixel.
use nalgebra::{Point3, Vector3};

use crate::{CalibrationError, Camera, Extrinsics, PixelRays};

/// Registers depth images from one depth camera to one colour camera. Built once per pair of
/// calibrations: it holds, for every depth pixel, its viewing ray turned into the colour frame
/// and the shape of its footprint in the colour image.
#[derive(Debug, Clone)]
pub struct DepthRegistration {
    /// Per depth pixel: the centre ray (z = 1 in the depth frame) rotated into the colour frame,
    /// and the footprint's corner offsets from the centre's projection, in colour pixels, for a
    /// point seen at the depth camera's own distance; None where a ray has no projection.
    pixels: Vec<Option<Footprint>>,
    depth_size: (usize, usize),
    color: Camera,
    translation: Vector3<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Footprint {
    ray: Vector3<f64>,
    lo: [f64; 2],
    hi: [f64; 2],
}

/// Footprints are widened by this fraction so that the first-order size model (see
/// [`DepthRegistration::register`]) leaves no seams between neighbours.
const FOOTPRINT_MARGIN: f64 = 0.05;

impl DepthRegistration {
    /// `depth_to_color` is the pose of the depth camera's optical frame in the colour camera's:
    /// it maps depth-frame points to colour-frame points.
    pub fn new(depth_camera: &Camera, color_camera: &Camera, depth_to_color: Extrinsics) -> Self {
        let (dw, dh) = (depth_camera.width() as usize, depth_camera.height() as usize);
        let (centres, corners) = (PixelRays::centres(depth_camera), PixelRays::corners(depth_camera));
        let rotation = depth_to_color.isometry.rotation;
        // Directions only (the translation does not change a pixel's angular size).
        let project = |ray: Vector3<f64>| color_camera.project(&Point3::from(rotation * ray));
        let mut pixels = Vec::with_capacity(dw * dh);
        for v in 0..dh {
            for u in 0..dw {
                let footprint = centres.at(u, v).and_then(|ray| {
                    let centre = project(ray)?;
                    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
                    for (du, dv) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        let corner = project(corners.at(u + du, v + dv)?)? - centre;
                        lo = [lo[0].min(corner.x), lo[1].min(corner.y)];
                        hi = [hi[0].max(corner.x), hi[1].max(corner.y)];
                    }
                    let widen = |x: f64| x * (1.0 + FOOTPRINT_MARGIN);
                    Some(Footprint { ray: rotation * ray, lo: lo.map(widen), hi: hi.map(widen) })
                });
                pixels.push(footprint);
            }
        }
        DepthRegistration { pixels, depth_size: (dw, dh), color: *color_camera, translation: depth_to_color.isometry.translation.vector }
    }

    /// Width and height the depth images must have.
    pub fn depth_size(&self) -> (usize, usize) {
        self.depth_size
    }

    /// Width and height of the registered output.
    pub fn color_size(&self) -> (usize, usize) {
        (self.color.width() as usize, self.color.height() as usize)
    }

    /// `metres` (row-major, z-depth along the depth camera's axis; NaN, inf or <= 0 = no
    /// measurement) as z-depth along the colour camera's axis, colour-sized, NaN where nothing
    /// lands. Each depth pixel covers the colour pixels whose centres fall inside its footprint
    /// (at least the one under its centre), so a lower-resolution depth camera leaves no holes;
    /// where several land on one colour pixel the nearest wins, so a background seen by the
    /// depth camera beside an object never shows through that object.
    ///
    /// The footprint is the pixel's angular footprint scaled by (depth-frame z) / (colour-frame
    /// z): exact for a pure rotation, first-order for the small baselines of RGB-D sensors.
    pub fn register(&self, metres: &[f32]) -> Result<Vec<f32>, CalibrationError> {
        let (dw, dh) = self.depth_size;
        if metres.len() != dw * dh {
            return Err(CalibrationError::Count { field: "depth", got: metres.len(), expected: format!("{dw} x {dh} = {}", dw * dh) });
        }
        let (cw, ch) = self.color_size();
        let mut out = vec![f32::INFINITY; cw * ch];
        for (&z, footprint) in metres.iter().zip(&self.pixels) {
            let Some(Footprint { ray, lo, hi }) = footprint else { continue };
            if !(z.is_finite() && z > 0.0) {
                continue;
            }
            let z = z as f64;
            let p = Point3::from(ray * z + self.translation);
            let Some(centre) = self.color.project(&p) else { continue };
            let scale = z / p.z;
            let (x0, x1) = covered(centre.x + lo[0] * scale, centre.x + hi[0] * scale, cw);
            let (y0, y1) = covered(centre.y + lo[1] * scale, centre.y + hi[1] * scale, ch);
            let depth = p.z as f32;
            for y in y0..y1 {
                for cell in &mut out[y * cw + x0..y * cw + x1] {
                    *cell = cell.min(depth);
                }
            }
        }
        for d in &mut out {
            if d.is_infinite() {
                *d = f32::NAN;
            }
        }
        Ok(out)
    }
}

/// The pixel indices in `0..size` whose centres lie between two footprint bounds,
/// or the one nearest their middle when the footprint is narrower than a pixel; empty when it
/// lies outside the image.
fn covered(lo: f64, hi: f64, size: usize) -> (usize, usize) {
    let (mut first, mut last) = (lo.ceil(), hi.floor());
    if first > last {
        first = ((lo + hi) / 2.0).round();
        last = first;
    }
    let first = first.max(0.0);
    let end = (last + 1.0).min(size as f64);
    if end <= first {
        return (0, 0);
    }
    (first as usize, end as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprints_cover_the_centres_inside_or_the_nearest_one() {
        assert_eq!(covered(2.5, 3.5, 10), (3, 4));
        assert_eq!(covered(2.4, 4.6, 10), (3, 5));
        // Narrower than a pixel with no centre inside: the pixel under its middle.
        assert_eq!(covered(3.1, 3.4, 10), (3, 4));
        // Clipped at the borders, nothing when outside.
        assert_eq!(covered(-3.0, 1.2, 10), (0, 2));
        assert_eq!(covered(8.6, 12.0, 10), (9, 10));
        assert_eq!(covered(10.6, 12.0, 10), (0, 0));
        assert_eq!(covered(-4.0, -0.6, 10), (0, 0));
    }
}
