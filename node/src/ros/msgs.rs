//! ROS 2 message types the node speaks, as serde structs in IDL field order (CDR is positional),
//! each with its package/name and full `.msg` definition for recording.
use ros2_client::Message;
use serde::{Deserialize, Serialize};

/// A ROS message type: its name and the `ros2msg` definition text (with dependencies) that
/// recorders store as the schema.
pub trait RosType: Message {
    const PACKAGE: &'static str;
    const NAME: &'static str;
    const DEFINITION: &'static str;

    fn schema_name() -> String {
        format!("{}/msg/{}", Self::PACKAGE, Self::NAME)
    }
}

macro_rules! ros_type {
    ($ty:ty, $package:literal, $name:literal, $definition:expr) => {
        impl Message for $ty {}
        impl RosType for $ty {
            const PACKAGE: &'static str = $package;
            const NAME: &'static str = $name;
            const DEFINITION: &'static str = $definition;
        }
    };
}

macro_rules! dependency {
    ($name:literal, $text:expr) => {
        concat!(
            "================================================================================\n",
            "MSG: ",
            $name,
            "\n",
            $text
        )
    };
}

macro_rules! header_deps {
    () => {
        concat!(
            dependency!("std_msgs/Header", "builtin_interfaces/Time stamp\nstring frame_id\n"),
            dependency!("builtin_interfaces/Time", "int32 sec\nuint32 nanosec\n")
        )
    };
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

/// As a log shows a stamp: seconds, then the nanoseconds in nine digits.
impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nanosec)
    }
}

impl Time {
    pub fn as_nanos(self) -> i64 {
        self.sec as i64 * 1_000_000_000 + self.nanosec as i64
    }

    pub fn from_nanos(nanos: i64) -> Self {
        Time { sec: nanos.div_euclid(1_000_000_000) as i32, nanosec: nanos.rem_euclid(1_000_000_000) as u32 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub stamp: Time,
    pub frame_id: String,
}

/// rosgraph_msgs/Clock: simulated time on `/clock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Clock {
    pub clock: Time,
}
ros_type!(Clock, "rosgraph_msgs", "Clock", concat!("builtin_interfaces/Time clock\n", dependency!("builtin_interfaces/Time", "int32 sec\nuint32 nanosec\n")));

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    pub encoding: String,
    pub is_bigendian: u8,
    pub step: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image {}x{} {} step {} ({} bytes)", self.width, self.height, self.encoding, self.step, self.data.len())
    }
}

ros_type!(Image, "sensor_msgs", "Image", concat!(
    "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data\n",
    header_deps!()
));

/// sensor_msgs/CompressedImage: what image_transport's `compressed` transport sends (`format`
/// such as "bgr8; jpeg compressed bgr8", `data` a whole JPEG or PNG file).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompressedImage {
    pub header: Header,
    pub format: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for CompressedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompressedImage '{}' ({} bytes)", self.format, self.data.len())
    }
}

ros_type!(CompressedImage, "sensor_msgs", "CompressedImage", concat!("std_msgs/Header header\nstring format\nuint8[] data\n", header_deps!()));

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionOfInterest {
    pub x_offset: u32,
    pub y_offset: u32,
    pub height: u32,
    pub width: u32,
    pub do_rectify: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CameraInfo {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    pub distortion_model: String,
    pub d: Vec<f64>,
    pub k: [f64; 9],
    pub r: [f64; 9],
    pub p: [f64; 12],
    pub binning_x: u32,
    pub binning_y: u32,
    pub roi: RegionOfInterest,
}
ros_type!(CameraInfo, "sensor_msgs", "CameraInfo", concat!(
    "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\nfloat64[] d\nfloat64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\nuint32 binning_y\nsensor_msgs/RegionOfInterest roi\n",
    header_deps!(),
    dependency!("sensor_msgs/RegionOfInterest", "uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n")
));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointField {
    pub name: String,
    pub offset: u32,
    pub datatype: u8,
    pub count: u32,
}

impl PointField {
    pub const UINT16: u8 = 4;
    pub const FLOAT32: u8 = 7;
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointCloud2 {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    pub fields: Vec<PointField>,
    pub is_bigendian: bool,
    pub point_step: u32,
    pub row_step: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    pub is_dense: bool,
}

impl std::fmt::Debug for PointCloud2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PointCloud2 {}x{} step {}", self.width, self.height, self.point_step)
    }
}

