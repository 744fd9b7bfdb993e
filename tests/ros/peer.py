#!/usr/bin/env python3
"""ROS 2 test peer for the ovseg node: integration tests and benchmarks.

Run it with the interpreter of a venv made from tests/ros/requirements.txt:

    <venv>/bin/python tests/ros/peer.py SUBCOMMAND ...

Subcommands: pubsub, params, latency, passthrough, mcap-check, mcap-make
(`--help` on each).  Every subcommand prints exactly ONE JSON object on
stdout when it ends (`"ok": true|false`); logs go to stderr.  Every wait is
bounded; on a timeout the JSON has `"ok": false, "error": ...` and the exit
status is 1 (usage errors: 2, watchdog: 3).

Environment: the caller only sets ROS_DOMAIN_ID (a random id per test) and
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.  Everything else is set up here:
  * LD_LIBRARY_PATH: the `ros-wheels-bootstrapper` package (a dependency of
    the rclpy wheel) installs a .pth hook that re-execs the interpreter once
    at start-up with the venv's ROS library folders on LD_LIBRARY_PATH.
  * RMW_IMPLEMENTATION defaults to rmw_fastrtps_cpp (the only RMW installed),
    the discovery range defaults to LOCALHOST, and the deprecated
    ROS_LOCALHOST_ONLY is dropped so it cannot override the range.
  * Fast DDS is configured by tests/ros/fastdds_large_buffers.xml unless
    --fastdds-profile names another file ('' for none): large socket
    buffers, loopback only.  Without them frames above ~200 KB are mostly
    lost.  FASTDDS_DEFAULT_PROFILES_FILE (and the older FASTRTPS_ name) is
    set before rclpy.init(); Fast DDS reads it when it creates the
    participant, so no re-exec is needed.  With a profile the discovery
    range becomes SYSTEM_DEFAULT (why: configure_ros_env()).

vision_msgs is not on PyPI, so `label_info` (vision_msgs/msg/LabelInfo) is
read with a plain Cyclone DDS reader (`cyclonedds` package) whose IDL types
below mirror the ROS 2 message layout and DDS type names.
"""

import argparse
import array
import io
import json
import os
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

# Keep stdout for the final JSON only: native libraries (Fast DDS logs to
# std::cout) and stray prints are redirected to stderr at the fd level.
_JSON_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

# Importing rclpy reads no ROS_* / RMW_* variable: rclpy.init() and the first
# participant do, so configure_ros_env() only has to run before those.
import cyclonedds.idl.types as idl_types  # noqa: E402
import numpy as np  # noqa: E402
import rclpy  # noqa: E402
import rclpy.executors  # noqa: E402
from cyclonedds.core import Policy, Qos  # noqa: E402
from cyclonedds.domain import Domain, DomainParticipant  # noqa: E402
from cyclonedds.idl import IdlStruct  # noqa: E402
from cyclonedds.idl.annotations import final  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.sub import DataReader  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402
from cyclonedds.util import duration  # noqa: E402
from mcap.reader import make_reader  # noqa: E402
from mcap_ros2.decoder import DecoderFactory  # noqa: E402
from mcap_ros2.writer import Writer  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from rcl_interfaces.msg import Log, Parameter, ParameterEvent, ParameterValue  # noqa: E402
from rcl_interfaces.srv import (DescribeParameters, GetParameters,  # noqa: E402
                                ListParameters, SetParameters)
from rclpy.executors import ExternalShutdownException  # noqa: E402
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile,  # noqa: E402
                       ReliabilityPolicy)
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2  # noqa: E402

_T0 = time.monotonic()
_EMIT_LOCK = threading.Lock()
_EMITTED = False


def log(msg):
    print(f"[peer {time.monotonic() - _T0:7.3f}s] {msg}", file=sys.stderr, flush=True)


def emit(obj, code=0):
    """Print the one JSON result and exit (only the first call prints)."""
    global _EMITTED
    with _EMIT_LOCK:
        if not _EMITTED:
            _EMITTED = True
            _JSON_OUT.write(json.dumps(obj) + "\n")
            _JSON_OUT.flush()
    sys.stderr.flush()
    # os._exit: ROS is already shut down (or hung: watchdog); do not wait on
    # leftover DDS threads.
    os._exit(code)


class PeerError(Exception):
    """A failure reported as {"ok": false, "error": ...} plus partial results."""

    def __init__(self, message, **partial):
        super().__init__(message)
        self.partial = partial


def start_watchdog(seconds):
    """Last-resort bound: if the process is still alive after `seconds`
    (e.g. stuck inside a native call), report and exit."""
    def fire():
        log(f"watchdog: still running after {seconds:.0f}s, exiting")
        emit({"ok": False, "error": f"watchdog: exceeded {seconds:.0f}s"}, 3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def configure_ros_env(fastdds_profile):
    os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    if fastdds_profile:
        path = str(Path(fastdds_profile).resolve())
        if not os.path.isfile(path):
            raise PeerError(f"fastdds profile not found: {path}")
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = path
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = path
        # With LOCALHOST, rmw_fastrtps appends its own default SHM and UDPv4
        # transports to the profile's: local rclpy peers then talk over SHM
        # (512 KB segments, best-effort samples above that are mostly lost)
        # and a second UDP transport with default socket buffers.  With
        # SYSTEM_DEFAULT it leaves the transports to the profile, which must
        # then itself keep to loopback (fastdds_large_buffers.xml does).
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SYSTEM_DEFAULT"


# ---------------------------------------------------------------------------
# Images and synthetic inputs (shared by pubsub, latency and mcap-make)
# ---------------------------------------------------------------------------

# Without it, frames above ~200 KB are mostly lost (see the file's comment).
DEFAULT_PROFILE = Path(__file__).resolve().parent / "fastdds_large_buffers.xml"

# CLI encoding -> ROS encoding string (sensor_msgs/image_encodings.hpp, Jazzy).
# Jazzy names YUYV "yuyv" ("yuv422_yuy2" is its deprecated alias) and lists
# nv21 but not nv12; "nv12" is sent as is.
ENCODINGS = ["rgb8", "bgr8", "mono8", "rgba8", "bgra8", "yuyv", "nv12", "nv21"]


def parse_size(text):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}")
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def parse_floats(n):
    def parse(text):
        values = [float(v) for v in text.split(",")]
        if len(values) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
        return values
    return parse


