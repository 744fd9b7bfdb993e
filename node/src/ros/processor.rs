//! One frame's way from an `image` message to output messages, shared by the live node and
//! replay: decode, pick the depth image, segment, build what is wanted, keep latency stats.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use calibration::{DepthGroundFit, DepthRegistration, PixelRays, StereoFields, StereoGeometry, Surface};
use engine::stereo::{DisparityMatcher, GrayView, StereoParams};
use engine::scoring::{PaintRequest, Painted};
use engine::{Frame, LabelMap, LabelSet, Pipeline, PixelFormat, SegmentOptions};

use super::decode::{self, RejectCounter, Rejected};
use super::msgs::{CameraInfo, CompressedImage, DiagnosticStatus, Header, Image, KeyValue, LabelInfo, Time};
use super::outputs::{self, OutMsg, Topic};
use super::params::{DepthMode, OutputSettings, PoseParam, PoseSource};
use super::tf::{self, SharedTree};
use super::stats::Latencies;

/// A change made through parameters, applied between frames so a frame never mixes states.
pub enum Update {
    Labels(Arc<LabelSet>),
    Options(SegmentOptions),
    Output(Box<OutputSettings>),
    /// A new model or backend, with the labels encoded by its text encoder.
    Pipeline(Box<Pipeline>, Arc<LabelSet>),
}

/// Recent depth or right-camera images, matched to colour frames by stamp.
pub struct StampedImages {
    images: VecDeque<Image>,
}

const DEPTH_BUFFER: usize = 8;

impl StampedImages {
    pub fn new() -> Self {
        StampedImages { images: VecDeque::with_capacity(DEPTH_BUFFER) }
    }

    pub fn push(&mut self, image: Image) {
        if self.images.len() == DEPTH_BUFFER {
            self.images.pop_front();
        }
        self.images.push_back(image);
    }

    /// The depth image closest in time to `stamp`, if within `tolerance` seconds.
    pub fn closest(&self, stamp: Time, tolerance: f64) -> Option<&Image> {
        closest_in_time(&self.images, stamp).filter(|d| stamp_gap_ns(d, stamp) as f64 <= tolerance * 1e9)
    }
}

fn stamp_gap_ns(image: &Image, stamp: Time) -> u64 {
    (image.header.stamp.as_nanos() - stamp.as_nanos()).unsigned_abs()
}

/// The image whose stamp is nearest to `stamp`.
pub fn closest_in_time<'a>(images: impl IntoIterator<Item = &'a Image>, stamp: Time) -> Option<&'a Image> {
    images.into_iter().min_by_key(|d| stamp_gap_ns(d, stamp))
}

/// The colour image's pixel rays, kept until its calibration or `image_rectified` changes.
struct RaysCache {
    info: CameraInfo,
    rectified: bool,
    rays: Arc<PixelRays>,
}

/// The depth -> colour registration, kept until a calibration or the transform changes.
struct RegistrationCache {
    color: CameraInfo,
    depth: CameraInfo,
    rectified: bool,
    source: PoseSource,
    extrinsics: calibration::Extrinsics,
    registration: DepthRegistration,
}

/// The last ground plane fitted to depth (ground_fit), for /diagnostics.
struct GroundFit {
    fit: DepthGroundFit,
    filled: usize,
}

/// A colour frame as it arrived: raw, or compressed (image_transport's `compressed`).
pub enum InputImage {
    Raw(Image),
    Compressed(CompressedImage),
}

impl InputImage {
    pub fn stamp(&self) -> Time {
        match self {
            InputImage::Raw(image) => image.header.stamp,
            InputImage::Compressed(compressed) => compressed.header.stamp,
        }
    }

    /// As a depth image: raw as it is, compressed (compressedDepth, from `topic`) decoded.
    pub fn into_depth(self, topic: &str) -> Result<Image, Rejected> {
        match self {
            InputImage::Raw(image) => Ok(image),
            InputImage::Compressed(compressed) => decode::decompress_depth(compressed, topic),
        }
    }
}

/// What happened to one frame.
pub enum FrameOutcome {
    Published(Vec<OutMsg>),
    Skipped,
}