ros_type!(PointCloud2, "sensor_msgs", "PointCloud2", concat!(
    "std_msgs/Header header\nuint32 height\nuint32 width\nsensor_msgs/PointField[] fields\nbool is_bigendian\nuint32 point_step\nuint32 row_step\nuint8[] data\nbool is_dense\n",
    header_deps!(),
    dependency!("sensor_msgs/PointField", "uint8 INT8=1\nuint8 UINT8=2\nuint8 INT16=3\nuint8 UINT16=4\nuint8 INT32=5\nuint8 UINT32=6\nuint8 FLOAT32=7\nuint8 FLOAT64=8\nstring name\nuint32 offset\nuint8 datatype\nuint32 count\n")
));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionClass {
    pub class_id: u16,
    pub class_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelInfo {
    pub header: Header,
    pub class_map: Vec<VisionClass>,
    pub threshold: f32,
}
ros_type!(LabelInfo, "vision_msgs", "LabelInfo", concat!(
    "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n",
    header_deps!(),
    dependency!("vision_msgs/VisionClass", "uint16 class_id\nstring class_name\n")
));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticStatus {
    pub level: u8,
    pub name: String,
    pub message: String,
    pub hardware_id: String,
    pub values: Vec<KeyValue>,
}

impl DiagnosticStatus {
    pub const OK: u8 = 0;
    pub const WARN: u8 = 1;
    pub const ERROR: u8 = 2;
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticArray {
    pub header: Header,
    pub status: Vec<DiagnosticStatus>,
}
ros_type!(DiagnosticArray, "diagnostic_msgs", "DiagnosticArray", concat!(
    "std_msgs/Header header\ndiagnostic_msgs/DiagnosticStatus[] status\n",
    header_deps!(),
    dependency!("diagnostic_msgs/DiagnosticStatus", "byte OK=0\nbyte WARN=1\nbyte ERROR=2\nbyte STALE=3\nbyte level\nstring name\nstring message\nstring hardware_id\ndiagnostic_msgs/KeyValue[] values\n"),
    dependency!("diagnostic_msgs/KeyValue", "string key\nstring value\n")
));

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Vector3 {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quaternion {
    pub x: f64,
    pub y: f64,
    pub z: f64,
    pub w: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    pub translation: Vector3,
    pub rotation: Quaternion,
}

/// geometry_msgs/TransformStamped: the pose of `child_frame_id` in `header.frame_id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransformStamped {
    pub header: Header,
    pub child_frame_id: String,
    pub transform: Transform,
}

/// tf2_msgs/TFMessage: what `/tf` and `/tf_static` carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TfMessage {
    pub transforms: Vec<TransformStamped>,
}
ros_type!(TfMessage, "tf2_msgs", "TFMessage", concat!(
    "geometry_msgs/TransformStamped[] transforms\n",
    dependency!("geometry_msgs/TransformStamped", "std_msgs/Header header\nstring child_frame_id\nTransform transform\n"),
    header_deps!(),
    dependency!("geometry_msgs/Transform", "Vector3 translation\nQuaternion rotation\n"),
    dependency!("geometry_msgs/Vector3", "float64 x\nfloat64 y\nfloat64 z\n"),
    dependency!("geometry_msgs/Quaternion", "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n")
));

/// CDR encapsulation header for little-endian plain CDR, as stored in front of every sample.
const CDR_LE_HEADER: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

/// A message as a serialized CDR sample (encapsulation header + payload), the form recorders store.
pub fn to_cdr<M: Serialize>(message: &M) -> Result<Vec<u8>, cdr_encoding::Error> {
    let mut out = CDR_LE_HEADER.to_vec();
    out.extend(cdr_encoding::to_vec::<M, byteorder::LittleEndian>(message)?);
    Ok(out)
}

/// Parses a CDR sample (with its encapsulation header, either byte order).
pub fn from_cdr<M: for<'de> Deserialize<'de>>(sample: &[u8]) -> Result<M, String> {
    if sample.len() < 4 {
        return Err(format!("sample of {} bytes has no CDR header", sample.len()));
    }
    let payload = &sample[4..];
    let parsed = match sample[1] {
        0x01 => cdr_encoding::from_bytes::<M, byteorder::LittleEndian>(payload),
        0x00 => cdr_encoding::from_bytes::<M, byteorder::BigEndian>(payload),
        other => return Err(format!("unsupported CDR representation 0x{other:02x}")),
    };
    parsed.map(|(m, _)| m).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEPARATOR: &str = "================================================================================\n";
    const TIME_MSG: &str = "int32 sec\nuint32 nanosec\n";
    const IMAGE_MSG: &str = "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data\n";

    #[test]
    fn cdr_round_trip_keeps_every_field() {
        let info = CameraInfo {
            header: Header { stamp: Time { sec: 7, nanosec: 9 }, frame_id: "cam".into() },
            height: 2,
            width: 3,
            distortion_model: "plumb_bob".into(),
            d: vec![0.1, 0.2, 0.0, 0.0, 0.0],
            k: [1.0, 0.0, 2.0, 0.0, 1.0, 3.0, 0.0, 0.0, 1.0],
            r: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            p: [1.0; 12],
            binning_x: 0,
            binning_y: 0,
            roi: RegionOfInterest::default(),
        };
        let back: CameraInfo = from_cdr(&to_cdr(&info).unwrap()).unwrap();
        assert_eq!(back, info);
    }

    #[test]
    fn definitions_name_their_dependencies() {
        assert!(Image::DEFINITION.starts_with(IMAGE_MSG));
        assert!(Image::DEFINITION.contains(&format!("{SEPARATOR}MSG: builtin_interfaces/Time\n{TIME_MSG}")));
        assert!(DiagnosticArray::DEFINITION.contains("MSG: diagnostic_msgs/KeyValue\n"));
        assert_eq!(LabelInfo::schema_name(), "vision_msgs/msg/LabelInfo");
    }

    #[test]
    fn time_nanos_round_trip_including_negative() {
        for nanos in [0i64, 1, 1_500_000_000, -1, -1_500_000_001] {
            assert_eq!(Time::from_nanos(nanos).as_nanos(), nanos);
        }
    }
}