def load_rgb(path, size=None):
    """Read an image file as an HxWx3 uint8 RGB array, optionally resized."""
    with PILImage.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != size:
            im = im.resize(size, PILImage.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def _bt601_video_yuv(rgb):
    """RGB -> Y, U, V (float) with BT.601 video range (Y 16..235, UV 16..240),
    the usual YCbCr of camera drivers (V4L2 default for SD formats)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    return y, u, v


def _u8(x):
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def encode_image(rgb, encoding):
    """Convert RGB to `encoding`; returns (ros_encoding, step, data bytes).

    mono8 is BT.601 luma (0.299 R + 0.587 G + 0.114 B, full range).  The YUV
    encodings use BT.601 video range; chroma is the mean of each 2-pixel pair
    (yuyv: Y0 U Y1 V per pair, step 2*W) or 2x2 block (nv12: full Y plane,
    then interleaved U,V at half resolution; nv21: V,U; step W, data
    W*H*3/2 bytes, message height stays H).
    """
    h, w, _ = rgb.shape
    if encoding == "rgb8":
        return "rgb8", 3 * w, rgb.tobytes()
    if encoding == "bgr8":
        return "bgr8", 3 * w, rgb[..., ::-1].tobytes()
    if encoding in ("rgba8", "bgra8"):
        px = rgb if encoding == "rgba8" else rgb[..., ::-1]
        alpha = np.full((h, w, 1), 255, np.uint8)
        return encoding, 4 * w, np.concatenate([px, alpha], axis=2).tobytes()
    if encoding == "mono8":
        r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
        return "mono8", w, _u8(0.299 * r + 0.587 * g + 0.114 * b).tobytes()
    y, u, v = _bt601_video_yuv(rgb)
    if encoding == "yuyv":
        if w % 2:
            raise PeerError(f"yuyv needs an even width, got {w}")
        out = np.empty((h, w // 2, 4), np.uint8)
        out[..., 0] = _u8(y[:, 0::2])
        out[..., 1] = _u8((u[:, 0::2] + u[:, 1::2]) / 2)
        out[..., 2] = _u8(y[:, 1::2])
        out[..., 3] = _u8((v[:, 0::2] + v[:, 1::2]) / 2)
        return "yuyv", 2 * w, out.tobytes()
    if encoding in ("nv12", "nv21"):
        if w % 2 or h % 2:
            raise PeerError(f"{encoding} needs even width and height, got {w}x{h}")

        def sub(c):
            return _u8((c[0::2, 0::2] + c[0::2, 1::2] + c[1::2, 0::2] + c[1::2, 1::2]) / 4)

        first, second = (u, v) if encoding == "nv12" else (v, u)
        uv = np.stack([sub(first), sub(second)], axis=2)
        return encoding, w, _u8(y).tobytes() + uv.tobytes()
    raise PeerError(f"unknown encoding {encoding}")


def synthetic_depth_mm(h, w):
    """Registered depth for tests, 16UC1 little-endian millimetres:
    value = 1000 + 4*row + (col % 7), and 0 (invalid) where col % 17 == 0."""
    rows = np.arange(h, dtype=np.uint32)[:, None]
    cols = np.arange(w, dtype=np.uint32)[None, :]
    depth = 1000 + 4 * rows + cols % 7
    depth = np.where(cols % 17 == 0, 0, depth)
    if depth.max() > 0xFFFF:
        raise PeerError(f"synthetic depth overflows 16 bits at height {h}")
    return depth.astype("<u2")


def header_fields(sec, nanosec, frame_id):
    return {"stamp": {"sec": sec, "nanosec": nanosec}, "frame_id": frame_id}


def image_fields(header, h, w, encoding, step, data):
    return {"header": header, "height": h, "width": w, "encoding": encoding,
            "is_bigendian": 0, "step": step, "data": data}


def ground_plane_depth_m(h, w, height, pitch):
    """32FC1 metres of flat ground seen by the camera_info_fields camera from
    `height` m, pitched down by `pitch` rad (level roll): the z where each pixel
    ray meets the ground; 0 (no measurement) above the horizon and, as holes to
    fill, on every 17th column."""
    f, cx, cy = float(w), (w - 1) / 2.0, (h - 1) / 2.0
    dy = (np.arange(h, dtype=np.float64)[:, None] - cy) / f
    along = np.broadcast_to(np.cos(pitch) * dy + np.sin(pitch), (h, w))
    z = np.zeros((h, w))
    below_horizon = along > 1e-9
    z[below_horizon] = height / along[below_horizon]
    z[:, np.arange(w) % 17 == 0] = 0.0
    return z.astype("<f4")


def depth_fields(header, h, w):
    return image_fields(header, h, w, "16UC1", 2 * w, synthetic_depth_mm(h, w).tobytes())


def compressed_depth_fields(header, h, w):
    """The synthetic 16UC1 depth as compressed_depth_image_transport sends it: a 12-byte
    header (format, two float quantization parameters, unused for 16UC1), then a 16-bit PNG."""
    import io
    png = io.BytesIO()
    PILImage.fromarray(synthetic_depth_mm(h, w).astype(np.uint16)).save(png, format="PNG")
    data = struct.pack("<iff", 0, 0.0, 0.0) + png.getvalue()
    return {"header": header, "format": "16UC1; compressedDepth png", "data": data}


def camera_info_fields(header, h, w, distortion=None):
    """Pinhole, fx = fy = width, principal point at the image centre,
    plumb_bob with the given coefficients (zero by default)."""
    f, cx, cy = float(w), (w - 1) / 2.0, (h - 1) / 2.0
    return {
        "header": header, "height": h, "width": w, "distortion_model": "plumb_bob",
        "d": list(distortion) if distortion else [0.0] * 5,
        "k": [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0],
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        "binning_x": 0, "binning_y": 0,
        "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False},
    }


class InputFrame:
    """One input image, encoded once, with its optional depth/camera_info."""

    def __init__(self, path, size, encoding):
        rgb = load_rgb(path, size)
        self.path = str(path)
        self.height, self.width = rgb.shape[:2]
        self.encoding, self.step, self.data = encode_image(rgb, encoding)

    def image(self, header):
        return image_fields(header, self.height, self.width, self.encoding, self.step, self.data)

    def compressed(self, header):
        """The file itself as image_transport's compressed transport sends a frame (the file
        must be a JPEG or PNG of the frame's size: no --resize)."""
        data = Path(self.path).read_bytes()
        kind = "png" if data.startswith(b"\x89PNG") else "jpeg"
        # What image_transport's compressed publisher writes for a bgr8 camera.
        return {"header": header, "format": f"bgr8; {kind} compressed bgr8", "data": data}

    def depth(self, header):
        return depth_fields(header, self.height, self.width)

    def camera_info(self, header, baseline=0.0, distortion=None):
        """This camera's info; with a baseline, as the right camera of a rectified
        pair (same intrinsics, P[0][3] = -f * baseline)."""
        info = camera_info_fields(header, self.height, self.width, distortion)
        if baseline:
            info["p"][3] = -info["p"][0] * baseline
        return info


BAD_KINDS = ["step", "encoding", "zero_size", "size_mismatch"]


def bad_frames(frame):
    """One malformed input per kind the node must count (and skip, but for a
    camera_info of another size, which only stops what needs it), as
    (kind, camera_info fields or None, image fields) with stamps 500+i."""
    w, h = frame.width, frame.height
    header = lambda i: header_fields(500 + i, 0, "camera")  # noqa: E731
    rgb = bytes(w * h * 3)
    return [
        ("step", None, image_fields(header(0), h, w, "rgb8", w * 3 - 1, rgb)),
        ("encoding", None, image_fields(header(1), h, w, "bayer_rggb8", w, rgb)),
        ("zero_size", None, image_fields(header(2), 0, 0, "rgb8", 0, b"")),
        ("size_mismatch", camera_info_fields(header(3), h * 2, w * 2),
         image_fields(header(3), h, w, "rgb8", w * 3, rgb)),
    ]


def input_stamp(index):
    """Distinct, recognisable stamp of the index-th published input."""
    return 1000 + index, 0


# ---------------------------------------------------------------------------
# ROS helpers
# ---------------------------------------------------------------------------

_NODES = []  # destroyed before exit: DDS says goodbye, Fast DDS frees its SHM files


def make_node(name):
    """rclpy.init() + a node with its single-threaded executor."""
    rclpy.init()
    node = rclpy.create_node(name)
    _NODES.append(node)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    return node, executor


def shutdown_ros():
    for node in _NODES:
        node.destroy_node()
    rclpy.try_shutdown()


def sensor_qos(depth=5):
    """REP-2003 sensor data QoS: best effort, keep last `depth`, volatile."""
    return QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT,
                      history=HistoryPolicy.KEEP_LAST, depth=depth,
                      durability=DurabilityPolicy.VOLATILE)