pub struct Processor {
    pipeline: Pipeline,
    labels: Arc<LabelSet>,
    settings: OutputSettings,
    camera_info: Option<CameraInfo>,
    rays: Option<RaysCache>,
    /// Depth images: `depth_registered`, or `depth/image` with depth_registration extrinsics.
    pub depth: StampedImages,
    depth_camera_info: Option<CameraInfo>,
    registration: Option<RegistrationCache>,
    ground: Option<GroundFit>,
    /// depth_mode ground: the plane and the parameters it came from (a pose file is read once).
    ground_plane: Option<(Option<PoseParam>, [f64; 3], calibration::GroundPlane)>,
    /// depth_mode stereo: right images, the right camera's info, and the matcher (kept across
    /// frames for its buffers).
    pub right: StampedImages,
    right_camera_info: Option<CameraInfo>,
    stereo: Option<Box<dyn DisparityMatcher>>,
    /// Set when GPU matching failed; the CPU matches from then on.
    stereo_fallback: Option<String>,
    /// Transforms from /tf_static and /tf (depth_registration tf, ground_frame).
    pub tf: SharedTree,
    pub rejects: RejectCounter,
    pub latency: Latencies,
    /// Set when labels or the threshold change, so the owner republishes `label_info`.
    label_info_due: bool,
    /// Whether camera_info describes the frame being processed (checked once per frame).
    camera_info_fits: bool,
    frames: u64,
    /// Frames that produced no output at all, and whether the latest one was such.
    frames_skipped: u64,
    last_skipped: bool,
    last_error: Option<String>,
}

