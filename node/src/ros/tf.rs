//! The transform tree read from `/tf_static` and `/tf`: each frame's latest pose in its parent,
//! and the pose of any frame in any other frame of the same tree. Written here rather than taken
//! from a crate: the node needs only the latest transforms (cameras are bolted to the robot), so
//! a map and a walk to the root do, on the calibration crate's own transform type.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use calibration::Extrinsics;

use super::msgs::{TfMessage, Time, TransformStamped};

/// Shared between the thread that reads DDS and the one that processes frames.
#[derive(Clone, Default)]
pub struct SharedTree(Arc<Mutex<TransformTree>>);

impl SharedTree {
    pub fn lock(&self) -> MutexGuard<'_, TransformTree> {
        // A panic elsewhere while holding the lock leaves a map that is still whole.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Edge {
    parent: String,
    /// The child's pose in the parent.
    pose: Extrinsics,
    stamp: Time,
    is_static: bool,
}

#[derive(Default)]
pub struct TransformTree {
    edges: HashMap<String, Edge>,
    /// Transforms refused so far, and why the latest was.
    rejected: u64,
    last_rejected: Option<String>,
    /// Refusals already logged.
    logged: HashSet<String>,
}

/// How much older than the held one a `/tf` transform must be to count as time having jumped
/// back (a simulation restarted, a bag looped) rather than a late message.
const TIME_JUMP_NS: i64 = 5_000_000_000;

/// Distinct refusal messages remembered so that each is logged once.
const REFUSALS_REMEMBERED: usize = 256;

/// tf2 ignores a leading slash in frame names.
pub fn frame_name(name: &str) -> &str {
    name.trim().trim_start_matches('/')
}

impl TransformTree {
    /// Takes one transform; a `/tf` transform older than the one held for its frame is ignored
    /// (messages can arrive out of order), unless it is so much older that time has jumped
    /// back, which a restarted simulation or a looped bag does. Refuses, naming the field and value, what is not a
    /// rigid transform between two named frames, or would close a loop.
    pub fn insert(&mut self, t: &TransformStamped, is_static: bool) -> Result<(), String> {
        let (parent, child) = (frame_name(&t.header.frame_id), frame_name(&t.child_frame_id));
        let topic = if is_static { "/tf_static" } else { "/tf" };
        if parent.is_empty() || child.is_empty() {
            return Err(format!("{topic}: transform with an empty frame (header.frame_id '{}', child_frame_id '{}')", t.header.frame_id, t.child_frame_id));
        }
        if parent == child {
            return Err(format!("{topic}: transform from '{child}' to itself"));
        }
        let (v, q) = (t.transform.translation, t.transform.rotation);
        let pose = Extrinsics::from_xyz_quaternion([v.x, v.y, v.z], [q.x, q.y, q.z, q.w])
            .map_err(|e| format!("{topic}: transform '{parent}' -> '{child}': {e}"))?;
        if let Some(old) = self.edges.get(child)
            && !is_static
            && !old.is_static
            && old.parent == parent
            && old.stamp > t.header.stamp
            && old.stamp.as_nanos() - t.header.stamp.as_nanos() < TIME_JUMP_NS
        {
            return Ok(());
        }
        if self.ancestors(parent).any(|(frame, _)| frame == child) {
            return Err(format!("{topic}: transform '{parent}' -> '{child}' would close a loop ('{child}' is above '{parent}')"));
        }
        self.edges.insert(child.to_string(), Edge { parent: parent.to_string(), pose, stamp: t.header.stamp, is_static });
        Ok(())
    }

    /// Takes every transform of a message; refused ones are counted (see [`Self::rejected`]),
    /// and their errors returned.
    pub fn take(&mut self, message: &TfMessage, is_static: bool) -> Vec<String> {
        let errors: Vec<String> = message.transforms.iter().filter_map(|t| self.insert(t, is_static).err()).collect();
        if let Some(last) = errors.last() {
            self.rejected += errors.len() as u64;
            self.last_rejected = Some(last.clone());
        }
        errors
    }

    /// Takes a message and logs each refusal the first time it comes up (a broadcaster repeats
    /// its transforms at its rate); /diagnostics counts every one.
    pub fn take_and_log(shared: &SharedTree, message: &TfMessage, is_static: bool) {
        let errors = shared.lock().take(message, is_static);
        for error in errors {
            let mut tree = shared.lock();
            if tree.logged.len() < REFUSALS_REMEMBERED && tree.logged.insert(error.clone()) {
                drop(tree);
                tracing::warn!("{error}; transform ignored (counted in /diagnostics as tf_rejected)");
            }
        }
    }

    /// How many transforms were refused, and why the latest was.
    pub fn rejected(&self) -> Option<(u64, &str)> {
        self.last_rejected.as_deref().map(|why| (self.rejected, why))
    }

    /// Number of frames that have a parent.
    pub fn len(&self) -> usize {
        self.edges.len()
    }