def input_qos(depth=10):
    """QoS of the inputs we publish: reliable keep-last, which matches both a
    best-effort and a reliable subscriber."""
    return QoSProfile(reliability=ReliabilityPolicy.RELIABLE,
                      history=HistoryPolicy.KEEP_LAST, depth=depth,
                      durability=DurabilityPolicy.VOLATILE)


def fill(msg, fields):
    """Set ROS message fields from a nested dict (the same dicts go to mcap)."""
    for key, value in fields.items():
        if isinstance(value, dict):
            fill(getattr(msg, key), value)
        elif isinstance(value, (bytes, bytearray)):
            # array.array is the only fast path of the generated setters.
            setattr(msg, key, array.array("B", value))
        else:
            setattr(msg, key, value)
    return msg


def spin_for(executor, seconds):
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        executor.spin_once(timeout_sec=min(left, 0.05))


def wait_until(executor, predicate, deadline, what):
    """Spin until predicate() is true; PeerError when `deadline` passes."""
    while not predicate():
        if time.monotonic() >= deadline:
            raise PeerError(f"timeout waiting for {what}")
        executor.spin_once(timeout_sec=0.05)


# --- label_info over plain Cyclone DDS -------------------------------------

def cyclone_config():
    """Loopback only, unicast discovery towards 127.0.0.1: Fast DDS with
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST opens no multicast port, it only
    answers SPDP on its unicast ports (7410 + 250*domain + 2*index)."""
    return ("<CycloneDDS><Domain id=\"any\"><General>"
            "<Interfaces><NetworkInterface address=\"127.0.0.1\"/></Interfaces>"
            "<AllowMulticast>false</AllowMulticast></General>"
            "<Discovery><ParticipantIndex>auto</ParticipantIndex>"
            "<MaxAutoParticipantIndex>32</MaxAutoParticipantIndex>"
            "<Peers><Peer address=\"127.0.0.1\"/></Peers></Discovery>"
            "</Domain></CycloneDDS>")


# vision_msgs/msg/LabelInfo and its parts as DDS types (names as rosidl
# generates them: pkg::msg::dds_::Type_).
@dataclass
@final
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: idl_types.int32
    nanosec: idl_types.uint32


@dataclass
@final
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time
    frame_id: str


@dataclass
@final
class VisionClass(IdlStruct, typename="vision_msgs::msg::dds_::VisionClass_"):
    class_id: idl_types.uint16
    class_name: str


@dataclass
@final
class LabelInfo(IdlStruct, typename="vision_msgs::msg::dds_::LabelInfo_"):
    header: Header
    class_map: idl_types.sequence[VisionClass]
    threshold: idl_types.float32


def latched_endpoint(kind, topic_name, data_type, latched=True):
    """A Cyclone DDS DataReader or DataWriter (`kind`) on a ROS topic, reliable; latched:
    transient local, keep last 1 (label_info, /tf_static), else volatile, keep last 100 (/tf)."""
    domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0"))
    domain = Domain(domain_id, cyclone_config())
    participant = DomainParticipant(domain_id)
    topic = Topic(participant, topic_name, data_type)
    durability = Policy.Durability.TransientLocal if latched else Policy.Durability.Volatile
    qos = Qos(Policy.Reliability.Reliable(duration(seconds=1)), durability,
              Policy.History.KeepLast(1 if latched else 100))
    endpoint = kind(participant, topic, qos=qos)
    # The endpoint does not own the domain and participant: keep them alive.
    endpoint.keepalive = (domain, participant, topic)
    return endpoint


def label_info_reader():
    return latched_endpoint(DataReader, "rt/label_info", LabelInfo)


def label_info_json(sample):
    return {
        "stamp": {"sec": sample.header.stamp.sec, "nanosec": sample.header.stamp.nanosec},
        "frame_id": sample.header.frame_id,
        "class_map": [{"class_id": c.class_id, "class_name": c.class_name}
                      for c in sample.class_map],
        "threshold": sample.threshold,
    }


# tf2_msgs/msg/TFMessage and its parts (tf2_msgs is not on PyPI either).
@dataclass
@final
class TfVector3(IdlStruct, typename="geometry_msgs::msg::dds_::Vector3_"):
    x: idl_types.float64
    y: idl_types.float64
    z: idl_types.float64


@dataclass
@final
class TfQuaternion(IdlStruct, typename="geometry_msgs::msg::dds_::Quaternion_"):
    x: idl_types.float64
    y: idl_types.float64
    z: idl_types.float64
    w: idl_types.float64


@dataclass
@final
class TfTransform(IdlStruct, typename="geometry_msgs::msg::dds_::Transform_"):
    translation: TfVector3
    rotation: TfQuaternion


@dataclass
@final
class TfTransformStamped(IdlStruct, typename="geometry_msgs::msg::dds_::TransformStamped_"):
    header: Header
    child_frame_id: str
    transform: TfTransform


@dataclass
@final
class TfMessage(IdlStruct, typename="tf2_msgs::msg::dds_::TFMessage_"):
    transforms: idl_types.sequence[TfTransformStamped]


def tf_message(transforms, sec=0, nanosec=0):
    """A TFMessage of --tf-static / --tf entries (PARENT CHILD X Y Z QX QY QZ QW each)."""
    return TfMessage(transforms=[
        TfTransformStamped(
            header=Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=parent),
            child_frame_id=child,
            transform=TfTransform(
                translation=TfVector3(*map(float, (x, y, z))),
                rotation=TfQuaternion(*map(float, (qx, qy, qz, qw)))))
        for parent, child, x, y, z, qx, qy, qz, qw in transforms])


def make_tf_writer(static):
    """A writer on rt/tf_static (reliable, transient local, as tf2's static broadcaster: a
    node that matches later still gets the transforms) or rt/tf (reliable, volatile)."""
    return latched_endpoint(DataWriter, "rt/tf_static" if static else "rt/tf", TfMessage, latched=static)


# ---------------------------------------------------------------------------
# pubsub
# ---------------------------------------------------------------------------

INPUT_MATCH_GRACE_S = 3.0
OUTPUT_TOPICS = ["mask", "depth", "label_info", "confidence", "overlay", "mask_color", "points"]


def message_meta(topic, msg):
    """JSON description of a received Image / PointCloud2 (data goes to .bin)."""
    meta = {
        "topic": topic,
        "stamp": {"sec": msg.header.stamp.sec, "nanosec": msg.header.stamp.nanosec},
        "frame_id": msg.header.frame_id,
        "height": msg.height,
        "width": msg.width,
        "is_bigendian": msg.is_bigendian,
        "data_len": len(msg.data),
    }
    if topic == "points":
        meta.update({
            "fields": [{"name": f.name, "offset": f.offset, "datatype": f.datatype,
                        "count": f.count} for f in msg.fields],
            "point_step": msg.point_step,
            "row_step": msg.row_step,
            "is_dense": msg.is_dense,
        })
    else:
        meta.update({"encoding": msg.encoding, "step": msg.step})
    return meta