impl Processor {
    pub fn new(pipeline: Pipeline, labels: Arc<LabelSet>, settings: OutputSettings) -> Self {
        Processor {
            pipeline,
            labels,
            settings,
            camera_info: None,
            rays: None,
            depth: StampedImages::new(),
            depth_camera_info: None,
            registration: None,
            ground: None,
            ground_plane: None,
            right: StampedImages::new(),
            right_camera_info: None,
            stereo: None,
            stereo_fallback: None,
            tf: SharedTree::default(),
            rejects: RejectCounter::default(),
            latency: Latencies::default(),
            label_info_due: true,
            camera_info_fits: true,
            frames: 0,
            frames_skipped: 0,
            last_skipped: false,
            last_error: None,
        }
    }

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Labels(labels) => {
                self.labels = labels;
                self.label_info_due = true;
            }
            Update::Options(options) => {
                // label_info carries the threshold.
                self.label_info_due |= options.unknown_threshold != self.pipeline.options().unknown_threshold;
                if let Err(e) = self.pipeline.set_options(options) {
                    // Values are checked before they get here; keep the old options if not.
                    tracing::error!("segmentation options refused: {e}");
                }
            }
            Update::Output(settings) => {
                if settings.backend != self.settings.backend {
                    // A new backend gets a new matcher (and another chance on the GPU).
                    (self.stereo, self.stereo_fallback) = (None, None);
                }
                self.settings = *settings;
            }
            Update::Pipeline(pipeline, labels) => {
                self.pipeline = *pipeline;
                self.labels = labels;
                self.label_info_due = true;
            }
        }
    }

    // Each camera_info is kept as it describes the published images (binning, region of interest).
    pub fn set_camera_info(&mut self, info: CameraInfo) {
        self.camera_info = Some(outputs::as_published(info));
    }

    pub fn set_depth_camera_info(&mut self, info: CameraInfo) {
        self.depth_camera_info = Some(outputs::as_published(info));
    }

    pub fn set_right_camera_info(&mut self, info: CameraInfo) {
        self.right_camera_info = Some(outputs::as_published(info));
    }

    /// Whether the input `mode` needs for a frame stamped `stamp` has arrived.
    pub fn has_depth_input(&self, stamp: Time) -> bool {
        let tolerance = self.settings.depth_sync_tolerance;
        match self.settings.depth_mode {
            DepthMode::Rgbd => self.depth.closest(stamp, tolerance).is_some(),
            DepthMode::Stereo => self.right.closest(stamp, tolerance).is_some(),
            DepthMode::None | DepthMode::Ground | DepthMode::Model => true,
        }
    }

    pub fn settings(&self) -> &OutputSettings {
        &self.settings
    }

    /// `label_info` for the current labels if they changed since the last call.
    pub fn take_label_info(&mut self, stamp: Time) -> Option<LabelInfo> {
        if !std::mem::take(&mut self.label_info_due) {
            return None;
        }
        let header = Header { stamp, frame_id: String::new() };
        Some(outputs::label_info(&header, &self.labels, self.pipeline.options().unknown_threshold))
    }

    /// The outputs to build for a frame: those `wants` asks for (subscribed) whose publish_*
    /// toggle is on.
    pub fn wanted_topics(&self, wants: impl Fn(Topic) -> bool) -> Vec<Topic> {
        Topic::ALL.into_iter().filter(|t| self.settings.publishes(t.toggle()) && wants(*t)).collect()
    }

    /// Keeps a depth image (from `topic`) for the frames to come; a compressed one is decoded
    /// first, and one that does not decode is counted and dropped.
    pub fn push_depth(&mut self, depth: InputImage, topic: &str) {
        match depth.into_depth(&format!("{topic}/compressedDepth")) {
            Ok(image) => self.depth.push(image),
            Err(r) => self.note(&r),
        }
    }

    /// [`Self::process`] for a frame as it arrived; a compressed one is decoded first (here, on
    /// the processing thread, never on the one taking messages off DDS).
    pub fn process_input(&mut self, input: InputImage, received: Instant, wanted: Vec<Topic>) -> FrameOutcome {
        let image = match input {
            InputImage::Raw(image) => image,
            InputImage::Compressed(compressed) => {
                let _s = tracing::debug_span!("decompress").entered();
                match decode::decompress(compressed, "image/compressed") {
                    Ok(image) => image,
                    Err(r) => return self.skip(r),
                }
            }
        };
        self.process(image, received, wanted)
    }

    /// Segments `image` and builds the `wanted` outputs (see [`Self::wanted_topics`]). Bad input
    /// is counted and logged.
    pub fn process(&mut self, mut image: Image, received: Instant, wanted: Vec<Topic>) -> FrameOutcome {
        let header = image.header.clone();
        let frame = match decode::frame(&mut image, "image") {
            Ok(f) => f,
            Err(r) => return self.skip(r),
        };
        // A camera_info of another size stops only what needs it; the mask needs none.
        self.camera_info_fits = match self.camera_info.as_ref().map(|info| decode::check_info_size(info, "camera_info", "image", frame.width, frame.height)) {
            Some(Err(mut r)) => {
                r.message += "; what needs camera_info (depth registration, stereo, ground depth, points) skipped";
                self.note(&r);
                false
            }
            _ => true,
        };
        let wants_depth = wanted.iter().any(|t| t.needs_depth());
        let measured = if self.settings.depth_mode == DepthMode::Rgbd && wants_depth {
            // A malformed depth image costs this frame its depth, not its mask.
            self.measured_depth(header.stamp, &frame).unwrap_or_else(|mut r| {
                r.message += "; depth and points skipped";
                self.note(&r);
                None
            })
        } else {
            None
        };
        let segmentation = match self.pipeline.process(&frame, &self.labels) {
            Ok(s) => {
                self.last_error = None;
                s
            }
            Err(e) => {
                let r = Rejected { kind: "engine", message: format!("segmentation failed: {e}") };
                self.last_error = Some(r.message.clone());
                return self.skip(r);
            }
        };
        let started = Instant::now();
        let width = frame.width as usize;
        let (mut metres, depth_confidence) = match self.settings.depth_mode {
            DepthMode::Rgbd => (measured.map(|m| self.conditioned_depth(&m, &segmentation.map.labels, width)), None),
            DepthMode::Ground if wants_depth => match self.ground_depth(&segmentation.map, header.stamp) {
                Some(g) => (Some(g.depth), Some(g.confidence)),
                None => (None, None),
            },
            DepthMode::Stereo if wants_depth => {
                let metres = self.stereo_depth(&frame, header.stamp, &segmentation.map);
                (metres.map(|m| self.conditioned_depth(&m, &segmentation.map.labels, width)), None)
            }
            // Said on every frame, subscribers or not: the configuration cannot work.
            DepthMode::Model => match &segmentation.depth {
                Some(d) if wants_depth => (Some(self.conditioned_depth(&d.metres(), &segmentation.map.labels, width)), None),
                Some(_) => (None, None),
                None => {
                    self.note(&Rejected { kind: "model_depth", message: "depth_mode model: the model has no depth head (train one with depth data); depth and points skipped".into() });
                    (None, None)
                }
            },
            _ => (None, None),
        };
        let measured_modes = matches!(self.settings.depth_mode, DepthMode::Rgbd | DepthMode::Stereo | DepthMode::Model);
        let wants_rays = wanted.contains(&Topic::Points) || (measured_modes && self.settings.ground_fit.is_some());
        let rays = match metres.is_some() && wants_rays {
            true => self.image_rays("points and ground_fit"),
            false => None,
        };
        if let (Some(m), Some(rays), Some(tolerance), true) = (&mut metres, &rays, self.settings.ground_fit, measured_modes) {
            self.fit_ground(m, &segmentation.map.labels, rays, tolerance);
        }
        let map = &segmentation.map;
        let mut painted = self.paint(&wanted, &frame, map);
        let labels = &self.labels;
        let mut out = Vec::with_capacity(wanted.len());
        for topic in wanted {
            let msg = match topic {
                Topic::Mask => OutMsg::Image(topic, outputs::mask(&header, map, labels.len())),
                Topic::MaskColor => match painted.color.take() {
                    Some(rgb) => OutMsg::Image(topic, outputs::rgb8(&header, map, rgb)),
                    None => continue,
                },
                Topic::Overlay => match painted.overlay.take() {
                    Some(rgb) => OutMsg::Image(topic, outputs::rgb8(&header, map, rgb)),
                    None => continue,
                },
                Topic::Confidence => OutMsg::Image(topic, outputs::confidence(&header, map)),
                Topic::Depth => match &metres {
                    Some(m) => OutMsg::Image(topic, outputs::depth(&header, map, m)),
                    None => continue,
                },
                Topic::Points => match (&metres, &rays) {
                    (Some(m), Some(rays)) => {
                        let stride = self.settings.points_stride;
                        OutMsg::Points(outputs::points(&header, map, m, depth_confidence.as_deref(), rays, stride, labels.len()))
                    }
                    _ => continue,
                },
            };
            out.push(msg);
        }
        let mut timings = segmentation.timings;
        timings.post_ms += started.elapsed().as_secs_f64() * 1000.0;
        self.latency.record(&timings, received.elapsed().as_secs_f64() * 1000.0);
        self.frames += 1;
        self.last_skipped = false;
        FrameOutcome::Published(out)
    }

    /// `mask_color` and `overlay` where they are wanted, painted where the scorer runs (the GPU
    /// with CUDA scoring). A failure is noted and those two outputs skipped for this frame.
    fn paint(&mut self, wanted: &[Topic], frame: &Frame, map: &LabelMap) -> Painted {
        let color = wanted.contains(&Topic::MaskColor);
        let frame_rgb = wanted.contains(&Topic::Overlay).then(|| frame.to_rgb8());
        if !color && frame_rgb.is_none() {
            return Painted::default();
        }
        let request = PaintRequest { colors: &self.labels.colors, color, overlay: frame_rgb.as_deref().map(|rgb| (rgb, self.settings.overlay_alpha)) };
        match self.pipeline.paint(map, &request) {
            Ok(painted) => painted,
            Err(e) => {
                self.note(&Rejected { kind: "paint", message: format!("mask_color / overlay: {e}") });
                Painted::default()
            }
        }
    }

    /// Depth with no value where the label rules it out, filtered and filled within labels.
    fn conditioned_depth(&self, metres: &[f32], labels: &[u16], width: usize) -> Vec<f32> {
        let _s = tracing::debug_span!("depth").entered();
        let no_depth = engine::depth::labels_in(&self.labels.names, &self.settings.depth_invalid_labels);
        engine::depth::condition(metres, labels, width, &no_depth, &self.settings.depth_conditioning)
    }

    /// The depth image nearest in time, in metres and aligned with `frame`: `depth_registered`
    /// as it is, or `depth/image` registered here (depth_registration extrinsics or tf). Ok(None) when
    /// none can be had for this frame (noted); Err for a malformed depth message.
    fn measured_depth(&mut self, stamp: Time, frame: &Frame) -> Result<Option<Vec<f32>>, Rejected> {
        let tolerance = self.settings.depth_sync_tolerance;
        let topic = if self.settings.depth_registration.is_some() { "depth/image" } else { "depth_registered" };
        let Some(depth) = self.depth.closest(stamp, tolerance) else {
            let message = format!("no {topic} image within {tolerance} s of image stamp {stamp}; depth and points skipped");
            self.note(&Rejected { kind: "no_depth", message });
            return Ok(None);
        };
        let Some(source) = self.settings.depth_registration.clone() else {
            return decode::depth_metres(depth, topic, frame.width, frame.height).map(Some);
        };
        let size = (depth.width as usize, depth.height as usize);
        let metres = decode::depth_metres(depth, topic, depth.width, depth.height)?;
        if !self.camera_info_fits {
            return Ok(None); // said once for the frame
        }
        match self.register(&metres, size, &source, stamp) {
            Ok(m) => Ok(Some(m)),
            Err(r) => {
                self.note(&r);
                Ok(None)
            }
        }
    }

    /// `metres` from the depth camera redrawn as the colour camera's z-depth.
    fn register(&mut self, metres: &[f32], size: (usize, usize), source: &PoseSource, stamp: Time) -> Result<Vec<f32>, Rejected> {
        let _s = tracing::debug_span!("register_depth").entered();
        let reject = |kind: &'static str, message: String| Rejected { kind, message: format!("{message}; depth and points skipped") };
        let (Some(color), Some(depth)) = (&self.camera_info, &self.depth_camera_info) else {
            return Err(reject("no_camera_info", "depth_registration needs camera_info and depth/camera_info".into()));
        };
        // Sizes first: the registration's tables are as large as the camera_info says.
        if (depth.width as usize, depth.height as usize) != size {
            return Err(reject("depth_size", format!("depth/image is {}x{}, but depth/camera_info says {}x{}", size.0, size.1, depth.width, depth.height)));
        }

        let rectified = self.settings.image_rectified;
        let cached = self.registration.take();
        // A given transform is read when its parameters change; tf's is looked up every frame.
        let extrinsics = match (source, &cached) {
            (PoseSource::Given(_), Some(c)) if c.source == *source => c.extrinsics,
            (PoseSource::Given(pose), _) => pose.load().map_err(|e| reject("depth_extrinsics", e))?,
            // One frame for two cameras is a driver's misconfiguration, not an identity transform.
            (PoseSource::Tf, _) if tf::frame_name(&color.header.frame_id) == tf::frame_name(&depth.header.frame_id) => {
                let frame = &color.header.frame_id;
                return Err(reject("tf", format!("depth_registration tf: camera_info and depth/camera_info both name frame '{frame}'; the depth camera needs its own frame in tf")));
            }
            (PoseSource::Tf, _) => tf_pose(&self.tf, ("camera_info", &color.header.frame_id), ("depth/camera_info", &depth.header.frame_id), self.tf_at(stamp))
                .map_err(|e| reject("tf", format!("depth_registration tf: {e}")))?,
        };
        let current = |c: &RegistrationCache| {
            c.rectified == rectified && c.extrinsics == extrinsics && outputs::same_calibration(&c.color, color) && outputs::same_calibration(&c.depth, depth)
        };
        // A stale cache is dropped; a new one replaces it once every part of it loads.
        let cache = match cached {
            Some(cache) if current(&cache) => RegistrationCache { source: source.clone(), ..cache },
            _ => {
                let color_camera = outputs::image_camera(color, rectified).map_err(|e| reject("camera_info", format!("camera_info: {e}")))?;
                let depth_camera = outputs::image_camera(depth, rectified).map_err(|e| reject("depth_camera_info", format!("depth/camera_info: {e}")))?;
                let registration = DepthRegistration::new(&depth_camera, &color_camera, extrinsics);
                RegistrationCache { color: color.clone(), depth: depth.clone(), rectified, source: source.clone(), extrinsics, registration }
            }
        };
        let registration = &self.registration.insert(cache).registration;
        registration.register(metres).map_err(|e| reject("registration", e.to_string()))
    }

    /// Fits the ground plane to the depth of ground-label pixels (RANSAC) and gives ground
    /// pixels without depth the plane's. A fit that fails fills nothing and is noted.
    fn fit_ground(&mut self, metres: &mut [f32], labels: &[u16], rays: &PixelRays, tolerance: f64) {
        let _s = tracing::debug_span!("ground_fit").entered();
        self.ground = None;
        let is_ground = engine::depth::labels_in(&self.labels.names, &self.settings.ground_labels);
        let on_ground: Vec<bool> = labels.iter().map(|&l| is_ground.get(l as usize).copied().unwrap_or(false)).collect();
        match calibration::fit_ground_to_depth(rays, metres, &on_ground, tolerance) {
            Ok(fit) => {
                let filled = calibration::fill_from_plane(rays, metres, &on_ground, &fit.plane);
                self.ground = Some(GroundFit { fit, filled });
            }
            Err(e) => self.note(&Rejected { kind: "ground_fit", message: format!("ground_fit: {e}; ground holes not filled") }),
        }
    }

    /// Depth by semi-global matching against the right image with the nearest stamp. Both
    /// images are taken as rectified; f, baseline and the principal-point offset come from the
    /// two camera_info P matrices.
    fn stereo_depth(&mut self, left: &Frame, stamp: Time, map: &engine::LabelMap) -> Option<Vec<f32>> {
        let _s = tracing::debug_span!("stereo").entered();
        let skip = |kind: &'static str, message: String| Rejected { kind, message: format!("{message}; depth and points skipped") };
        let Some(mut right) = self.right.closest(stamp, self.settings.depth_sync_tolerance).cloned() else {
            let tolerance = self.settings.depth_sync_tolerance;
            self.note(&skip("no_right_image", format!("no right/image within {tolerance} s of image stamp {stamp}")));
            return None;
        };
        let (Some(left_info), Some(right_info)) = (&self.camera_info, &self.right_camera_info) else {
            self.note(&skip("no_camera_info", "depth_mode stereo needs camera_info and right/camera_info".into()));
            return None;
        };
        const FIELDS: StereoFields = StereoFields { left_fx: "camera_info `p[0]` (fx)", right_tx: "right/camera_info `p[3]`" };
        let geometry = StereoGeometry::from_projections(&outputs::projection(left_info), &outputs::projection(right_info), &FIELDS)
            .and_then(|g| g.check_width(left.width).map(|()| g));
        let geometry = match geometry {
            Ok(g) => g,
            Err(e) => {
                self.note(&skip("camera_info", e.to_string()));
                return None;
            }
        };
        if !self.camera_info_fits {
            return None; // said once for the frame
        }
        // Every problem with the right camera's input is counted as one kind, named by topic.
        let right_problem = |r: Rejected| Rejected { kind: "right_image", message: format!("{}; depth and points skipped", r.message) };
        let checked = decode::frame(&mut right, "right/image").and_then(|f| {
            decode::check_info_size(right_info, "right/camera_info", "right/image", f.width, f.height)?;
            match (f.width, f.height) == (left.width, left.height) {
                true => Ok(f),
                false => Err(Rejected { kind: "right_image", message: format!("right/image: {}x{}, but image is {}x{}", f.width, f.height, left.width, left.height) }),
            }
        });
        let right = match checked {
            Ok(f) => f,
            Err(r) => {
                self.note(&right_problem(r));
                return None;
            }
        };
        let (max_disp, paths) = (self.settings.stereo_max_disp, self.settings.stereo_paths);
        if self.stereo.as_ref().is_none_or(|m| (m.params().max_disp, m.params().paths) != (max_disp, paths)) {
            let backend = if self.stereo_fallback.is_some() { "cpu" } else { self.settings.backend.as_str() };
            match engine::stereo::matcher_for(backend, &StereoParams { max_disp, paths, ..StereoParams::default() }) {
                Ok(m) => self.stereo = Some(m),
                Err(e) => {
                    self.note(&skip("stereo", format!("stereo matcher (backend {backend}, stereo_max_disp {max_disp}, stereo_paths {}): {e}", paths.count())));
                    return None;
                }
            }
        }
        let (w, h) = (left.width as usize, left.height as usize);
        let (lg, rg) = (gray(left), gray(&right));
        let labels = self.settings.stereo_label_penalties.then_some(map.labels.as_slice());
        let matcher = self.stereo.as_mut()?;
        let result = GrayView::new(w, h, &lg)
            .map_err(engine::EngineError::from)
            .and_then(|l| GrayView::new(w, h, &rg).map_err(engine::EngineError::from).and_then(|r| matcher.compute(l, r, labels)));
        match result {
            Ok((disparity, _)) => Some(disparity.depth(geometry.focal_baseline, geometry.doffs)),
            Err(e) => {
                let device = matcher.device();
                if !matcher.is_cpu() {
                    // As for GPU scoring: the following frames match on the CPU.
                    tracing::error!("stereo matching on {device} failed ({e}); matching on the CPU from the next frame");
                    self.stereo_fallback = Some(format!("{device}: {e}"));
                    self.stereo = None;
                }
                self.note(&skip("stereo", format!("stereo matching: {e}")));
                None
            }
        }
    }

    /// Depth from the camera's mounting over flat ground: rays of ground labels meet the plane,
    /// other labels take the ground depth where their column meets it.
    fn ground_depth(&mut self, map: &engine::LabelMap, stamp: Time) -> Option<calibration::GroundDepth> {
        let _s = tracing::debug_span!("ground_depth").entered();
        let rays = self.image_rays("depth and points")?;
        let (pose, mounting) = (&self.settings.camera_pose, self.settings.camera_mounting);
        let plane = match (&self.settings.ground_frame, &self.ground_plane) {
            // Looked up every frame: the camera may move on the robot (a pan-tilt head).
            (Some(ground), _) => {
                let camera = self.camera_info.as_ref().map_or("", |c| c.header.frame_id.as_str());
                tf_pose(&self.tf, ("ground_frame", ground), ("camera_info", camera), self.tf_at(stamp))
                    .and_then(|p| calibration::GroundPlane::from_camera_pose(&p).map_err(|e| format!("the camera's pose in ground_frame '{ground}' from tf: {e}")))
            }
            (None, Some((p, m, plane))) if p == pose && *m == mounting => Ok(*plane),
            _ => {
                let plane = match pose {
                    Some(pose) => pose.load().and_then(|p| calibration::GroundPlane::from_camera_pose(&p).map_err(|e| format!("'camera_pose': {e}"))),
                    None => calibration::GroundPlane::from_extrinsics(mounting[0], mounting[1], mounting[2]).map_err(|e| e.to_string()),
                };
                if let Ok(plane) = &plane {
                    self.ground_plane = Some((pose.clone(), mounting, *plane));
                }
                plane
            }
        };
        let result = plane.and_then(|plane| {
            let kind: Vec<Surface> = self
                .labels
                .names
                .iter()
                .map(|n| {
                    let n = n.trim().to_lowercase();
                    if self.settings.ground_labels.contains(&n) {
                        Surface::Ground
                    } else if self.settings.depth_invalid_labels.contains(&n) {
                        Surface::NoDepth
                    } else {
                        Surface::Obstacle
                    }
                })
                .collect();
            let surfaces: Vec<Surface> = map.labels.iter().map(|&l| kind.get(l as usize).copied().unwrap_or(Surface::Unknown)).collect();
            calibration::ground_depth(&rays, &plane, &surfaces).map_err(|e| e.to_string())
        });
        match result {
            Ok(g) => Some(g),
            Err(e) => {
                self.note(&Rejected { kind: "ground_depth", message: format!("depth_mode ground: {e}; depth and points skipped") });
                None
            }
        }
    }

    /// The rays of the frame's pixels from the last camera_info (P when `image_rectified`, K
    /// and the distortion model otherwise), if it is usable and of the frame's size.
    fn image_rays(&mut self, what: &str) -> Option<Arc<PixelRays>> {
        let rectified = self.settings.image_rectified;
        let Some(info) = &self.camera_info else {
            self.note(&Rejected { kind: "no_camera_info", message: format!("no camera_info received yet; {what} skipped") });
            return None;
        };
        if !self.camera_info_fits {
            return None; // said once for the frame
        }
        if let Some(cache) = &self.rays
            && cache.rectified == rectified
            && outputs::same_calibration(&cache.info, info)
        {
            return Some(cache.rays.clone());
        }
        match outputs::image_camera(info, rectified) {
            Ok(camera) => {
                let rays = Arc::new(PixelRays::centres(&camera));
                self.rays = Some(RaysCache { info: info.clone(), rectified, rays: rays.clone() });
                Some(rays)
            }
            Err(e) => {
                self.note(&Rejected { kind: "camera_info", message: format!("camera_info: {e}; {what} skipped") });
                None
            }
        }
    }

    fn skip(&mut self, r: Rejected) -> FrameOutcome {
        self.note(&r);
        self.frames_skipped += 1;
        self.last_skipped = true;
        FrameOutcome::Skipped
    }

    /// A tf lookup at the frame stamped `stamp`.
    fn tf_at(&self, stamp: Time) -> tf::At {
        tf::At { stamp, tolerance_ns: (self.settings.tf_tolerance * 1e9) as i64 }
    }

    /// Counts a problem in /diagnostics and logs it the first time its kind comes up, then
    /// at most every half minute while it goes on.
    fn note(&mut self, r: &Rejected) {
        match self.rejects.count(r) {
            Some(0) => tracing::warn!("{} (counted in /diagnostics as rejected.{})", r.message, r.kind),
            Some(n) => tracing::warn!("{} (rejected.{}: {n} more since last logged)", r.message, r.kind),
            None => {}
        }
    }

    /// The node's status for /diagnostics.
    pub fn diagnostics(&self, name: &str, dropped: u64) -> DiagnosticStatus {
        let kv = |key: &str, value: String| KeyValue { key: key.into(), value };
        let mut values = vec![
            kv("backend", self.pipeline.backend_name().into()),
            kv("scorer", self.pipeline.scorer_name().into()),
            kv("frame_memory", self.pipeline.frame_memory().into()),
            kv("threads", rayon::current_num_threads().to_string()),
            kv("labels", self.labels.len().to_string()),
            kv("frames_processed", self.frames.to_string()),
            kv("frames_dropped", dropped.to_string()),
            kv("frames_rejected", self.frames_skipped.to_string()),
        ];
        if let Some(last) = self.rejects.last() {
            values.push(kv("last_problem", last.into()));
        }
        for (kind, n) in self.rejects.by_kind() {
            values.push(kv(&format!("rejected.{kind}"), n.to_string()));
        }
        values.extend(self.latency.summary().into_iter().map(|(k, v)| kv(&k, format!("{v:.2}"))));
        if let Some(reason) = self.pipeline.scorer_fallback() {
            values.push(kv("scorer_fallback", reason.into()));
        }
        if let Some(reason) = self.pipeline.backend_fallback() {
            values.push(kv("backend_fallback", reason.into()));
        }
        if let Some(reason) = self.pipeline.device_path_fallback() {
            values.push(kv("device_path_fallback", reason.into()));
        }
        if let Some(matcher) = &self.stereo {
            values.push(kv("stereo", matcher.device()));
        }
        if let Some(reason) = &self.stereo_fallback {
            values.push(kv("stereo_fallback", reason.clone()));
        }
        {
            let tf = self.tf.lock();
            values.push(kv("tf_frames", tf.len().to_string()));
            if let Some((n, why)) = tf.rejected() {
                values.push(kv("tf_rejected", n.to_string()));
                values.push(kv("tf_last_rejected", why.into()));
            }
        }
        if let Some(GroundFit { fit, filled }) = &self.ground {
            let [height, pitch, roll] = fit.plane.mounting();
            values.push(kv("ground_fit.camera_height", format!("{height:.3}")));
            values.push(kv("ground_fit.camera_pitch", format!("{pitch:.4}")));
            values.push(kv("ground_fit.camera_roll", format!("{roll:.4}")));
            values.push(kv("ground_fit.inliers", format!("{}/{}", fit.inliers, fit.points)));
            values.push(kv("ground_fit.filled_pixels", filled.to_string()));
        }
        let (level, message) = match &self.last_error {
            Some(e) => (DiagnosticStatus::ERROR, e.clone()),
            None if self.last_skipped => {
                (DiagnosticStatus::WARN, format!("latest frame skipped: {}", self.rejects.last().unwrap_or("see rejected.*")))
            }
            None if self.pipeline.scorer_fallback().is_some() => {
                (DiagnosticStatus::WARN, format!("{} frames processed; GPU scoring failed, scoring on the CPU", self.frames))
            }
            None if self.pipeline.backend_fallback().is_some() => (
                DiagnosticStatus::WARN,
                format!("{} frames processed; image encoder on {} instead of the backend asked for", self.frames, self.pipeline.backend_name()),
            ),
            None if self.frames == 0 => (DiagnosticStatus::WARN, "no frame processed yet".to_string()),
            None => (DiagnosticStatus::OK, format!("{} frames processed", self.frames)),
        };
        DiagnosticStatus { level, name: name.into(), message, hardware_id: "ovseg".into(), values }
    }
}

