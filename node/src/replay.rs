//! `ovseg replay`: runs the node's pipeline over a recorded ROS 2 mcap bag, no DDS involved,
//! and writes every output topic (plus the inputs) as ROS 2 CDR into a new mcap.
use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::CommonArgs;
use crate::ros::args::RosArgs;
use crate::ros::msgs::{self, CameraInfo, CompressedImage, Image, LabelInfo, PointCloud2, RosType, TfMessage};
use crate::ros::outputs::{OutMsg, Topic};
use crate::ros::param_state::ParamState;
use crate::ros::processor::{FrameOutcome, InputImage, Processor, closest_in_time};
use crate::ros::tf::TransformTree;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Recorded bag (ROS 2 mcap with CDR messages).
    pub input: PathBuf,
    /// Bag to write (must not exist unless --force; never the input bag).
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite --out if it exists (a file; never the input bag).
    #[arg(long)]
    pub force: bool,
    /// Colour image topic in the bag: sensor_msgs/Image, or sensor_msgs/CompressedImage (JPEG or
    /// PNG, as image_transport's compressed transport records it, e.g. `/camera/image_raw/compressed`).
    #[arg(long, default_value = "/image")]
    pub image_topic: String,
    #[arg(long, default_value = "/camera_info")]
    pub camera_info_topic: String,
    /// Depth topic (used when the depth_mode parameter is rgbd): registered depth, or the depth
    /// camera's own image when depth_registration is extrinsics or tf; sensor_msgs/Image, or
    /// CompressedImage as recorded from `.../compressedDepth` (png).
    #[arg(long, default_value = "/depth_registered")]
    pub depth_topic: String,
    /// camera_info of the depth camera (used when depth_registration is extrinsics or tf).
    #[arg(long, default_value = "/depth/camera_info")]
    pub depth_camera_info_topic: String,
    /// Right image of a rectified stereo pair (used when depth_mode is stereo).
    #[arg(long, default_value = "/right/image")]
    pub right_topic: String,
    /// camera_info of the right camera (its P carries the baseline).
    #[arg(long, default_value = "/right/camera_info")]
    pub right_camera_info_topic: String,
    /// Static transforms (tf2_msgs/TFMessage; for depth_registration tf and ground_frame): all
    /// are taken before the first frame, as a latched topic would deliver them.
    #[arg(long, default_value = "/tf_static")]
    pub tf_static_topic: String,
    /// Moving transforms, taken in bag order (each frame sees the latest before it).
    #[arg(long, default_value = "/tf")]
    pub tf_topic: String,
    /// Namespace the output topics are written under (`<ns>/mask`, ...).
    #[arg(long, default_value = "/")]
    pub output_namespace: String,
    /// Do not copy the bag's own messages into the output.
    #[arg(long)]
    pub outputs_only: bool,
}

/// Writes messages into an mcap, one channel per topic.
struct Recorder {
    writer: mcap::Writer<BufWriter<std::fs::File>>,
    channels: BTreeMap<String, u16>,
    schemas: BTreeMap<String, u16>,
    counts: BTreeMap<String, u64>,
}

impl Recorder {
    fn channel(&mut self, topic: &str, schema: &str, definition: &[u8]) -> Result<u16> {
        if let Some(id) = self.channels.get(topic) {
            return Ok(*id);
        }
        let schema_id = match self.schemas.get(schema) {
            Some(id) => *id,
            None => {
                let id = self.writer.add_schema(schema, "ros2msg", definition)?;
                self.schemas.insert(schema.to_string(), id);
                id
            }
        };
        let id = self.writer.add_channel(schema_id, topic, "cdr", &BTreeMap::new())?;
        self.channels.insert(topic.to_string(), id);
        Ok(id)
    }

    fn write_raw(&mut self, topic: &str, schema: &str, definition: &[u8], time_ns: u64, cdr: &[u8]) -> Result<()> {
        let channel_id = self.channel(topic, schema, definition)?;
        let count = self.counts.entry(topic.to_string()).or_insert(0);
        *count += 1;
        let header = mcap::records::MessageHeader { channel_id, sequence: *count as u32, log_time: time_ns, publish_time: time_ns };
        self.writer.write_to_known_channel(&header, cdr)?;
        Ok(())
    }