def cmd_pubsub(a):
    if a.compressed and (a.resize or a.encoding != "rgb8"):
        raise PeerError("--compressed sends the files as they are: no --resize or --encoding")
    frames = [InputFrame(p, a.resize, a.encoding) for p in a.images]
    out_dir = Path(a.out) if a.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)

    node, executor = make_node("ovseg_test_peer")
    deadline = time.monotonic() + a.timeout

    if a.compressed:
        pubs = {"image": node.create_publisher(CompressedImage, "image/compressed", input_qos())}
    else:
        pubs = {"image": node.create_publisher(Image, "image", input_qos())}
    if a.camera_info:
        pubs["camera_info"] = node.create_publisher(CameraInfo, "camera_info", input_qos())
    if a.depth_mm and a.compressed_depth:
        pubs["depth_registered"] = node.create_publisher(
            CompressedImage, "depth_registered/compressedDepth", input_qos())
    elif a.depth_mm or a.depth_plane:
        pubs["depth_registered"] = node.create_publisher(Image, "depth_registered", input_qos())
    if a.depth_camera:
        pubs["depth/camera_info"] = node.create_publisher(CameraInfo, "depth/camera_info", input_qos())
        pubs["depth/image"] = node.create_publisher(Image, "depth/image", input_qos())
    rights = [InputFrame(p, a.resize, a.encoding) for p in a.right_images]
    if rights:
        pubs["right/camera_info"] = node.create_publisher(CameraInfo, "right/camera_info", input_qos())
        pubs["right/image"] = node.create_publisher(Image, "right/image", input_qos())
    if a.sim_clock is not None:
        pubs["/clock"] = node.create_publisher(Clock, "/clock", 10)
    if a.tf_static and a.tf:
        raise PeerError("--tf-static or --tf, not both (one Cyclone DDS participant per peer)")
    tf_writer = None

    def tick_clock():
        """Publishes simulated time: --sim-clock seconds plus the time since start."""
        if a.sim_clock is not None:
            ns = int((a.sim_clock + time.monotonic() - _T0) * 1e9)
            pubs["/clock"].publish(Clock(clock=Time(sec=ns // 10**9, nanosec=ns % 10**9)))

    published = []  # [{index, sec, nanosec, image}]
    published_stamps = set()
    image_topics = [t for t in dict.fromkeys(a.collect) if t != "label_info"]
    received = {t: {"count": 0, "matched": set(), "stamps": []} for t in image_topics}
    label_infos = []

    def on_message(topic, msg):
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        rec = received[topic]
        rec["count"] += 1
        rec["stamps"].append(list(stamp))
        if stamp in published_stamps:
            rec["matched"].add(stamp)
        if out_dir:
            base = out_dir / f"{topic}_{stamp[0]}_{stamp[1]}"
            base.with_suffix(".json").write_text(json.dumps(message_meta(topic, msg)))
            base.with_suffix(".bin").write_bytes(msg.data.tobytes())

    subs = {}
    for topic in image_topics:
        msg_type = PointCloud2 if topic == "points" else Image
        subs[topic] = node.create_subscription(
            msg_type, topic, lambda m, t=topic: on_message(t, m), sensor_qos())
    label_reader = label_info_reader() if "label_info" in a.collect else None
    diagnostics = {}
    diagnostics_stamp = []
    if a.diagnostics:
        def on_diagnostics(msg):
            diagnostics_stamp[:] = [msg.header.stamp.sec, msg.header.stamp.nanosec]
            for status in msg.status:
                diagnostics.clear()
                diagnostics.update({kv.key: kv.value for kv in status.values})
        subs["/diagnostics"] = node.create_subscription(
            DiagnosticArray, "/diagnostics", on_diagnostics, input_qos())

    def take_label_info():
        if label_reader is None:
            return
        for sample in label_reader.take(N=10):
            info = label_info_json(sample)
            label_infos.append(info)
            if out_dir:
                s = info["stamp"]
                (out_dir / f"label_info_{s['sec']}_{s['nanosec']}.json").write_text(json.dumps(info))

    def result():
        return {
            "published": published,
            "encoding": frames[0].encoding,
            "width": frames[0].width,
            "height": frames[0].height,
            "topics": {t: {"received": r["count"], "matched": len(r["matched"]),
                           "stamps": r["stamps"]} for t, r in received.items()},
            "label_info": label_infos[-1] if label_infos else None,
            "label_info_count": len(label_infos),
            "diagnostics": diagnostics if a.diagnostics else None,
            "diagnostics_stamp": diagnostics_stamp if a.diagnostics else None,
            "out_dir": str(out_dir) if out_dir else None,
            "unmatched": unmatched(),
            "elapsed_s": round(time.monotonic() - _T0, 3),
        }

    def unmatched(topics=None):
        missing = [f"subscriber on {t}" for t, p in pubs.items()
                   if (topics is None or t in topics) and p.get_subscription_count() == 0]
        missing += [f"publisher on {t}" for t, s in subs.items() if s.get_publisher_count() == 0]
        if label_reader is not None and \
                label_reader.get_subscription_matched_status().current_count == 0:
            missing.append("publisher on label_info")
        if tf_writer is not None and (topics is None or "tf" in topics) and \
                tf_writer.get_publication_matched_status().current_count == 0:
            missing.append("subscriber on /tf_static")
        return missing

    def done():
        take_label_info()
        if any(len(r["matched"]) < a.expect for r in received.values()):
            return False
        if a.bad_frames and sum(int(diagnostics.get(f"rejected.{k}", 0)) for k in BAD_KINDS) < len(BAD_KINDS):
            return False
        return label_reader is None or bool(label_infos)

    try:
        log("waiting for endpoints to match")
        wait_until(executor, lambda: not unmatched(["image"]), deadline, "matching endpoints")
        if a.tf_static or a.tf:
            # A second participant (Cyclone DDS) in this process, made only once the node
            # has matched the first: made before, the node at times received none of the
            # frames (3 runs in 16), made here in none of 28.
            tf_writer = make_tf_writer(static=bool(a.tf_static))
            wait_until(executor, lambda: not unmatched(["tf"]), deadline, "the node's tf reader")
            if a.tf_static:
                tf_writer.write(tf_message(a.tf_static))
        # camera_info / depth_registered subscribers are optional (a node may
        # not use them): a short grace, then go on and report them.
        grace = min(deadline, time.monotonic() + INPUT_MATCH_GRACE_S)
        while unmatched() and time.monotonic() < grace:
            executor.spin_once(timeout_sec=0.05)
        if unmatched():
            log(f"going on without: {unmatched()}")
        log("matched; publishing")
        period = 1.0 / a.rate_hz
        if a.bad_frames:
            # Each bad frame is sent once and must be counted once: give the node's
            # side of discovery a moment so none is lost before its reader matches.
            spin_for(executor, 1.0)
            for kind, info, image in bad_frames(frames[0]):
                log(f"publishing a bad frame: {kind}")
                tick_clock()
                if info is not None:
                    pubs["camera_info"].publish(fill(CameraInfo(), info))
                pubs["image"].publish(fill(Image(), image))
                spin_for(executor, period)
        next_at = time.monotonic()
        for index, frame in enumerate(frames * a.repeat):
            if (image_topics or label_reader) and done():
                break
            if time.monotonic() >= deadline:
                raise PeerError("timeout while publishing")
            sec, nanosec = input_stamp(index)
            header = header_fields(sec, nanosec, a.frame_id)
            published_stamps.add((sec, nanosec))
            tick_clock()
            # camera_info and depth first, so they are there when the image is.
            if "camera_info" in pubs:
                info = frame.camera_info(header, distortion=a.distortion)
                pubs["camera_info"].publish(fill(CameraInfo(), info))
            if a.depth_plane:
                z = ground_plane_depth_m(frame.height, frame.width, *a.depth_plane)
                depth = image_fields(header, frame.height, frame.width, "32FC1", 4 * frame.width, z.tobytes())
                pubs["depth_registered"].publish(fill(Image(), depth))
            elif a.compressed_depth:
                pubs["depth_registered"].publish(
                    fill(CompressedImage(), compressed_depth_fields(header, frame.height, frame.width)))
            elif "depth_registered" in pubs:
                pubs["depth_registered"].publish(fill(Image(), frame.depth(header)))
            if a.depth_camera:
                dw, dh = a.depth_camera
                depth_header = header_fields(sec, nanosec, a.depth_frame_id or a.frame_id)
                info = camera_info_fields(depth_header, dh, dw, a.distortion)
                pubs["depth/camera_info"].publish(fill(CameraInfo(), info))
                pubs["depth/image"].publish(fill(Image(), depth_fields(depth_header, dh, dw)))
            if a.tf:
                tf_writer.write(tf_message(a.tf, sec, nanosec))
            if rights:
                right = rights[index % len(rights)]
                pubs["right/camera_info"].publish(fill(CameraInfo(), right.camera_info(header, a.baseline)))
                pubs["right/image"].publish(fill(Image(), right.image(header)))
            if a.compressed:
                pubs["image"].publish(fill(CompressedImage(), frame.compressed(header)))
            else:
                pubs["image"].publish(fill(Image(), frame.image(header)))
            published.append({"index": index, "sec": sec, "nanosec": nanosec,
                              "image": frame.path})
            next_at += period
            spin_for(executor, max(0.0, next_at - time.monotonic()))
        if image_topics or label_reader:
            wanted = [f"{a.expect} stamp-matched message(s) on {t}" for t in image_topics]
            wanted += ["label_info"] if label_reader else []
            wanted += ["/diagnostics counting the bad frames"] if a.bad_frames else []
            wait_until(executor, done, deadline, ", ".join(wanted))
        else:
            # Nothing to collect: give reliable delivery a moment before exiting.
            spin_for(executor, 0.5)
    except PeerError as e:
        e.partial.update(result())
        raise
    return result()


# ---------------------------------------------------------------------------
# params
# ---------------------------------------------------------------------------

PARAM_TYPES = {  # rcl_interfaces/msg/ParameterType: code -> (name, value field)
    0: ("not_set", None),
    1: ("bool", "bool_value"),
    2: ("integer", "integer_value"),
    3: ("double", "double_value"),
    4: ("string", "string_value"),
    5: ("byte_array", "byte_array_value"),
    6: ("bool_array", "bool_array_value"),
    7: ("integer_array", "integer_array_value"),
    8: ("double_array", "double_array_value"),
    9: ("string_array", "string_array_value"),
}
PARAM_TYPE_CODES = {name: code for code, (name, _) in PARAM_TYPES.items()}


def infer_param_type(value):
    """JSON value -> ParameterType name, the way rclpy would type it.  A mixed
    list (which rclpy cannot type) is deliberately sent as integer_array, so a
    test can check that the node rejects a non-string-array `labels`."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        if value and all(isinstance(v, bool) for v in value):
            return "bool_array"
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "integer_array"
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "double_array"
        if all(isinstance(v, str) for v in value):
            return "string_array"  # includes the empty list, like rclpy
        return "integer_array"
    raise PeerError(f"cannot send {value!r} as a parameter")


def to_parameter_value(value, type_name):
    """Build rcl_interfaces/ParameterValue.  For a mixed list sent as
    integer_array, the integers go to integer_array_value and the other
    elements to the array field of their own type: a correct server reads only
    the field named by `type`."""
    pv = ParameterValue(type=PARAM_TYPE_CODES[type_name])
    field = PARAM_TYPES[pv.type][1]
    if field is None:
        return pv
    if not type_name.endswith("_array"):
        cast = {"bool": bool, "integer": int, "double": float, "string": str}[type_name]
        setattr(pv, field, cast(value))
        return pv
    if not isinstance(value, list):
        raise PeerError(f"{type_name} needs a JSON list, got {value!r}")
    if type_name == "byte_array":
        pv.byte_array_value = [bytes([int(v) & 0xFF]) for v in value]
        return pv
    element = {"bool_array": bool, "integer_array": int, "double_array": float,
               "string_array": str}[type_name]
    if element is int:
        ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        pv.integer_array_value = ints
        pv.string_array_value = [v for v in value if isinstance(v, str)]
        pv.double_array_value = [float(v) for v in value if isinstance(v, float)]
        pv.bool_array_value = [v for v in value if isinstance(v, bool)]
        return pv
    setattr(pv, field, [element(v) for v in value])
    return pv


def from_parameter_value(pv):
    name, field = PARAM_TYPES.get(pv.type, (f"unknown({pv.type})", None))
    if field is None:
        return name, None
    value = getattr(pv, field)
    if name == "byte_array":
        value = [b[0] if isinstance(b, bytes) else int(b) for b in value]
    elif name.endswith("_array"):
        value = list(value)
    return name, value


def parse_set(text):
    """`name=json` or `name:type=json` (type: a ParameterType name)."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=json_value, got {text!r}")
    name, _, forced = name.partition(":")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{name}: value is not JSON ({e}): {raw!r}")
    if forced and forced not in PARAM_TYPE_CODES:
        raise argparse.ArgumentTypeError(
            f"{name}: unknown type {forced!r}, one of {sorted(PARAM_TYPE_CODES)}")
    return name, value, forced or None


def cmd_params(a):

    node, executor = make_node("ovseg_param_peer")
    deadline = time.monotonic() + a.timeout
    target = a.node.rstrip("/")
    out = {"node": target}

    events, records = [], []
    if a.watch:
        # Volatile topics: match before anything happens, or it is missed.
        subs = [node.create_subscription(ParameterEvent, "/parameter_events", events.append, input_qos(100)),
                node.create_subscription(Log, "/rosout", records.append, input_qos(100))]
        wait_until(executor, lambda: all(s.get_publisher_count() > 0 for s in subs), deadline,
                   "/parameter_events and /rosout writers")

    def call(srv_type, name, request):
        client = node.create_client(srv_type, f"{target}/{name}")
        if not client.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
            raise PeerError(f"service {target}/{name} not available", **out)
        future = client.call_async(request)
        executor.spin_until_future_complete(
            future, timeout_sec=max(0.0, deadline - time.monotonic()))
        if not future.done():
            raise PeerError(f"no response from {target}/{name}", **out)
        return future.result()

    if a.set:
        request = SetParameters.Request()
        sent = []
        for name, value, forced in a.set:
            type_name = forced or infer_param_type(value)
            request.parameters.append(
                Parameter(name=name, value=to_parameter_value(value, type_name)))
            sent.append((name, type_name, value))
        response = call(SetParameters, "set_parameters", request)
        out["set"] = [{"name": name, "sent_type": type_name, "sent_value": value,
                       "successful": r.successful, "reason": r.reason}
                      for (name, type_name, value), r in zip(sent, response.results)]
    if a.get:
        values = call(GetParameters, "get_parameters", GetParameters.Request(names=a.get)).values
        if len(values) != len(a.get):
            # rclpy answers an empty list when any name is undeclared: ask one
            # by one so that each undeclared name shows up on its own.
            values = [(call(GetParameters, "get_parameters",
                            GetParameters.Request(names=[name])).values or [None])[0]
                      for name in a.get]
        out["get"], out["get_types"] = {}, {}
        for name, pv in zip(a.get, values):
            out["get_types"][name], out["get"][name] = \
                ("undeclared", None) if pv is None else from_parameter_value(pv)
    if a.describe:
        response = call(DescribeParameters, "describe_parameters",
                        DescribeParameters.Request(names=a.describe))
        out["describe"] = {
            d.name: {
                "name": d.name,
                "type": PARAM_TYPES.get(d.type, (str(d.type),))[0],
                "description": d.description,
                "additional_constraints": d.additional_constraints,
                "read_only": d.read_only,
                "dynamic_typing": d.dynamic_typing,
                "floating_point_range": [{"from_value": r.from_value, "to_value": r.to_value,
                                          "step": r.step} for r in d.floating_point_range],
                "integer_range": [{"from_value": r.from_value, "to_value": r.to_value,
                                   "step": r.step} for r in d.integer_range],
            } for d in response.descriptors}
    if a.list:
        response = call(ListParameters, "list_parameters", ListParameters.Request())
        out["list"] = sorted(response.result.names)
    if a.watch:
        spin_for(executor, 1.0)  # what the calls set off is on its way
        out["parameter_events"] = [{"node": e.node, "new": [p.name for p in e.new_parameters],
                                    "changed": [p.name for p in e.changed_parameters]} for e in events]
        out["rosout"] = [{"name": r.name, "level": r.level, "msg": r.msg} for r in records]
    return out


# ---------------------------------------------------------------------------
# latency / passthrough
# ---------------------------------------------------------------------------

def cdr_header_stamp(cdr):
    """(sec, nanosec) of a serialized message that starts with a std_msgs/Header:
    a 4-byte encapsulation header (byte 1: 1 = little endian), then the stamp."""
    return struct.unpack_from("<iI" if cdr[1] & 1 else ">iI", cdr, 4)


def latency_stats(values_ms):
    if not values_ms:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "min_ms": None, "max_ms": None}
    v = np.asarray(values_ms)
    return {"p50_ms": round(float(np.percentile(v, 50)), 3),
            "p99_ms": round(float(np.percentile(v, 99)), 3),
            "mean_ms": round(float(v.mean()), 3),
            "min_ms": round(float(v.min()), 3),
            "max_ms": round(float(v.max()), 3)}


def cmd_latency(a):
    frame = InputFrame(a.image, a.size, "rgb8")
    node, executor = make_node("ovseg_latency_peer")

    pub = node.create_publisher(Image, "image", input_qos(depth=2))
    depth_pub = node.create_publisher(Image, "depth_registered", input_qos(depth=2)) \
        if a.depth_mm else None
    lat = {t: [] for t in a.topics}
    seen = {t: set() for t in a.topics}
    sent = []
    published_stamps = set()

    def on_message(topic, cdr):
        now_ns = time.time_ns()
        stamp = cdr_header_stamp(cdr)
        if stamp not in published_stamps or stamp in seen[topic]:
            return
        seen[topic].add(stamp)
        lat[topic].append((now_ns - (stamp[0] * 1_000_000_000 + stamp[1])) / 1e6)

    # raw=True: only the stamp is read, so a 1 MB frame costs no Python decode
    # and the numbers are not dominated by this process.
    subs = [node.create_subscription(PointCloud2 if t == "points" else Image, t,
                                     lambda m, t=t: on_message(t, m), sensor_qos(), raw=True)
            for t in a.topics]
    deadline = time.monotonic() + a.match_timeout
    wait_until(executor, lambda: pub.get_subscription_count() > 0 and
               all(s.get_publisher_count() > 0 for s in subs), deadline, "matching endpoints")
    log("matched; publishing")

    msg = fill(Image(), frame.image(header_fields(0, 0, a.frame_id)))
    depth_msg = fill(Image(), frame.depth(header_fields(0, 0, a.frame_id)))

    def publisher():
        # A thread of its own keeps the publishing rate independent of the
        # callbacks; the stamp is the wall clock at publish time.
        period = 1.0 / a.rate_hz
        next_at = time.monotonic()
        end = next_at + a.seconds
        while time.monotonic() < end:
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
            published_stamps.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
            if depth_pub is not None:
                depth_msg.header.stamp = msg.header.stamp
                depth_pub.publish(depth_msg)
            pub.publish(msg)
            sent.append(now)
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    while thread.is_alive():
        executor.spin_once(timeout_sec=0.05)
    spin_for(executor, a.drain)  # late outputs

    topics = {t: {"received": len(lat[t]), "lost": len(sent) - len(lat[t]),
                  **latency_stats(lat[t])} for t in a.topics}
    elapsed = (sent[-1] - sent[0]) / 1e9 if len(sent) > 1 else 0.0
    return {"published": len(sent),
            "publish_rate_hz": round((len(sent) - 1) / elapsed, 2) if elapsed else None,
            "width": frame.width, "height": frame.height, "encoding": frame.encoding,
            "rate_hz": a.rate_hz, "seconds": a.seconds,
            "fastdds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"),
            "discovery_range": os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"],
            "topics": topics}


