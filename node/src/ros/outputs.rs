//! Output messages built from one segmented frame; shared by the live node and replay.
use calibration::{Camera, CalibrationError, PinholeCamera, PixelRays};
use engine::{LabelMap, LabelSet, MaskPixels};

use super::msgs::{CameraInfo, Header, Image, LabelInfo, PointCloud2, PointField, VisionClass};

/// The per-frame output topics (label_info and diagnostics are published on change / on a timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    Mask,
    MaskColor,
    Overlay,
    Confidence,
    Depth,
    Points,
}

impl Topic {
    pub const ALL: [Topic; 6] = [Topic::Mask, Topic::MaskColor, Topic::Overlay, Topic::Confidence, Topic::Depth, Topic::Points];

    /// Relative topic name (remappable).
    pub fn name(self) -> &'static str {
        match self {
            Topic::Mask => "mask",
            Topic::MaskColor => "mask_color",
            Topic::Overlay => "overlay",
            Topic::Confidence => "confidence",
            Topic::Depth => "depth",
            Topic::Points => "points",
        }
    }

    /// The parameter that switches it on or off.
    pub fn toggle(self) -> &'static str {
        match self {
            Topic::Mask => "publish_mask",
            Topic::MaskColor => "publish_mask_color",
            Topic::Overlay => "publish_overlay",
            Topic::Confidence => "publish_confidence",
            Topic::Depth => "publish_depth",
            Topic::Points => "publish_points",
        }
    }

    pub fn needs_depth(self) -> bool {
        matches!(self, Topic::Depth | Topic::Points)
    }
}

/// One output message, ready to publish or record.
#[derive(Debug, Clone)]
pub enum OutMsg {
    Image(Topic, Image),
    Points(PointCloud2),
}

impl OutMsg {
    pub fn topic(&self) -> Topic {
        match self {
            OutMsg::Image(t, _) => *t,
            OutMsg::Points(_) => Topic::Points,
        }
    }
}

fn image(header: &Header, width: u32, height: u32, encoding: &str, bytes_per_pixel: u32, data: Vec<u8>) -> Image {
    Image { header: header.clone(), height, width, encoding: encoding.into(), is_bigendian: 0, step: width * bytes_per_pixel, data }
}

/// Label ids: mono8 (unknown 255) up to 255 labels, else mono16 little-endian (unknown 65535).
pub fn mask(header: &Header, map: &LabelMap, num_labels: usize) -> Image {
    match map.mask_pixels(num_labels) {
        MaskPixels::Mono8(data) => image(header, map.width, map.height, "mono8", 1, data),
        MaskPixels::Mono16(ids) => {
            let data = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
            image(header, map.width, map.height, "mono16", 2, data)
        }
    }
}

/// `mask_color` or `overlay`, painted by the pipeline (see `engine::scoring::Scorer::paint`).
pub fn rgb8(header: &Header, map: &LabelMap, data: Vec<u8>) -> Image {
    image(header, map.width, map.height, "rgb8", 3, data)
}

/// Probability of the winning label per pixel.
pub fn confidence(header: &Header, map: &LabelMap) -> Image {
    image(header, map.width, map.height, "32FC1", 4, floats(&map.confidence))
}

