//! `ovseg node`: the ROS 2 node. Three threads: this one takes messages off DDS and never blocks
//! on processing (latest frame wins); a processing thread segments and publishes; a parameter
//! thread validates changes and encodes labels or loads models off the camera path.
pub mod args;
pub mod decode;
pub mod msgs;
pub mod outputs;
mod param_server;
pub mod param_state;
pub mod params;
pub mod processor;
pub mod rosout;
pub mod stats;
pub mod tf;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use crossbeam_channel::Receiver;
use engine::handoff::{LatestReceiver, latest};
use ros2_client::qos::{Durability, History, WhenFull};
use ros2_client::{Context, MessageTypeName, Name, Node, NodeName, NodeOptions, Publisher, QosProfile, Subscription};
use rustdds::DomainParticipantBuilder;
use rustdds::mio1::{Events, Interest, Poll, Token};

use crate::CommonArgs;
use args::RosArgs;
use msgs::{CameraInfo, Clock, CompressedImage, DiagnosticArray, Header, Image, LabelInfo, PointCloud2, RosType, TfMessage, Time};
use outputs::{OutMsg, Topic};
use param_state::ParamState;
use processor::{FrameOutcome, InputImage, Processor, Update};

pub const DEFAULT_NODE_NAME: &str = "segmenter";

/// How often the threads look for a stop request.
const POLL: Duration = Duration::from_millis(100);

/// How long shutdown waits for the processing and parameter threads.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the DDS thread hands to the processing thread besides frames.
enum Side {
    CameraInfo(Box<CameraInfo>),
    /// From `depth_registered` (`registered`) or `depth/image`.
    Depth { image: InputImage, registered: bool },
    DepthCameraInfo(Box<CameraInfo>),
    RightCameraInfo(Box<CameraInfo>),
    Right(Image),
}

/// A camera stream taken raw, or compressed under image_transport's name for it.
enum CameraSub {
    Raw(Subscription<Image>),
    Compressed(Subscription<CompressedImage>, String),
}

impl CameraSub {
    /// `name` is the resolved topic: the base topic's, or with `compressed` its compressed
    /// stream's.
    fn new(node: &mut Node, name: Name, compressed: bool, qos: &QosProfile) -> Result<Self> {
        Ok(match compressed {
            false => CameraSub::Raw(subscribe::<Image>(node, name, qos)?),
            true => {
                let shown = name.to_string();
                CameraSub::Compressed(subscribe::<CompressedImage>(node, name, qos)?, shown)
            }
        })
    }

    fn take(&self, what: &str) -> Option<InputImage> {
        match self {
            CameraSub::Raw(sub) => take(sub, what).map(InputImage::Raw),
            CameraSub::Compressed(sub, name) => take(sub, name).map(InputImage::Compressed),
        }
    }

    fn register(&mut self, poll: &Poll, token: Token) -> std::io::Result<()> {
        match self {
            CameraSub::Raw(sub) => poll.registry().register(sub, token, Interest::READABLE),
            CameraSub::Compressed(sub, _) => poll.registry().register(sub, token, Interest::READABLE),
        }
    }
}

struct Incoming {
    image: InputImage,
    received: Instant,
}

