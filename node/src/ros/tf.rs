//! The transform tree read from `/tf_static` and `/tf`: each frame's pose in its parent (static,
//! or the last 10 s of `/tf`), and the pose of any frame in any other frame of the same tree,
//! latest or at a frame's stamp (interpolated between the `/tf` samples around it). Written
//! here rather than taken from a crate: it is a map, a walk to the root and an interpolation,
//! on the calibration crate's own transform type.
use std::collections::{HashMap, HashSet, VecDeque};
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

/// One frame's link to its parent.
struct Edge {
    parent: String,
    is_static: bool,
    /// The child's pose in the parent by stamp, oldest first (one entry when static).
    history: VecDeque<(Time, Extrinsics)>,
}

/// A lookup at a frame's stamp: `/tf` samples are interpolated around it, and the newest (or
/// oldest) is taken for a stamp up to `tolerance_ns` past it. Stamp zero means latest, as in tf2.
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub stamp: Time,
    pub tolerance_ns: i64,
}

/// How long `/tf` samples are kept (tf2's default cache time), and at most how many per frame.
const HISTORY_NS: i64 = 10_000_000_000;
const HISTORY_MAX: usize = 10_000;

impl Edge {
    /// Adds a `/tf` sample in stamp order; one far older than the newest means time jumped back,
    /// and starts the history again.
    fn add(&mut self, stamp: Time, pose: Extrinsics) {
        let newest = self.history.back().map_or(i64::MIN, |(t, _)| t.as_nanos());
        if newest.saturating_sub(stamp.as_nanos()) >= TIME_JUMP_NS {
            self.history.clear();
        }
        let at = self.history.partition_point(|(t, _)| *t < stamp);
        match self.history.get_mut(at) {
            Some((t, p)) if *t == stamp => *p = pose,
            _ => self.history.insert(at, (stamp, pose)),
        }
        let newest = self.history.back().map_or(0, |(t, _)| t.as_nanos());
        while self.history.len() > HISTORY_MAX || self.history.front().is_some_and(|(t, _)| newest - t.as_nanos() > HISTORY_NS) {
            self.history.pop_front();
        }
    }

    /// The child's pose in the parent, latest or at a stamp.
    fn pose(&self, at: Option<At>) -> Result<Extrinsics, String> {
        let (Some(&(oldest, first)), Some(&(newest, latest))) = (self.history.front(), self.history.back()) else {
            return Err("no transform".into());
        };
        let Some(At { stamp, tolerance_ns }) = at.filter(|a| !self.is_static && a.stamp.as_nanos() != 0) else {
            return Ok(latest);
        };
        let t = stamp.as_nanos();
        let seconds = |ns: i64| ns as f64 / 1e9;
        if t >= newest.as_nanos() {
            let ahead = t - newest.as_nanos();
            return match ahead <= tolerance_ns {
                true => Ok(latest),
                false => Err(format!("the newest /tf sample is {:.3} s older than the frame (tf_tolerance {:.3} s)", seconds(ahead), seconds(tolerance_ns))),
            };
        }
        if t < oldest.as_nanos() {
            let behind = oldest.as_nanos() - t;
            return match behind <= tolerance_ns {
                true => Ok(first),
                false => Err(format!("the frame is {:.3} s older than the oldest /tf sample kept", seconds(behind))),
            };
        }
        // oldest <= t < newest: samples on both sides.
        let after = self.history.partition_point(|(s, _)| s.as_nanos() <= t);
        let ((t0, a), (t1, b)) = (self.history[after - 1], self.history[after]);
        let f = (t - t0.as_nanos()) as f64 / (t1.as_nanos() - t0.as_nanos()) as f64;
        Ok(Extrinsics { isometry: a.isometry.lerp_slerp(&b.isometry, f) })
    }
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

/// `frame` and its ancestors up the `up` links ([`TransformTree::chain`]), nearest first.
fn ancestors<'a>(frame: &'a str, up: &[(&'a str, &'a Edge)]) -> Vec<&'a str> {
    std::iter::once(frame).chain(up.iter().map(|(_, e)| e.parent.as_str())).collect()
}

/// tf2 ignores a leading slash in frame names.
pub fn frame_name(name: &str) -> &str {
    name.trim().trim_start_matches('/')
}