    fn write<M: RosType + serde::Serialize>(&mut self, topic: &str, message: &M, time_ns: u64) -> Result<()> {
        let cdr = msgs::to_cdr(message).with_context(|| format!("serializing {topic}"))?;
        self.write_raw(topic, &M::schema_name(), M::DEFINITION.as_bytes(), time_ns, &cdr)
    }
}

/// Refuses, before any work, an --out that is the input bag however it is spelt (`a/../in.mcap`,
/// a link), a folder, or an existing file without --force.
fn check_out(args: &ReplayArgs) -> Result<()> {
    if args.out.is_dir() {
        bail!("--out {} is a folder; give the file name of the bag to write", args.out.display());
    }
    if engine::outputs::same_destination(&args.out, &args.input) {
        bail!("--out {} is the input bag {}; give another file", args.out.display(), args.input.display());
    }
    if args.out.exists() && !args.force {
        bail!("{} exists; pass --force to overwrite it", args.out.display());
    }
    Ok(())
}

/// A camera message of the bag: sensor_msgs/CompressedImage where the channel's schema says
/// so (image_transport's `compressed` or `compressedDepth`), else sensor_msgs/Image.
fn camera_message(message: &mcap::Message<'_>) -> Result<InputImage, String> {
    match message.channel.schema.as_ref().is_some_and(|s| s.name == CompressedImage::schema_name()) {
        true => msgs::from_cdr::<CompressedImage>(&message.data).map(InputImage::Compressed),
        false => msgs::from_cdr::<Image>(&message.data).map(InputImage::Raw),
    }
}

fn out_topic(namespace: &str, name: &str) -> String {
    format!("{}/{name}", namespace.trim_end_matches('/'))
}