def cmd_passthrough(a):
    node, executor = make_node("ovseg_passthrough_peer")
    pubs = [node.create_publisher(Image, t, sensor_qos()) for t in a.outputs]
    forwarded = [0]

    def on_image(msg):
        # With raw=True msg is the serialized CDR (bytes): forwarded without a
        # decode/encode round trip, the floor of a Python node in this setup.
        for p in pubs:
            p.publish(msg)
        forwarded[0] += 1

    node.create_subscription(Image, a.input, on_image, sensor_qos(), raw=not a.deserialize)
    log(f"forwarding {a.input} -> {a.outputs} for {a.seconds}s")
    stopped_by = "time"
    try:
        spin_for(executor, a.seconds)
    except ExternalShutdownException:  # SIGINT / SIGTERM: a normal way to stop it
        stopped_by = "signal"
    return {"forwarded": forwarded[0], "input": a.input, "outputs": a.outputs,
            "raw": not a.deserialize, "stopped_by": stopped_by}


# ---------------------------------------------------------------------------
# mcap
# ---------------------------------------------------------------------------

# ros2msg schemas as the mcap ros2 profile wants them: the message definition,
# then each dependency after a line of 80 '=' and "MSG: pkg/Type" (comments
# of the .msg files left out).
_SEP = "=" * 80 + "\n"
_TIME = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n"
_HEADER = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n"
IMAGE_MSGDEF = (
    "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
    "uint8 is_bigendian\nuint32 step\nuint8[] data\n"
    + _SEP + _HEADER + _SEP + _TIME)