impl TransformTree {
    /// Takes one transform: a static one replaces what its frame had; a `/tf` one joins its
    /// frame's samples, in stamp order (messages can arrive out of order). Refuses, naming the
    /// field and value, what is not a rigid transform between two named frames, or would close
    /// a loop.
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
        if let Some(edge) = self.edges.get_mut(child)
            && !is_static
            && !edge.is_static
            && edge.parent == parent
        {
            edge.add(t.header.stamp, pose);
            return Ok(());
        }
        if self.chain(parent).any(|(_, edge)| edge.parent == child) {
            return Err(format!("{topic}: transform '{parent}' -> '{child}' would close a loop ('{child}' is above '{parent}')"));
        }
        let history = VecDeque::from([(t.header.stamp, pose)]);
        self.edges.insert(child.to_string(), Edge { parent: parent.to_string(), is_static, history });
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
    /// tf2's lookupTransform(target, source, time) gives it: the latest, or `at` a stamp.
    pub fn lookup(&self, target: &str, source: &str, at: Option<At>) -> Result<Extrinsics, String> {
        let (target, source) = (frame_name(target), frame_name(source));
        if target == source {
            return Ok(Extrinsics::identity());
        }
        for frame in [target, source] {
            if !self.knows(frame) {
                return Err(format!("frame '{frame}' is not in the transform tree ({})", self.known_frames()));
            }
        }
        // The two frames' ancestors, up to their roots...
        let source_up: Vec<(&str, &Edge)> = self.chain(source).collect();
        let target_up: Vec<(&str, &Edge)> = self.chain(target).collect();
        let source_ancestors = ancestors(source, &source_up);
        // ...meet at the target's first ancestor that is also the source's.
        let meeting = ancestors(target, &target_up).iter().enumerate().find_map(|(i, f)| source_ancestors.iter().position(|s| s == f).map(|j| (i, j)));
        let Some((t_steps, s_steps)) = meeting else {
            let root = |up: &[&str]| up.last().copied().unwrap_or_default().to_string();
            let target_root = root(&ancestors(target, &target_up));
            return Err(format!("'{target}' and '{source}' are in two unconnected trees (their roots: '{target_root}' and '{}')", root(&source_ancestors)));
        };
        let up_to = |steps: &[(&str, &Edge)]| -> Result<Extrinsics, String> {
            let mut pose = Extrinsics::identity();
            for (child, edge) in steps {
                let step = edge.pose(at).map_err(|e| format!("transform '{}' -> '{child}': {e}", edge.parent))?;
                pose = Extrinsics { isometry: step.isometry * pose.isometry };
            }
            Ok(pose)
        };
        let (target_pose, source_pose) = (up_to(&target_up[..t_steps])?, up_to(&source_up[..s_steps])?);
        Ok(Extrinsics { isometry: target_pose.isometry.inverse() * source_pose.isometry })
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

    /// The links from `frame` up to its root, nearest first: (child, its edge to its parent).
    fn chain<'a>(&'a self, frame: &'a str) -> impl Iterator<Item = (&'a str, &'a Edge)> + 'a {
        let mut current = frame;
        // Bounded: insert refuses loops, but a bound costs nothing.
        (0..=self.edges.len()).map_while(move |_| {
            let edge = self.edges.get(current)?;
            let child = current;
            current = &edge.parent;
            Some((child, edge))
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
        let pose = tree.lookup("base_footprint", "optical", None).unwrap();
        let origin = pose.transform(&Point3::origin());
        assert!(close(origin, Point3::new(0.2, 0.0, 0.8)), "{origin}");
        let ahead = pose.transform(&Point3::new(0.0, 0.0, 1.0)) - origin;
        assert!((ahead.x - 0.4f64.cos()).abs() < 1e-12 && (ahead.z + 0.4f64.sin()).abs() < 1e-12, "{ahead}");
        // Upwards is the inverse.
        let back = tree.lookup("optical", "base_footprint", None).unwrap();
        let p = Point3::new(1.0, -2.0, 0.5);
        assert!(close(back.transform(&pose.transform(&p)), p));
    }

    #[test]
    fn a_lookup_between_branches_goes_through_their_common_ancestor() {
        let tree = robot();
        let optical_to_depth = tree.lookup("optical", "depth", None).unwrap();
        let via_base = tree.lookup("base_link", "optical", None).unwrap().inverse().isometry * tree.lookup("base_link", "depth", None).unwrap().isometry;
        let p = Point3::new(0.3, 0.1, 2.0);
        assert!(close(optical_to_depth.transform(&p), via_base.transform_point(&p)));
        assert_eq!(tree.lookup("optical", "optical", None).unwrap(), Extrinsics::identity());
    }

    #[test]
    fn unknown_and_unconnected_frames_are_named() {
        let mut tree = TransformTree::default();
        let e = tree.lookup("base_link", "camera", None).unwrap_err();
        assert!(e.contains("'base_link'") && e.contains("nothing received"), "{e}");
        tree = robot();
        let e = tree.lookup("base_link", "camera", None).unwrap_err();
        assert!(e.contains("'camera' is not in the transform tree") && e.contains("base_footprint, base_link"), "{e}");
        tree.insert(&transform("map", "odom", [1.0, 0.0, 0.0], [0.0; 3], 0), false).unwrap();
        let e = tree.lookup("odom", "optical", None).unwrap_err();
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
        assert!(tree.lookup("base_footprint", "optical", None).is_ok());
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

    /// A lookup of `odom` -> `base_footprint` x at `sec` seconds (0.1 s tolerance).
    fn x_at(tree: &TransformTree, sec: f64) -> Result<f64, String> {
        let at = At { stamp: Time::from_nanos((sec * 1e9) as i64), tolerance_ns: 100_000_000 };
        tree.lookup("odom", "base_footprint", Some(at)).map(|p| p.isometry.translation.x)
    }

    #[test]
    fn lookups_at_a_stamp_interpolate_between_samples_and_refuse_far_outside_them() {
        let mut tree = robot();
        for (sec, x, yaw) in [(10, 1.0, 0.0), (11, 3.0, 0.5), (12, 4.0, 0.5)] {
            tree.insert(&transform("odom", "base_footprint", [x, 0.0, 0.0], [0.0, 0.0, yaw], sec), false).unwrap();
        }
        assert_eq!(x_at(&tree, 10.5).unwrap(), 2.0);
        // Rotations are interpolated too (slerp), and the static rest of the chain is composed.
        let halfway = tree.lookup("odom", "base_link", Some(At { stamp: Time { sec: 10, nanosec: 500_000_000 }, tolerance_ns: 0 })).unwrap();
        assert!((halfway.rpy()[2] - 0.25).abs() < 1e-12 && (halfway.isometry.translation.z - 0.3).abs() < 1e-12, "{halfway:?}");
        // Just past the newest, or just before the oldest: those; further: refused, with the gap.
        assert_eq!((x_at(&tree, 12.05).unwrap(), x_at(&tree, 9.95).unwrap()), (4.0, 1.0));
        let e = x_at(&tree, 12.5).unwrap_err();
        assert!(e.contains("'odom' -> 'base_footprint'") && e.contains("0.500 s older than the frame"), "{e}");
        assert!(x_at(&tree, 9.0).unwrap_err().contains("1.000 s older than the oldest"));
        // Stamp zero is the latest, as in tf2; static transforms have no time.
        assert_eq!(x_at(&tree, 0.0).unwrap(), 4.0);
        assert!(tree.lookup("base_footprint", "optical", Some(At { stamp: Time { sec: 99, nanosec: 0 }, tolerance_ns: 0 })).is_ok());
        // Samples older than 10 s before the newest are dropped.
        tree.insert(&transform("odom", "base_footprint", [9.0, 0.0, 0.0], [0.0; 3], 21), false).unwrap();
        assert!(x_at(&tree, 10.5).is_err());
        assert_eq!(x_at(&tree, 16.5).unwrap(), 6.5);
    }

    #[test]
    fn the_newest_dynamic_transform_wins_whatever_the_arrival_order() {
        let mut tree = robot();
        tree.insert(&transform("odom", "base_footprint", [2.0, 0.0, 0.0], [0.0; 3], 10), false).unwrap();
        tree.insert(&transform("odom", "base_footprint", [1.0, 0.0, 0.0], [0.0; 3], 9), false).unwrap();
        let x = |tree: &TransformTree| tree.lookup("odom", "base_footprint", None).unwrap().isometry.translation.x;
        assert_eq!(x(&tree), 2.0);
        tree.insert(&transform("odom", "base_footprint", [3.0, 0.0, 0.0], [0.0; 3], 11), false).unwrap();
        assert_eq!(x(&tree), 3.0);
        // Far older: time jumped back (a restarted simulation), so it is taken.
        tree.insert(&transform("odom", "base_footprint", [4.0, 0.0, 0.0], [0.0; 3], 1), false).unwrap();
        assert_eq!(x(&tree), 4.0);
    }
}