pub fn run(common: &CommonArgs, threads: usize, args: ReplayArgs, ros: RosArgs) -> Result<()> {
    check_out(&args)?;
    let bytes = std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let reading = || format!("reading the input bag {}", args.input.display());
    // Depth and right images first, so each image finds its partner whatever the order in the
    // bag; a file that is no bag is refused before the model loads.
    let mut depth_images: Vec<Image> = Vec::new();
    let mut static_transforms: Vec<TfMessage> = Vec::new();
    let mut right_images: Vec<Image> = Vec::new();
    let mut images = 0usize;
    for message in mcap::MessageStream::new(&bytes).with_context(reading)? {
        let message = message.with_context(reading)?;
        if message.channel.topic == args.depth_topic {
            match camera_message(&message).map_err(|e| anyhow::anyhow!("{}: {e}", args.depth_topic))?.into_depth(&args.depth_topic) {
                Ok(depth) => depth_images.push(depth),
                Err(r) => tracing::warn!("{}; depth image skipped", r.message),
            }
        } else if message.channel.topic == args.right_topic {
            let right: Image = msgs::from_cdr(&message.data).map_err(|e| anyhow::anyhow!("{}: {e}", args.right_topic))?;
            right_images.push(right);
        } else if message.channel.topic == args.tf_static_topic {
            match msgs::from_cdr::<TfMessage>(&message.data) {
                Ok(transforms) => static_transforms.push(transforms),
                Err(e) => tracing::warn!("{}: unreadable message skipped: {e}", args.tf_static_topic),
            }
        } else if message.channel.topic == args.image_topic {
            images += 1;
        }
    }
    if images == 0 {
        bail!("no messages on {} in {} (set --image-topic)", args.image_topic, args.input.display());
    }

    let fqn = crate::ros::args::fully_qualified_node_name(
        ros.namespace.as_deref().unwrap_or("/"),
        ros.node_name.as_deref().unwrap_or(crate::ros::DEFAULT_NODE_NAME),
    );
    let overrides = ros.parameter_overrides(&fqn).context("parameters")?;
    let (updates, _) = crossbeam_channel::unbounded();
    let (state, initial) = ParamState::start(common, overrides, threads, updates)?;
    let settings = state.settings();
    let mut processor = Processor::new(initial.pipeline, initial.labels, settings.output.clone());
    for message in &static_transforms {
        TransformTree::take_and_log(&processor.tf, message, true);
    }

    // Temp file + rename: a failed replay never leaves a truncated bag at --out, nor the
    // temporary file.
    // Written beside --out and renamed onto it once complete; removed if the replay fails.
    let (partial, file) = engine::labels::AtomicFile::create(&args.out).with_context(|| format!("--out {}: cannot create a file in its folder", args.out.display()))?;
    let writer = mcap::WriteOptions::new()
        .profile("ros2")
        .compression(Some(mcap::Compression::Zstd))
        .create(BufWriter::new(file))
        .context("starting the output bag")?;
    let mut rec = Recorder { writer, channels: BTreeMap::new(), schemas: BTreeMap::new(), counts: BTreeMap::new() };

    let bar = ProgressBar::new(images as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} frames {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let started = Instant::now();
    let mut processed = 0u64;
    for message in mcap::MessageStream::new(&bytes).with_context(reading)? {
        let message = message.with_context(reading)?;
        let topic = message.channel.topic.as_str();
        if !args.outputs_only
            && let Some(schema) = &message.channel.schema
        {
            rec.write_raw(topic, &schema.name, &schema.data, message.log_time, &message.data)?;
        }
        if topic == args.tf_topic {
            match msgs::from_cdr::<TfMessage>(&message.data) {
                Ok(transforms) => TransformTree::take_and_log(&processor.tf, &transforms, false),
                Err(e) => tracing::warn!("{topic}: unreadable message skipped: {e}"),
            }
        } else if topic == args.camera_info_topic || topic == args.right_camera_info_topic || topic == args.depth_camera_info_topic {
            match msgs::from_cdr::<CameraInfo>(&message.data) {
                Ok(info) if topic == args.camera_info_topic => processor.set_camera_info(info),
                Ok(info) if topic == args.depth_camera_info_topic => processor.set_depth_camera_info(info),
                Ok(info) => processor.set_right_camera_info(info),
                Err(e) => tracing::warn!("{topic}: unreadable message skipped: {e}"),
            }
        } else if topic == args.image_topic {
            let image = match camera_message(&message) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!("{topic}: unreadable message skipped: {e}");
                    continue;
                }
            };
            let stamp = image.stamp();
            if let Some(depth) = closest_in_time(&depth_images, stamp) {
                processor.depth.push(depth.clone());
            }
            if let Some(right) = closest_in_time(&right_images, stamp) {
                processor.right.push(right.clone());
            }
            if let Some(info) = processor.take_label_info(stamp) {
                rec.write::<LabelInfo>(&out_topic(&args.output_namespace, "label_info"), &info, message.log_time)?;
            }
            let wanted = processor.wanted_topics(|_| true);
            if let FrameOutcome::Published(outputs) = processor.process_input(image, Instant::now(), wanted) {
                for out in outputs {
                    let name = out_topic(&args.output_namespace, out.topic().name());
                    match out {
                        OutMsg::Image(_, image) => rec.write::<Image>(&name, &image, message.log_time)?,
                        OutMsg::Points(cloud) => rec.write::<PointCloud2>(&name, &cloud, message.log_time)?,
                    }
                }
            }
            processed += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    rec.writer.finish().context("finishing the output bag")?;
    let counts = rec.counts;
    let file = rec.writer.into_inner().into_inner().map_err(|e| anyhow::anyhow!("writing {}: {}", args.out.display(), e.error()))?;
    partial.commit(file).with_context(|| format!("writing {}", args.out.display()))?;

    let elapsed = started.elapsed().as_secs_f64();
    let outputs: BTreeMap<&str, u64> = Topic::ALL
        .iter()
        .filter_map(|t| counts.get(&out_topic(&args.output_namespace, t.name())).map(|n| (t.name(), *n)))
        .collect();
    let report = json!({
        "input": args.input.display().to_string(),
        "output": args.out.display().to_string(),
        "frames": images,
        "frames_processed": processed,
        "frames_rejected": processor.rejects.by_kind(),
        "transforms_rejected": processor.tf.lock().rejected().map_or(0, |(n, _)| n),
        "outputs": outputs,
        // What /diagnostics would show at the end: where scoring and stereo ran, and any fallback.
        "status": processor.diagnostics("replay", 0).values.into_iter().map(|kv| (kv.key, kv.value)).collect::<BTreeMap<_, _>>(),
        "ms_per_frame": if processed > 0 { elapsed * 1000.0 / processed as f64 } else { 0.0 },
    });
    crate::render::emit_json(&report, None)
}