pub fn run(common: &CommonArgs, threads: usize, ros: RosArgs) -> Result<()> {
    let env = args::dds_env().context("ROS environment")?;
    let node_name = ros.node_name.clone().unwrap_or_else(|| DEFAULT_NODE_NAME.to_string());
    let namespace = ros.namespace.clone().unwrap_or_else(|| "/".to_string());
    let fqn = args::fully_qualified_node_name(&namespace, &node_name);
    let overrides = ros.parameter_overrides(&fqn).context("parameters")?;

    let (update_tx, update_rx) = crossbeam_channel::unbounded::<Update>();
    let (state, initial) = ParamState::start(common, overrides, threads, update_tx)?;
    let settings = state.settings();
    tracing::info!(
        "{fqn}: {} labels, image encoder {}, scoring {}",
        initial.labels.len(),
        initial.pipeline.backend_name(),
        initial.pipeline.scorer_name()
    );

    let participant = {
        let mut builder = DomainParticipantBuilder::new(env.domain_id);
        if env.localhost_only {
            builder = builder.with_only_networks([Ipv4Addr::LOCALHOST]);
        }
        builder.build().context("creating the DDS participant")?
    };
    let context = Context::from_domain_participant(participant).context("ROS context")?;
    let options = NodeOptions::new().enable_rosout(true).start_parameter_services(false);
    let mut node = context
        .new_node(NodeName::new(&namespace, &node_name).map_err(|e| anyhow!("node name {fqn}: {e:?}"))?, options)
        .context("creating the node")?;

    rosout::forward_to(ros2_client::rosout::RosoutRaw::rosout_writer(&node.logging_handle()), rosout::logger_name(&namespace, &node_name));

    let resolve = |name: &str| -> Result<Name> {
        let full = args::resolve_topic(name, &namespace, &node_name, &ros.remaps).with_context(|| format!("topic {name}"))?;
        Name::parse(&full).map_err(|e| anyhow!("topic {full}: {e:?}"))
    };
    let depth = settings.queue_depth;
    let input_qos = match settings.image_qos.as_str() {
        "reliable" => QosProfile::publisher_default().reliability_reliable(WhenFull::DEFAULT),
        _ => QosProfile::subscription_default(),
    }
    .history(History::KeepLast { depth });
    // Reliable writers match both reliable and best-effort readers (REP 2003); never wait on a
    // slow reader: a full window drops that sample for it.
    let output_qos = QosProfile::publisher_default().reliability_reliable(WhenFull::Fail).history(History::KeepLast { depth });
    let latched_qos = QosProfile::publisher_default().durability(Durability::TransientLocal).history(History::KeepLast { depth: 1 });
    let diagnostics_qos = QosProfile::publisher_default().history(History::KeepLast { depth: 10 });

    // image_transport's naming: a compressed stream is `<base>/compressed` (or
    // `/compressedDepth`), `<base>` resolved with the remaps first; a remap of the compressed
    // name itself (`-r image/compressed:=...`, as launch files written for Humble have) applies after.
    let camera = |node: &mut Node, base: &str, transport: Option<&str>| -> Result<CameraSub> {
        let base = resolve(base)?;
        match transport {
            None => CameraSub::new(node, base, false, &input_qos),
            Some(transport) => CameraSub::new(node, resolve(&format!("{base}/{transport}"))?, true, &input_qos),
        }
    };
    let image_transport = settings.compressed_images.then_some("compressed");
    let depth_transport = settings.compressed_depth.then_some("compressedDepth");
    let mut image_sub = camera(&mut node, "image", image_transport)?;
    let mut info_sub: Subscription<CameraInfo> = subscribe::<CameraInfo>(&mut node, resolve("camera_info")?, &input_qos)?;
    let mut depth_sub = camera(&mut node, "depth_registered", depth_transport)?;
    let mut raw_depth_sub = camera(&mut node, "depth/image", depth_transport)?;
    let mut depth_info_sub: Subscription<CameraInfo> = subscribe::<CameraInfo>(&mut node, resolve("depth/camera_info")?, &input_qos)?;
    let mut right_sub: Subscription<Image> = subscribe::<Image>(&mut node, resolve("right/image")?, &input_qos)?;
    let mut right_info_sub: Subscription<CameraInfo> = subscribe::<CameraInfo>(&mut node, resolve("right/camera_info")?, &input_qos)?;
    // Simulated time is read here rather than by the ROS client library, whose /clock reader
    // declares the type builtin_interfaces/Time and so never matches a rosgraph_msgs/Clock writer.
    // Best effort matches both kinds of /clock writer; until the first message time is 0.
    let clock_qos = QosProfile::subscription_default().history(History::KeepLast { depth: 1 });
    let mut clock_sub = match settings.use_sim_time {
        true => Some(subscribe::<Clock>(&mut node, resolve("/clock")?, &clock_qos)?),
        false => None,
    };
    let sim_time = settings.use_sim_time.then(|| Arc::new(AtomicI64::new(0)));
    // As tf2 listens: /tf_static latched (each broadcaster's last message reaches a node that
    // starts later), /tf reliable and volatile.
    let tf_static_qos = QosProfile::publisher_default().durability(Durability::TransientLocal).history(History::KeepLast { depth: 100 });
    let tf_qos = QosProfile::publisher_default().history(History::KeepLast { depth: 100 });
    let mut tf_static_sub: Subscription<TfMessage> = subscribe::<TfMessage>(&mut node, resolve("/tf_static")?, &tf_static_qos)?;
    let mut tf_sub: Subscription<TfMessage> = subscribe::<TfMessage>(&mut node, resolve("/tf")?, &tf_qos)?;

    let mut outputs = BTreeMap::new();
    for topic in Topic::ALL {
        let name = resolve(topic.name())?;
        let publisher = if topic == Topic::Points {
            OutputPublisher::Points(advertise::<PointCloud2>(&mut node, name, &output_qos)?)
        } else {
            OutputPublisher::Image(advertise::<Image>(&mut node, name, &output_qos)?)
        };
        outputs.insert(topic, publisher);
    }
    let label_info = advertise::<LabelInfo>(&mut node, resolve("label_info")?, &latched_qos)?;
    let diagnostics = advertise::<DiagnosticArray>(&mut node, resolve("/diagnostics")?, &diagnostics_qos)?;
    let serve_parameters = param_server::create(&mut node)?;

    let spinner = node.spinner().context("node spinner")?;
    let node = Arc::new(node);
    // Only now: until here (a model download included) Ctrl-C ends the process at once.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    // Discovery, graph bookkeeping (subscriber counts) and /clock run in the spinner.
    std::thread::Builder::new().name("ros-spinner".into()).spawn(move || {
        if let Err(e) = futures::executor::block_on(spinner.spin()) {
            tracing::error!("spinner stopped: {e:?}");
        }
    })?;
    let params_thread = {
        let stop = stop.clone();
        std::thread::Builder::new().name("parameters".into()).spawn(move || serve_parameters(state, stop))?
    };

    let (frame_tx, frame_rx) = latest::<Incoming>();
    let (side_tx, side_rx) = crossbeam_channel::bounded::<Side>(64);
    let processor = Processor::new(initial.pipeline, initial.labels, settings.output.clone());
    let tf = processor.tf.clone();
    let worker = {
        let publishers = Publishers { node: node.clone(), outputs, label_info, diagnostics, name: fqn.clone(), sim_time: sim_time.clone() };
        std::thread::Builder::new()
            .name("processing".into())
            .spawn(move || process_loop(processor, publishers, frame_rx, side_rx, update_rx))?
    };
    eprintln!("{fqn} running on ROS domain {} (loopback only: {}); Ctrl-C to stop", env.domain_id, env.localhost_only);

    let mut poll = Poll::new()?;
    image_sub.register(&poll, Token(0))?;
    poll.registry().register(&mut info_sub, Token(1), Interest::READABLE)?;
    depth_sub.register(&poll, Token(2))?;
    poll.registry().register(&mut right_sub, Token(3), Interest::READABLE)?;
    poll.registry().register(&mut right_info_sub, Token(4), Interest::READABLE)?;
    raw_depth_sub.register(&poll, Token(5))?;
    poll.registry().register(&mut depth_info_sub, Token(6), Interest::READABLE)?;
    if let Some(sub) = &mut clock_sub {
        poll.registry().register(sub, Token(7), Interest::READABLE)?;
    }
    poll.registry().register(&mut tf_static_sub, Token(8), Interest::READABLE)?;
    poll.registry().register(&mut tf_sub, Token(9), Interest::READABLE)?;
    let mut events = Events::with_capacity(10);
    let mut side_dropped = 0u64;
    while !stop.load(Ordering::Relaxed) && !worker.is_finished() {
        if let Err(e) = poll.poll(&mut events, Some(POLL)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!("poll: {e}");
            }
            continue;
        }
        if let (Some(sub), Some(now)) = (&clock_sub, &sim_time) {
            while let Some(clock) = take(sub, "/clock") {
                now.store(clock.clock.as_nanos(), Ordering::Relaxed);
            }
        }
        for (sub, is_static) in [(&tf_static_sub, true), (&tf_sub, false)] {
            while let Some(message) = take(sub, if is_static { "/tf_static" } else { "/tf" }) {
                tf::TransformTree::take_and_log(&tf, &message, is_static);
            }
        }
        // camera_info and depth first: a frame should find what was sent along with it.
        while let Some(info) = take(&info_sub, "camera_info") {
            side_dropped += side_tx.try_send(Side::CameraInfo(Box::new(info))).is_err() as u64;
        }
        while let Some(image) = depth_sub.take("depth_registered") {
            side_dropped += side_tx.try_send(Side::Depth { image, registered: true }).is_err() as u64;
        }
        while let Some(info) = take(&depth_info_sub, "depth/camera_info") {
            side_dropped += side_tx.try_send(Side::DepthCameraInfo(Box::new(info))).is_err() as u64;
        }
        while let Some(image) = raw_depth_sub.take("depth/image") {
            side_dropped += side_tx.try_send(Side::Depth { image, registered: false }).is_err() as u64;
        }
        while let Some(info) = take(&right_info_sub, "right/camera_info") {
            side_dropped += side_tx.try_send(Side::RightCameraInfo(Box::new(info))).is_err() as u64;
        }
        while let Some(right) = take(&right_sub, "right/image") {
            side_dropped += side_tx.try_send(Side::Right(right)).is_err() as u64;
        }
        // The newest frame wins; older ones waiting are counted as dropped.
        while let Some(image) = image_sub.take("image") {
            frame_tx.offer(Incoming { image, received: Instant::now() });
        }
    }
    if side_dropped > 0 {
        tracing::warn!("{side_dropped} camera_info/depth/right messages dropped while processing lagged");
    }
    stop.store(true, Ordering::Relaxed);
    drop(frame_tx);
    // A frame or a label encoding in progress gets a moment to finish; a long one (thousands of
    // labels, a model load) is left behind rather than holding up Ctrl-C.
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    for (thread, what) in [(&worker, "a frame"), (&params_thread, "a parameter change")] {
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !thread.is_finished() {
            tracing::warn!("stopping with {what} still in progress");
        }
    }
    node.stop_spinner();
    eprintln!("{fqn} stopped");
    Ok(())
}