    /// The pose of `source` in `target` (what maps points given in `source` to `target`), as
    /// tf2's lookupTransform(target, source) gives it.
    pub fn lookup(&self, target: &str, source: &str) -> Result<Extrinsics, String> {
        let (target, source) = (frame_name(target), frame_name(source));
        if target == source {
            return Ok(Extrinsics::identity());
        }
        for frame in [target, source] {
            if !self.knows(frame) {
                return Err(format!("frame '{frame}' is not in the transform tree ({})", self.known_frames()));
            }
        }
        // The source's pose in each of its ancestors (itself included)...
        let mut source_in = HashMap::from([(source, Extrinsics::identity())]);
        for (frame, pose) in self.ancestors(source) {
            source_in.insert(frame, pose);
        }
        // ...and the target's, up to the first ancestor they share.
        let in_common = std::iter::once((target, Extrinsics::identity())).chain(self.ancestors(target));
        let mut root = target;
        for (frame, target_pose) in in_common {
            if let Some(source_pose) = source_in.get(frame) {
                return Ok(Extrinsics { isometry: target_pose.isometry.inverse() * source_pose.isometry });
            }
            root = frame;
        }
        let source_root = self.ancestors(source).last().map_or(source, |(frame, _)| frame);
        Err(format!("'{target}' and '{source}' are in two unconnected trees (their roots: '{root}' and '{source_root}')"))
    }

    fn knows(&self, frame: &str) -> bool {
        self.edges.contains_key(frame) || self.edges.values().any(|e| e.parent == frame)
    }

    /// "known: a, b, c" (sorted, at most 12), or "which is empty".
    fn known_frames(&self) -> String {
        let mut frames: Vec<&str> = self.edges.iter().flat_map(|(child, e)| [child.as_str(), e.parent.as_str()]).collect::<HashSet<_>>().into_iter().collect();
        if frames.is_empty() {
            return "which is empty: nothing received on /tf_static or /tf".into();
        }
        frames.sort_unstable();
        let more = frames.len().saturating_sub(12);
        frames.truncate(12);
        let suffix = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("known: {}{suffix}", frames.join(", "))
    }