CAMERA_INFO_MSGDEF = (
    "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\n"
    "float64[] d\nfloat64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\n"
    "uint32 binning_y\nRegionOfInterest roi\n"
    + _SEP + _HEADER + _SEP + _TIME + _SEP
    + "MSG: sensor_msgs/RegionOfInterest\nuint32 x_offset\nuint32 y_offset\n"
    "uint32 height\nuint32 width\nbool do_rectify\n")


COMPRESSED_MSGDEF = ("std_msgs/Header header\nstring format\nuint8[] data\n" + _SEP + _HEADER + _SEP + _TIME)
TF_MSGDEF = (
    "geometry_msgs/TransformStamped[] transforms\n" + _SEP
    + "MSG: geometry_msgs/TransformStamped\nstd_msgs/Header header\nstring child_frame_id\n"
    "Transform transform\n" + _SEP + _HEADER + _SEP + _TIME + _SEP
    + "MSG: geometry_msgs/Transform\nVector3 translation\nQuaternion rotation\n" + _SEP
    + "MSG: geometry_msgs/Vector3\nfloat64 x\nfloat64 y\nfloat64 z\n" + _SEP
    + "MSG: geometry_msgs/Quaternion\nfloat64 x\nfloat64 y\nfloat64 z\nfloat64 w\n")