fn subscribe<M: RosType + 'static>(node: &mut Node, name: Name, qos: &QosProfile) -> Result<Subscription<M>> {
    let topic = node.create_topic(&name, MessageTypeName::new(M::PACKAGE, M::NAME), qos)?;
    Ok(node.create_subscription::<M>(&topic, Some(qos.clone()))?)
}

fn advertise<M: RosType>(node: &mut Node, name: Name, qos: &QosProfile) -> Result<Publisher<M>> {
    let topic = node.create_topic(&name, MessageTypeName::new(M::PACKAGE, M::NAME), qos)?;
    Ok(node.create_publisher::<M>(&topic, Some(qos.clone()))?)
}

/// Next message, or None when none is waiting; a message that does not deserialize is logged
/// and skipped (the stream goes on).
fn take<M: 'static + serde::de::DeserializeOwned>(sub: &Subscription<M>, what: &str) -> Option<M> {
    loop {
        match sub.take() {
            Ok(Some((m, _))) => return Some(m),
            Ok(None) => return None,
            Err(e) => tracing::warn!("{what}: unreadable message skipped: {e:?}"),
        }
    }
}

enum OutputPublisher {
    Image(Publisher<Image>),
    Points(Publisher<PointCloud2>),
}

struct Publishers {
    node: Arc<Node>,
    outputs: BTreeMap<Topic, OutputPublisher>,
    label_info: Publisher<LabelInfo>,
    diagnostics: Publisher<DiagnosticArray>,
    name: String,
    /// Nanoseconds of the latest /clock message, with use_sim_time.
    sim_time: Option<Arc<AtomicI64>>,
}