/// Depth in metres (NaN = no measurement), aligned pixel for pixel with the mask.
pub fn depth(header: &Header, map: &LabelMap, metres: &[f32]) -> Image {
    image(header, map.width, map.height, "32FC1", 4, floats(metres))
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `info` as it describes the images actually published: the region of interest (when set)
/// cut out and binning applied, to the size and to K and P (principal point shifted by the
/// region's offset, then K and P divided by the binning), as ROS image_geometry reads them.
/// camera_info `width` x `height` stay the calibration's full size under this convention.
pub fn as_published(mut info: CameraInfo) -> CameraInfo {
    let roi = &info.roi;
    let (bx, by) = (info.binning_x.max(1), info.binning_y.max(1));
    let full_frame = roi.width == 0 || roi.height == 0;
    if full_frame && (bx, by) == (1, 1) {
        return info;
    }
    let (x0, y0) = if full_frame { (0.0, 0.0) } else { (roi.x_offset as f64, roi.y_offset as f64) };
    if !full_frame {
        (info.width, info.height) = (roi.width, roi.height);
    }
    (info.width, info.height) = (info.width / bx, info.height / by);
    let (sx, sy) = (bx as f64, by as f64);
    // K: fx 0 cx / 0 fy cy / 0 0 1. P: fx 0 cx Tx / 0 fy cy Ty / 0 0 1 0.
    info.k[2] -= x0;
    info.k[5] -= y0;
    info.p[2] -= x0 * info.p[10];
    info.p[6] -= y0 * info.p[10];
    for i in [0, 1, 2] {
        info.k[i] /= sx;
        info.k[3 + i] /= sy;
    }
    for i in [0, 1, 2, 3] {
        info.p[i] /= sx;
        info.p[4 + i] /= sy;
    }
    (info.binning_x, info.binning_y, info.roi) = (0, 0, Default::default());
    info
}

/// The pinhole model of rectified pixels. As in ROS image_geometry, rectified images follow P
/// (K and D describe the raw image); K is used when P is not filled in.
pub fn rectified_camera(info: &CameraInfo) -> Result<PinholeCamera, calibration::CalibrationError> {
    let p = &info.p;
    if !has_projection(info) {
        PinholeCamera::from_k(&info.k, info.width, info.height)
    } else {
        PinholeCamera::new(p[0], p[5], p[2], p[6], info.width, info.height)
    }
}

/// The camera model of an image described by `info`: the pinhole of P for a rectified image,
/// K with the distortion model `d` for a raw one.
pub fn image_camera(info: &CameraInfo, rectified: bool) -> Result<Camera, CalibrationError> {
    // Every pixel gets a ray: a size no image can have would only exhaust memory.
    const _: () = assert!(engine::frame::MAX_FRAME_SIDE == 16384, "the reason below gives the limit");
    for (field, value) in [("width", info.width), ("height", info.height)] {
        if value > engine::frame::MAX_FRAME_SIDE {
            let reason = "more than 16384, the largest image side the node takes";
            return Err(CalibrationError::Invalid { field, value: value.to_string(), reason });
        }
    }
    if rectified {
        rectified_camera(info).map(Camera::from)
    } else {
        Camera::from_camera_info(&info.distortion_model, &info.d, &info.k, info.width, info.height)
    }
}

/// Whether two camera_info messages describe the same calibration (stamps aside).
pub fn same_calibration(a: &CameraInfo, b: &CameraInfo) -> bool {
    (a.width, a.height, &a.distortion_model, &a.d, a.k, a.p) == (b.width, b.height, &b.distortion_model, &b.d, b.k, b.p)
}

/// Whether camera_info carries a rectified projection P (all zeros means unset).
fn has_projection(info: &CameraInfo) -> bool {
    info.p.iter().any(|&v| v != 0.0)
}

/// camera_info's rectified projection P (row-major 3x4), or [K | 0] when P is unset, as
/// [`rectified_camera`] reads it.
pub fn projection(info: &CameraInfo) -> [f64; 12] {
    if has_projection(info) {
        info.p
    } else {
        let k = &info.k;
        [k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0]
    }
}

/// Bytes per point: x, y, z (f32), label (u16, padded to 4), confidence (f32).
const POINT_STEP: u32 = 20;

/// Points in the camera frame (x right, y down, z forward) for every `stride`-th pixel with a
/// depth measurement, each with its label id (mask value) and confidence: the label's, times
/// the depth's own where it has one (monocular depth of obstacles is less certain).
pub fn points(
    header: &Header,
    map: &LabelMap,
    metres: &[f32],
    depth_confidence: Option<&[f32]>,
    rays: &PixelRays,
    stride: usize,
    num_labels: usize,
) -> PointCloud2 {
    let w = map.width as usize;
    let ids = map.mask_pixels(num_labels);
    let mut data = Vec::new();
    for y in (0..map.height as usize).step_by(stride.max(1)) {
        for x in (0..w).step_by(stride.max(1)) {
            let i = y * w + x;
            let z = metres[i];
            // Depth images hold z (distance along the optical axis): the point is z * (ray with z = 1).
            let Some(ray) = rays.at(x, y).filter(|_| z.is_finite()) else {
                continue;
            };
            let label = match &ids {
                MaskPixels::Mono8(m) => m[i] as u16,
                MaskPixels::Mono16(m) => m[i],
            };
            for v in [ray.x * z as f64, ray.y * z as f64, z as f64] {
                data.extend_from_slice(&(v as f32).to_le_bytes());
            }
            data.extend_from_slice(&label.to_le_bytes());
            data.extend_from_slice(&[0, 0]);
            let confidence = map.confidence[i] * depth_confidence.map_or(1.0, |c| c[i]);
            data.extend_from_slice(&confidence.to_le_bytes());
        }
    }
    let count = (data.len() / POINT_STEP as usize) as u32;
    let field = |name: &str, offset: u32, datatype: u8| PointField { name: name.into(), offset, datatype, count: 1 };
    PointCloud2 {
        header: header.clone(),
        height: 1,
        width: count,
        fields: vec![
            field("x", 0, PointField::FLOAT32),
            field("y", 4, PointField::FLOAT32),
            field("z", 8, PointField::FLOAT32),
            field("label", 12, PointField::UINT16),
            field("confidence", 16, PointField::FLOAT32),
        ],
        is_bigendian: false,
        point_step: POINT_STEP,
        row_step: POINT_STEP * count,
        data,
        is_dense: true,
    }
}

/// Label ids and names (the mask's legend); unknown is the id past the last label's range.
pub fn label_info(header: &Header, labels: &LabelSet, threshold: f32) -> LabelInfo {
    let mut class_map: Vec<VisionClass> =
        labels.names.iter().enumerate().map(|(i, n)| VisionClass { class_id: i as u16, class_name: n.clone() }).collect();
    let unknown_id = if labels.len() <= engine::post::MAX_LABELS_8BIT { 255 } else { engine::UNKNOWN };
    class_map.push(VisionClass { class_id: unknown_id, class_name: "unknown".into() });
    LabelInfo { header: header.clone(), class_map, threshold }
}

#[cfg(test)]
mod tests {
    use super::super::msgs::RegionOfInterest;
    use super::*;

    fn map() -> LabelMap {
        LabelMap { width: 2, height: 2, labels: vec![0, 1, engine::UNKNOWN, 1], confidence: vec![0.9, 0.8, 0.1, 0.7] }
    }

    #[test]
    fn binning_and_region_of_interest_describe_the_published_image() {
        let k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0];
        let p = [500.0, 0.0, 320.0, -50.0, 0.0, 510.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let full = CameraInfo { width: 640, height: 480, distortion_model: "plumb_bob".into(), d: vec![0.1, 0.0, 0.0, 0.0, 0.0], k, p, ..Default::default() };
        assert_eq!(as_published(full.clone()), full);
        let binned = as_published(CameraInfo { binning_x: 2, binning_y: 2, ..full.clone() });
        assert_eq!((binned.width, binned.height), (320, 240));
        assert_eq!(binned.k, [250.0, 0.0, 160.0, 0.0, 255.0, 120.0, 0.0, 0.0, 1.0]);
        assert_eq!(binned.p, [250.0, 0.0, 160.0, -25.0, 0.0, 255.0, 120.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let roi = RegionOfInterest { x_offset: 100, y_offset: 40, width: 200, height: 120, do_rectify: false };
        let cut = as_published(CameraInfo { roi: roi.clone(), binning_x: 2, ..full.clone() });
        assert_eq!((cut.width, cut.height), (100, 120));
        assert_eq!((cut.k[0], cut.k[2], cut.k[4], cut.k[5]), (250.0, 110.0, 510.0, 200.0));
        assert_eq!(cut.d, full.d);
        // The same ray either way: a full-frame pixel and its place in the cut-out, binned image.
        let (u, v) = (300.0, 100.0);
        let (ub, vb) = ((u - 100.0) / 2.0, v - 40.0);
        assert_eq!(((u - k[2]) / k[0], (v - k[5]) / k[4]), ((ub - cut.k[2]) / cut.k[0], (vb - cut.k[5]) / cut.k[4]));
    }

    #[test]
    fn a_camera_info_larger_than_any_image_is_refused_before_its_rays_are_made() {
        let k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0];
        let huge = CameraInfo { width: 200_000, height: 120, distortion_model: "plumb_bob".into(), d: vec![0.0; 5], k, ..Default::default() };
        let e = image_camera(&huge, false).unwrap_err().to_string();
        assert!(e.contains("width") && e.contains("200000"), "{e}");
    }

    #[test]
    fn mask_switches_to_mono16_past_255_labels() {
        let h = Header::default();
        let m = mask(&h, &map(), 2);
        assert_eq!((m.encoding.as_str(), m.step, m.data.clone()), ("mono8", 2, vec![0, 1, 255, 1]));
        let m = mask(&h, &map(), 300);
        assert_eq!((m.encoding.as_str(), m.step), ("mono16", 4));
        assert_eq!(&m.data[4..6], &[0xff, 0xff]);
    }

    #[test]
    fn rectified_pixels_follow_p_and_fall_back_to_k() {
        let mut info = CameraInfo { width: 640, height: 480, ..Default::default() };
        info.k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0];
        let c = rectified_camera(&info).unwrap();
        assert_eq!((c.fx, c.fy, c.cx, c.cy), (500.0, 510.0, 320.0, 240.0));
        info.p = [480.0, 0.0, 315.0, 0.0, 0.0, 480.0, 238.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let c = rectified_camera(&info).unwrap();
        assert_eq!((c.fx, c.fy, c.cx, c.cy), (480.0, 480.0, 315.0, 238.0));
        info.p[0] = -1.0;
        assert!(rectified_camera(&info).unwrap_err().to_string().contains("fx"));
    }

    #[test]
    fn raw_images_use_k_and_the_distortion_model_rectified_ones_p() {
        let mut info = CameraInfo { width: 640, height: 480, distortion_model: "plumb_bob".into(), ..Default::default() };
        info.d = vec![-0.2, 0.05, 1e-3, 0.0, 0.0];
        info.k = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0];
        info.p = [480.0, 0.0, 315.0, 0.0, 0.0, 480.0, 238.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let raw = image_camera(&info, false).unwrap();
        assert_eq!(raw.distortion(), calibration::Distortion::PlumbBob { k1: -0.2, k2: 0.05, p1: 1e-3, p2: 0.0, k3: 0.0 });
        assert_eq!(raw.intrinsics().fx, 500.0);
        let rectified = image_camera(&info, true).unwrap();
        assert_eq!((rectified.distortion(), rectified.intrinsics().fx), (calibration::Distortion::None, 480.0));
        info.distortion_model = "fisheye".into();
        let e = image_camera(&info, false).unwrap_err().to_string();
        assert!(e.contains("distortion_model") && e.contains("fisheye"), "{e}");
    }

    #[test]
    fn points_skip_holes_and_carry_label_and_confidence() {
        let rays = PixelRays::centres(&PinholeCamera::new(1.0, 1.0, 0.0, 0.0, 2, 2).unwrap().into());
        let metres = [2.0, f32::NAN, 1.0, 4.0];
        let cloud = points(&Header::default(), &map(), &metres, None, &rays, 1, 2);
        assert_eq!(cloud.width, 3);
        assert_eq!(cloud.data.len(), 60);
        let f = |i: usize, o: usize| f32::from_le_bytes(cloud.data[i * 20 + o..i * 20 + o + 4].try_into().unwrap());
        // pixel (1,1) at 4 m: x = y = 4 * (1 - 0) / 1
        assert_eq!((f(2, 0), f(2, 4), f(2, 8)), (4.0, 4.0, 4.0));
        assert_eq!(u16::from_le_bytes([cloud.data[2 * 20 + 12], cloud.data[2 * 20 + 13]]), 1);
        assert_eq!(f(2, 16), 0.7);
        // the unknown pixel keeps its mask value 255
        assert_eq!(u16::from_le_bytes([cloud.data[20 + 12], cloud.data[20 + 13]]), 255);
        // A depth confidence (monocular obstacle contact) scales the label's.
        let weighted = points(&Header::default(), &map(), &metres, Some(&[1.0, 0.0, 1.0, 0.5]), &rays, 1, 2);
        let g = |i: usize| f32::from_le_bytes(weighted.data[i * 20 + 16..i * 20 + 20].try_into().unwrap());
        assert_eq!(g(2), 0.7 * 0.5);
    }
}