def tf_fields(transforms):
    """A TFMessage of --tf-static entries (PARENT CHILD X Y Z QX QY QZ QW)."""
    return {"transforms": [
        {"header": header_fields(0, 0, parent), "child_frame_id": child,
         "transform": {"translation": dict(zip("xyz", map(float, (x, y, z)))),
                       "rotation": dict(zip("xyzw", map(float, (qx, qy, qz, qw))))}}
        for parent, child, x, y, z, qx, qy, qz, qw in transforms]}


def cmd_mcap_make(a):

    frames = [InputFrame(p, a.resize, a.encoding) for p in a.images]
    rights = [InputFrame(p, a.resize, a.encoding) for p in a.right_images]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {}
    stamps = []
    with open(out, "wb") as f:
        writer = Writer(f)
        image_schema = writer.register_msgdef("sensor_msgs/msg/Image", IMAGE_MSGDEF)
        info_schema = writer.register_msgdef("sensor_msgs/msg/CameraInfo", CAMERA_INFO_MSGDEF)
        if a.compressed:
            compressed_schema = writer.register_msgdef("sensor_msgs/msg/CompressedImage", COMPRESSED_MSGDEF)
        if a.tf or a.tf_static:
            tf_schema = writer.register_msgdef("tf2_msgs/msg/TFMessage", TF_MSGDEF)

        def write(topic, schema, fields, log_time):
            writer.write_message(topic, schema, fields, log_time=log_time,
                                 publish_time=log_time, sequence=counts.get(topic, 0))
            counts[topic] = counts.get(topic, 0) + 1

        for i, frame in enumerate(frames):
            sec, nanosec = input_stamp(i)
            t_ns = sec * 1_000_000_000 + nanosec
            header = header_fields(sec, nanosec, a.frame_id)
            if a.camera_info:
                write("/camera_info", info_schema, frame.camera_info(header), t_ns)
            if a.depth_mm:
                write("/depth_registered", image_schema, frame.depth(header), t_ns)
            if a.tf:
                message = tf_fields(a.tf)
                for t in message["transforms"]:
                    t["header"]["stamp"] = header["stamp"]
                write("/tf", tf_schema, message, t_ns)
            if rights:
                right = rights[i % len(rights)]
                write("/right/camera_info", info_schema, right.camera_info(header, a.baseline), t_ns)
                write("/right/image", image_schema, right.image(header), t_ns)
            if a.compressed:
                write("/image/compressed", compressed_schema, frame.compressed(header), t_ns)
            else:
                write("/image", image_schema, frame.image(header), t_ns)
            stamps.append({"index": i, "sec": sec, "nanosec": nanosec, "image": frame.path})
        if a.tf_static:
            # Last in the bag: a reader must take static transforms before the first frame.
            sec, nanosec = input_stamp(len(frames))
            write("/tf_static", tf_schema, tf_fields(a.tf_static), sec * 1_000_000_000 + nanosec)
        writer.finish()
    return {"file": str(out), "bytes": out.stat().st_size, "counts": counts,
            "published": stamps, "encoding": frames[0].encoding,
            "width": frames[0].width, "height": frames[0].height}


def cmd_mcap_check(a):
    """Decode every message with mcap_ros2's decoder (what read_ros2_messages
    uses), one message at a time so that one bad message is reported and the
    rest are still checked."""

    topics, errors = {}, []
    factory = DecoderFactory()
    decoders = {}
    with open(a.file, "rb") as f:
        reader = make_reader(f)
        header = reader.get_header()
        try:
            for schema, channel, message in reader.iter_messages():
                entry = topics.setdefault(channel.topic, {
                    "count": 0, "decoded": 0,
                    "schema": schema.name if schema else None,
                    "schema_encoding": schema.encoding if schema else None,
                    "message_encoding": channel.message_encoding,
                    "encodings": [], "first_stamp": None})
                entry["count"] += 1
                try:
                    if schema is None:
                        raise ValueError("message without schema")
                    if schema.id not in decoders:
                        decoders[schema.id] = factory.decoder_for(channel.message_encoding, schema)
                    decode = decoders[schema.id]
                    if decode is None:
                        raise ValueError(f"no decoder for {channel.message_encoding}/"
                                         f"{schema.encoding}")
                    msg = decode(message.data)
                except Exception as e:  # report every undecodable message
                    errors.append({"topic": channel.topic, "sequence": message.sequence,
                                   "error": f"{type(e).__name__}: {e}"})
                    continue
                entry["decoded"] += 1
                enc = getattr(msg, "encoding", None)
                if enc is not None and enc not in entry["encodings"]:
                    entry["encodings"].append(enc)
                stamp = getattr(getattr(msg, "header", None), "stamp", None)
                if entry["first_stamp"] is None and stamp is not None:
                    entry["first_stamp"] = {"sec": stamp.sec, "nanosec": stamp.nanosec}
        except Exception as e:  # a corrupt file: keep what was read so far
            errors.append({"topic": None, "error": f"{type(e).__name__}: {e}"})
    result = {"file": a.file, "profile": header.profile, "topics": topics, "errors": errors}
    if errors:
        raise PeerError(f"{len(errors)} decode error(s)", **result)
    return result


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