/// The pose of `source`'s frame in `target`'s from tf; each side is (where the frame name came
/// from, the name), so that errors say which message or parameter to fix.
fn tf_pose(tf: &SharedTree, target: (&str, &str), source: (&str, &str), at: tf::At) -> Result<calibration::Extrinsics, String> {
    if let Some((what, _)) = [target, source].into_iter().find(|(_, frame)| tf::frame_name(frame).is_empty()) {
        return Err(format!("{what} names no frame (empty frame_id), so tf cannot place it"));
    }
    let ((target_what, target_frame), (source_what, source_frame)) = (target, source);
    tf.lock()
        .lookup(target_frame, source_frame, Some(at))
        .map_err(|e| format!("no transform from {source_what} frame '{source_frame}' to {target_what} frame '{target_frame}' at {}: {e}", at.stamp))
}

/// 8-bit gray of a frame: mono8 as it is, colour as BT.601 luma (integer, rounded).
fn gray(frame: &Frame) -> Vec<u8> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    if frame.format == PixelFormat::Mono8 {
        return (0..h).flat_map(|y| frame.data[y * frame.step..y * frame.step + w].iter().copied()).collect();
    }
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = frame.rgb(x, y).map(u32::from);
            out.push(((299 * r + 587 * g + 114 * b + 500) / 1000) as u8);
        }
    }
    out
}