impl Publishers {
    fn has_subscribers(&self, topic: Topic) -> bool {
        match self.outputs.get(&topic) {
            Some(OutputPublisher::Image(p)) => p.get_subscription_count(&self.node) > 0,
            Some(OutputPublisher::Points(p)) => p.get_subscription_count(&self.node) > 0,
            None => false,
        }
    }

    /// Publishes; false if the middleware refused (counted as a failed publish).
    fn publish(&self, msg: OutMsg) -> bool {
        match (self.outputs.get(&msg.topic()), msg) {
            (Some(OutputPublisher::Image(p)), OutMsg::Image(_, image)) => p.publish(image).is_ok(),
            (Some(OutputPublisher::Points(p)), OutMsg::Points(cloud)) => p.publish(cloud).is_ok(),
            _ => false,
        }
    }

    /// Stamp for label_info and /diagnostics: /clock time with use_sim_time, else the system's.
    fn now(&self) -> Time {
        match &self.sim_time {
            Some(nanos) => Time::from_nanos(nanos.load(Ordering::Relaxed)),
            None => Time::from_nanos(self.node.time_now().to_nanos()),
        }
    }

}

/// How long a frame that needs depth waits for its depth image to arrive.
const DEPTH_WAIT: Duration = Duration::from_millis(100);