class JsonArgumentParser(argparse.ArgumentParser):
    """Usage errors are reported as the one JSON object too (exit 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        emit({"ok": False, "error": f"usage: {message}"}, 2)


def add_transform_args(s, verb, static_where, dynamic_when):
    """--tf-static and --tf, each PARENT CHILD X Y Z QX QY QZ QW, repeatable."""
    metavar = ("PARENT", "CHILD", "X", "Y", "Z", "QX", "QY", "QZ", "QW")
    s.add_argument("--tf-static", nargs=9, action="append", default=[], metavar=metavar,
                   help=f"a transform to {verb} on {static_where} (repeat for more)")
    s.add_argument("--tf", nargs=9, action="append", default=[], metavar=metavar,
                   help=f"a transform to {verb} on /tf with each frame's stamp, {dynamic_when} (repeat for more)")


def build_parser():
    p = JsonArgumentParser(description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=JsonArgumentParser)

    ros = JsonArgumentParser(add_help=False)
    ros.add_argument("--fastdds-profile", metavar="FILE", default=str(DEFAULT_PROFILE),
                     help="Fast DDS XML profiles file (default: %(default)s, loopback "
                     "with large socket buffers; '' for plain rmw_fastrtps with "
                     "ROS_AUTOMATIC_DISCOVERY_RANGE from the environment)")

    s = sub.add_parser("pubsub", parents=[ros],
                       help="publish test inputs, collect the node's outputs")
    s.add_argument("--images", nargs="+", required=True, metavar="FILE")
    s.add_argument("--resize", type=parse_size, metavar="WxH")
    s.add_argument("--encoding", choices=ENCODINGS, default="rgb8")
    s.add_argument("--frame-id", default="camera")
    s.add_argument("--rate-hz", type=float, default=5.0)
    s.add_argument("--repeat", type=int, default=1, help="times each image is published")
    s.add_argument("--depth-mm", action="store_true",
                   help="also publish synthetic 16UC1 depth_registered")
    s.add_argument("--camera-info", action="store_true", help="also publish camera_info")
    s.add_argument("--distortion", type=parse_floats(5), metavar="K1,K2,P1,P2,K3",
                   help="plumb_bob coefficients of every published camera_info (default 0)")
    s.add_argument("--depth-camera", type=parse_size, metavar="WxH",
                   help="also publish synthetic 16UC1 depth/image of this size and its "
                        "depth/camera_info (f = width, centred), for depth registration")
    s.add_argument("--depth-frame-id", help="frame_id of the --depth-camera messages (default: --frame-id)")
    s.add_argument("--compressed", action="store_true",
                   help="publish each --images file as it is (JPEG or PNG) as sensor_msgs/CompressedImage "
                        "on image/compressed instead of a raw image on image")
    s.add_argument("--compressed-depth", action="store_true",
                   help="with --depth-mm: publish it on depth_registered/compressedDepth as "
                        "compressed_depth_image_transport does (16UC1, png)")
    add_transform_args(s, "publish", "/tf_static", "before the frame")
    s.add_argument("--depth-plane", type=parse_floats(2), metavar="HEIGHT,PITCH",
                   help="publish depth_registered as 32FC1 flat ground seen from HEIGHT m, "
                        "pitched down PITCH rad, with holes on every 17th column")
    s.add_argument("--right-images", nargs="*", default=[], metavar="FILE",
                   help="right images of rectified pairs, published on right/image (and "
                        "right/camera_info) with the stamp of the --images entry at the same index")
    s.add_argument("--baseline", type=float, default=0.1, help="stereo baseline (m) in right/camera_info")
    s.add_argument("--collect", nargs="*", choices=OUTPUT_TOPICS, default=[])
    s.add_argument("--expect", type=int, default=1,
                   help="stop after N messages with a published stamp on each collected topic")
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument("--out", metavar="DIR", help="write <topic>_<sec>_<nanosec>.json/.bin here")
    s.add_argument("--diagnostics", action="store_true",
                   help="report the node's latest /diagnostics key/values")
    s.add_argument("--sim-clock", type=float, metavar="SECONDS",
                   help="publish rosgraph_msgs/Clock on /clock from this time on, as a simulator does")
    s.add_argument("--bad-frames", action="store_true",
                   help="first publish one malformed frame per kind (needs --camera-info "
                   "and --diagnostics; waits until /diagnostics counts them)")

    s = sub.add_parser("params", parents=[ros], help="parameter services of a node")
    s.add_argument("--node", default="/segmenter")
    s.add_argument("--set", nargs="+", type=parse_set, default=[], metavar="NAME[:TYPE]=JSON")
    s.add_argument("--get", nargs="+", default=[], metavar="NAME")
    s.add_argument("--describe", nargs="+", default=[], metavar="NAME")
    s.add_argument("--list", action="store_true")
    s.add_argument("--watch", action="store_true",
                   help="also report what arrives on /parameter_events and /rosout meanwhile")
    s.add_argument("--timeout", type=float, default=20.0)

    s = sub.add_parser("latency", parents=[ros],
                       help="publish frames at a rate, measure output latency")
    s.add_argument("--image", required=True, metavar="FILE")
    s.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH")
    s.add_argument("--frame-id", default="camera")
    s.add_argument("--rate-hz", type=float, default=30.0)
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--topics", nargs="+", default=["mask", "depth"],
                   choices=[t for t in OUTPUT_TOPICS if t != "label_info"])
    s.add_argument("--depth-mm", action="store_true",
                   help="also publish synthetic 16UC1 depth_registered with each frame")
    s.add_argument("--match-timeout", type=float, default=30.0)
    s.add_argument("--drain", type=float, default=1.0,
                   help="seconds to keep receiving after the last frame")

    s = sub.add_parser("passthrough", parents=[ros],
                       help="republish `image` on mask and depth (baseline)")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--input", default="image")
    s.add_argument("--outputs", nargs="+", default=["mask", "depth"])
    s.add_argument("--deserialize", action="store_true",
                   help="decode and re-encode each message instead of forwarding CDR")

    s = sub.add_parser("mcap-check", help="decode every message of a ROS 2 mcap")
    s.add_argument("--file", required=True)

    s = sub.add_parser("mcap-make", help="write test inputs as a ROS 2 mcap")
    s.add_argument("--images", nargs="+", required=True, metavar="FILE")
    s.add_argument("--out", required=True, metavar="FILE")
    s.add_argument("--resize", type=parse_size, metavar="WxH")
    s.add_argument("--encoding", choices=ENCODINGS, default="rgb8")
    s.add_argument("--frame-id", default="camera")
    s.add_argument("--depth-mm", action="store_true")
    s.add_argument("--right-images", nargs="*", default=[], metavar="FILE",
                   help="right images of rectified pairs (/right/image, /right/camera_info)")
    s.add_argument("--baseline", type=float, default=0.1, help="stereo baseline (m) in /right/camera_info")
    s.add_argument("--camera-info", action="store_true")
    s.add_argument("--compressed", action="store_true",
                   help="write each --images file as it is as sensor_msgs/CompressedImage on /image/compressed")
    add_transform_args(s, "write", "/tf_static, after the frames", "before it")
    return p


COMMANDS = {"pubsub": cmd_pubsub, "params": cmd_params, "latency": cmd_latency,
            "passthrough": cmd_passthrough, "mcap-check": cmd_mcap_check,
            "mcap-make": cmd_mcap_make}


def main():
    a = build_parser().parse_args()
    bound = {"pubsub": getattr(a, "timeout", 0), "params": getattr(a, "timeout", 0),
             "latency": getattr(a, "match_timeout", 0) + getattr(a, "seconds", 0)
             + getattr(a, "drain", 0),
             "passthrough": getattr(a, "seconds", 0)}.get(a.cmd, 300.0)
    start_watchdog(bound + 30.0)
    try:
        if a.cmd not in ("mcap-check", "mcap-make"):
            configure_ros_env(a.fastdds_profile)
        code, out = 0, {"ok": True, **COMMANDS[a.cmd](a)}
    except PeerError as e:
        log(f"error: {e}")
        code, out = 1, {"ok": False, "error": str(e), **e.partial}
    except ExternalShutdownException:
        code, out = 1, {"ok": False, "error": "interrupted by a signal"}
    except Exception as e:  # unexpected: still one JSON object
        traceback.print_exc()
        code, out = 1, {"ok": False, "error": f"{type(e).__name__}: {e}"}
    shutdown_ros()
    emit(out, code)


if __name__ == "__main__":
    main()