    /// `frame`'s ancestors, nearest first, each with `frame`'s pose in it.
    fn ancestors<'a>(&'a self, frame: &'a str) -> impl Iterator<Item = (&'a str, Extrinsics)> + 'a {
        let mut current = frame;
        let mut pose = Extrinsics::identity();
        // Bounded: insert refuses loops, but a bound costs nothing.
        (0..=self.edges.len()).map_while(move |_| {
            let edge = self.edges.get(current)?;
            pose = Extrinsics { isometry: edge.pose.isometry * pose.isometry };
            current = &edge.parent;
            Some((current, pose))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ros::msgs::{Header, Quaternion, Transform, Vector3};
    use nalgebra::{Point3, UnitQuaternion};
    use std::f64::consts::FRAC_PI_2;

    fn transform(parent: &str, child: &str, xyz: [f64; 3], rpy: [f64; 3], sec: i32) -> TransformStamped {
        let q = UnitQuaternion::from_euler_angles(rpy[0], rpy[1], rpy[2]).coords;
        TransformStamped {
            header: Header { stamp: Time { sec, nanosec: 0 }, frame_id: parent.into() },
            child_frame_id: child.into(),
            transform: Transform { translation: Vector3 { x: xyz[0], y: xyz[1], z: xyz[2] }, rotation: Quaternion { x: q.x, y: q.y, z: q.z, w: q.w } },
        }
    }

    fn close(a: Point3<f64>, b: Point3<f64>) -> bool {
        (a - b).norm() < 1e-12
    }

    /// base_footprint -> base_link -> camera_link -> optical, and base_link -> depth.
    fn robot() -> TransformTree {
        let mut tree = TransformTree::default();
        tree.insert(&transform("base_footprint", "base_link", [0.0, 0.0, 0.3], [0.0; 3], 0), true).unwrap();
        tree.insert(&transform("base_link", "camera_link", [0.2, 0.0, 0.5], [0.0, 0.4, 0.0], 0), true).unwrap();
        tree.insert(&transform("/camera_link", "optical", [0.0; 3], [-FRAC_PI_2, 0.0, -FRAC_PI_2], 0), true).unwrap();
        tree.insert(&transform("base_link", "depth", [0.1, -0.05, 0.4], [0.1, 0.2, 0.3], 0), true).unwrap();
        tree
    }

    #[test]
    fn a_lookup_composes_the_chain_and_its_inverse() {
        let tree = robot();
        // The optical axis (z) of a camera pitched 0.4 rad down points forward and down.
        let pose = tree.lookup("base_footprint", "optical").unwrap();
        let origin = pose.transform(&Point3::origin());
        assert!(close(origin, Point3::new(0.2, 0.0, 0.8)), "{origin}");
        let ahead = pose.transform(&Point3::new(0.0, 0.0, 1.0)) - origin;
        assert!((ahead.x - 0.4f64.cos()).abs() < 1e-12 && (ahead.z + 0.4f64.sin()).abs() < 1e-12, "{ahead}");
        // Upwards is the inverse.
        let back = tree.lookup("optical", "base_footprint").unwrap();
        let p = Point3::new(1.0, -2.0, 0.5);
        assert!(close(back.transform(&pose.transform(&p)), p));
    }

    #[test]
    fn a_lookup_between_branches_goes_through_their_common_ancestor() {
        let tree = robot();
        let optical_to_depth = tree.lookup("optical", "depth").unwrap();
        let via_base = tree.lookup("base_link", "optical").unwrap().inverse().isometry * tree.lookup("base_link", "depth").unwrap().isometry;
        let p = Point3::new(0.3, 0.1, 2.0);
        assert!(close(optical_to_depth.transform(&p), via_base.transform_point(&p)));
        assert_eq!(tree.lookup("optical", "optical").unwrap(), Extrinsics::identity());
    }

    #[test]
    fn unknown_and_unconnected_frames_are_named() {
        let mut tree = TransformTree::default();
        let e = tree.lookup("base_link", "camera").unwrap_err();
        assert!(e.contains("'base_link'") && e.contains("nothing received"), "{e}");
        tree = robot();
        let e = tree.lookup("base_link", "camera").unwrap_err();
        assert!(e.contains("'camera' is not in the transform tree") && e.contains("base_footprint, base_link"), "{e}");
        tree.insert(&transform("map", "odom", [1.0, 0.0, 0.0], [0.0; 3], 0), false).unwrap();
        let e = tree.lookup("odom", "optical").unwrap_err();
        assert!(e.contains("unconnected") && e.contains("'map'") && e.contains("'base_footprint'"), "{e}");
    }

    #[test]
    fn bad_transforms_are_refused_by_name_and_leave_the_tree_as_it_was() {
        let mut tree = robot();
        let mut zero = transform("base_link", "lidar", [0.0; 3], [0.0; 3], 0);
        zero.transform.rotation = Quaternion { x: 0.0, y: 0.0, z: 0.0, w: 0.0 };
        let e = tree.insert(&zero, true).unwrap_err();
        assert!(e.contains("'base_link' -> 'lidar'") && e.contains("rotation_quaternion"), "{e}");
        let mut nan = transform("base_link", "lidar", [0.0; 3], [0.0; 3], 0);
        nan.transform.translation.y = f64::NAN;
        assert!(tree.insert(&nan, false).unwrap_err().contains("translation"));
        let e = tree.insert(&transform("optical", "base_footprint", [0.0; 3], [0.0; 3], 0), false).unwrap_err();
        assert!(e.contains("loop"), "{e}");
        assert!(tree.insert(&transform("", "x", [0.0; 3], [0.0; 3], 0), false).unwrap_err().contains("empty frame"));
        assert!(tree.insert(&transform("x", "/x", [0.0; 3], [0.0; 3], 0), false).unwrap_err().contains("to itself"));
        assert_eq!(tree.len(), 4);
        assert!(tree.lookup("base_footprint", "optical").is_ok());
    }

    #[test]
    fn a_message_is_taken_transform_by_transform_and_refusals_are_counted() {
        let mut tree = TransformTree::default();
        let mut bad = transform("base_link", "lidar", [0.0; 3], [0.0; 3], 0);
        bad.transform.rotation.w = 0.0;
        let good = transform("base_link", "camera", [0.0; 3], [0.0; 3], 0);
        let errors = tree.take(&TfMessage { transforms: vec![bad.clone(), good, bad] }, true);
        assert_eq!(errors.len(), 2);
        assert_eq!(tree.len(), 1);
        let (n, why) = tree.rejected().unwrap();
        assert!(n == 2 && why.contains("/tf_static") && why.contains("'lidar'"), "{n} {why}");
    }

    #[test]
    fn the_newest_dynamic_transform_wins_whatever_the_arrival_order() {
        let mut tree = robot();
        tree.insert(&transform("odom", "base_footprint", [2.0, 0.0, 0.0], [0.0; 3], 10), false).unwrap();
        tree.insert(&transform("odom", "base_footprint", [1.0, 0.0, 0.0], [0.0; 3], 9), false).unwrap();
        let x = |tree: &TransformTree| tree.lookup("odom", "base_footprint").unwrap().isometry.translation.x;
        assert_eq!(x(&tree), 2.0);
        tree.insert(&transform("odom", "base_footprint", [3.0, 0.0, 0.0], [0.0; 3], 11), false).unwrap();
        assert_eq!(x(&tree), 3.0);
        // Far older: time jumped back (a restarted simulation), so it is taken.
        tree.insert(&transform("odom", "base_footprint", [4.0, 0.0, 0.0], [0.0; 3], 1), false).unwrap();
        assert_eq!(x(&tree), 4.0);
    }
}