fn process_loop(
    mut processor: Processor,
    publishers: Publishers,
    frames: LatestReceiver<Incoming>,
    side: Receiver<Side>,
    updates: Receiver<Update>,
) {
    let mut last_diagnostics = Instant::now();
    let mut failed_publishes = 0u64;
    loop {
        failed_publishes += apply_updates(&mut processor, &updates, &publishers);
        match frames.take(POLL) {
            Ok(incoming) => {
                // A change whose set call returned while this thread waited applies to this frame.
                failed_publishes += apply_updates(&mut processor, &updates, &publishers);
                // What was sent before this frame is in the side channel by now.
                drain_side(&mut processor, &side);
                let wanted = processor.wanted_topics(|t| publishers.has_subscribers(t));
                if wanted.iter().any(|t| t.needs_depth()) {
                    let stamp = incoming.image.stamp();
                    wait_for_depth_input(&mut processor, &side, stamp, incoming.received + DEPTH_WAIT);
                }
                let outcome = processor.process_input(incoming.image, incoming.received, wanted);
                if let FrameOutcome::Published(msgs) = outcome {
                    for msg in msgs {
                        failed_publishes += !publishers.publish(msg) as u64;
                    }
                }
            }
            Err(true) => break,
            Err(false) => drain_side(&mut processor, &side),
        }
        if last_diagnostics.elapsed().as_secs_f64() >= processor.settings().diagnostics_period {
            last_diagnostics = Instant::now();
            let mut status = processor.diagnostics(&publishers.name, frames.dropped());
            status.values.push(msgs::KeyValue { key: "failed_publishes".into(), value: failed_publishes.to_string() });
            let array = DiagnosticArray { header: Header { stamp: publishers.now(), frame_id: String::new() }, status: vec![status] };
            let _ = publishers.diagnostics.publish(array);
        }
    }
}

/// Applies parameter changes (between frames: a frame never mixes two label sets) and re-sends
/// label_info if they changed it; returns the number of failed publishes.
fn apply_updates(processor: &mut Processor, updates: &Receiver<Update>, publishers: &Publishers) -> u64 {
    for update in updates.try_iter() {
        processor.apply(update);
    }
    match processor.settings().publishes("publish_label_info").then(|| processor.take_label_info(publishers.now())).flatten() {
        Some(info) => publishers.label_info.publish(info).is_err() as u64,
        None => 0,
    }
}

fn drain_side(processor: &mut Processor, side: &Receiver<Side>) {
    for msg in side.try_iter() {
        apply_side(processor, msg);
    }
}

fn apply_side(processor: &mut Processor, msg: Side) {
    match msg {
        Side::CameraInfo(info) => processor.set_camera_info(*info),
        // Only the depth topic the current depth_registration reads.
        Side::Depth { image, registered } => {
            if registered == processor.settings().depth_registration.is_none() {
                processor.push_depth(image, if registered { "depth_registered" } else { "depth/image" });
            }
        }
        Side::DepthCameraInfo(info) => processor.set_depth_camera_info(*info),
        Side::RightCameraInfo(info) => processor.set_right_camera_info(*info),
        Side::Right(image) => processor.right.push(image),
    }
}

/// Camera drivers publish colour and depth (or left and right) at nearly the same time, in
/// either order.
fn wait_for_depth_input(processor: &mut Processor, side: &Receiver<Side>, stamp: Time, deadline: Instant) {
    while !processor.has_depth_input(stamp) {
        match side.recv_deadline(deadline) {
            Ok(msg) => apply_side(processor, msg),
            Err(_) => return,
        }
    }
}

