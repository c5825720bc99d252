//! CLEVRER's per-video annotation files → clip labels.
//!
//! The official schema (fields this reader does not use are ignored):
//!
//! ```text
//! { "scene_index": 0, "video_filename": "video_00000.mp4",
//!   "object_property":   [ {"object_id", "color", "material", "shape"} ],
//!   "motion_trajectory": [ {"frame_id", "objects": [ {"object_id", "location": [x,y,z],
//!                           "velocity": [x,y,z], "inside_camera_view", ...} ]} ]   one per video frame
//!   "collision":         [ {"object_ids": [a, b], "frame_id", "location": [x,y,z]} ] }
//! ```
//! An annotation is checked against its video before it is trusted: the file
//! name and scene number must match, there must be one trajectory entry per
//! decoded frame, and every object id it mentions must be a listed object.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
struct RawAnnotation {
    scene_index: Option<u64>,
    video_filename: Option<String>,
    object_property: Vec<RawObject>,
    motion_trajectory: Vec<RawFrame>,
    #[serde(default)]
    collision: Vec<RawCollision>,
}

#[derive(Deserialize)]
struct RawObject {
    object_id: i64,
    color: String,
    material: String,
    shape: String,
}

#[derive(Deserialize)]
struct RawFrame {
    frame_id: i64,
    objects: Vec<RawState>,
}

#[derive(Deserialize)]
struct RawState {
    object_id: i64,
    location: [f64; 3],
    velocity: [f64; 3],
    inside_camera_view: Option<bool>,
}

#[derive(Deserialize)]
struct RawCollision {
    object_ids: [i64; 2],
    frame_id: i64,
    location: Option<[f64; 3]>,
}

/// A parsed annotation, not yet checked against its video.
pub struct Annotation(RawAnnotation);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectLabel {
    pub id: i64,
    pub color: String,
    pub material: String,
    pub shape: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollisionLabel {
    pub objects: [i64; 2],
    /// Source video frame.
    pub frame: usize,
    pub location: Option<[f64; 3]>,
}

/// What a clip's label holds from its annotation. Per-frame fields have one
/// entry per clip frame (the sampled source frames) and, inside it, one entry
/// per object in `objects` order; `null` where the annotation omits the object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnnotationLabels {
    pub scene_index: Option<u64>,
    pub object_count: usize,
    pub objects: Vec<ObjectLabel>,
    pub colors: Vec<String>,
    pub shapes: Vec<String>,
    pub materials: Vec<String>,
    pub collision_count: usize,
    /// Source frames of the collisions, in annotation order.
    pub collision_frames: Vec<usize>,
    pub collisions: Vec<CollisionLabel>,
    /// [clip frame][object] = [x, y, z] in CLEVRER's world units.
    pub locations: Vec<Vec<Option<[f64; 3]>>>,
    pub velocities: Vec<Vec<Option<[f64; 3]>>>,
    pub inside_camera_view: Vec<Vec<Option<bool>>>,
}

/// Reads and parses an annotation file. The error, after the file name, is the reason to skip the video.
pub fn read_annotation(path: &Path) -> Result<Annotation, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot be read ({e})"))?;
    serde_json::from_str(&text).map(Annotation).map_err(|e| format!("is not valid CLEVRER annotation JSON ({e})"))
}

impl Annotation {
    /// Labels for a clip of `video_file` (its file name), whose `video_frames`
    /// decoded frames were sampled at `frame_indices`. The error says how the
    /// annotation disagrees with the video.
    pub fn labels(
        &self,
        video_file: &str,
        video_number: Option<u64>,
        video_frames: usize,
        frame_indices: &[usize],
    ) -> Result<AnnotationLabels, String> {
        let a = &self.0;
        if let Some(name) = a.video_filename.as_deref().filter(|n| *n != video_file) {
            return Err(format!("it is for {name}, not {video_file}"));
        }
        if let (Some(scene), Some(number)) = (a.scene_index, video_number) {
            if scene != number {
                return Err(format!("its scene_index is {scene}, the video is number {number}"));
            }
        }
        if a.motion_trajectory.len() != video_frames {
            return Err(format!(
                "it has trajectories for {} frames, the video has {video_frames}",
                a.motion_trajectory.len()
            ));
        }
        let mut slot_of: HashMap<i64, usize> = HashMap::new();
        for (slot, object) in a.object_property.iter().enumerate() {
            if slot_of.insert(object.object_id, slot).is_some() {
                return Err(format!("object_id {} is listed twice in object_property", object.object_id));
            }
        }
        let slot = |id: i64, place: &str| {
            slot_of.get(&id).copied().ok_or_else(|| format!("{place} mentions object_id {id}, not in object_property"))
        };
        let frame = |id: i64, place: &str| {
            usize::try_from(id)
                .ok()
                .filter(|&f| f < video_frames)
                .ok_or_else(|| format!("{place} has frame_id {id}, outside the video's {video_frames} frames"))
        };
        // Trajectory entries by frame; each frame exactly once.
        let mut by_frame: Vec<Option<&RawFrame>> = vec![None; video_frames];
        for entry in &a.motion_trajectory {
            let f = frame(entry.frame_id, "motion_trajectory")?;
            if by_frame[f].replace(entry).is_some() {
                return Err(format!("motion_trajectory lists frame_id {f} twice"));
            }
        }
        // Object ids of every frame are checked, not just of the sampled ones.
        for entry in by_frame.iter().flatten() {
            for state in &entry.objects {
                slot(state.object_id, "motion_trajectory")?;
            }
        }
        let objects = a.object_property.len();
        let (mut locations, mut velocities, mut visible) = (Vec::new(), Vec::new(), Vec::new());
        for &f in frame_indices {
            let (mut loc, mut vel, mut vis) = (vec![None; objects], vec![None; objects], vec![None; objects]);
            for state in by_frame[f].map(|e| e.objects.as_slice()).unwrap_or_default() {
                let s = slot(state.object_id, "motion_trajectory")?;
                loc[s] = Some(state.location);
                vel[s] = Some(state.velocity);
                vis[s] = Some(state.inside_camera_view.unwrap_or(true));
            }
            locations.push(loc);
            velocities.push(vel);
            visible.push(vis);
        }
        let mut collisions = Vec::with_capacity(a.collision.len());
        for c in &a.collision {
            for &id in &c.object_ids {
                slot(id, "a collision")?;
            }
            collisions.push(CollisionLabel {
                objects: c.object_ids,
                frame: frame(c.frame_id, "a collision")?,
                location: c.location,
            });
        }
        let objects_list: Vec<ObjectLabel> = a
            .object_property
            .iter()
            .map(|o| ObjectLabel {
                id: o.object_id,
                color: o.color.clone(),
                material: o.material.clone(),
                shape: o.shape.clone(),
            })
            .collect();
        Ok(AnnotationLabels {
            scene_index: a.scene_index,
            object_count: objects,
            colors: objects_list.iter().map(|o| o.color.clone()).collect(),
            shapes: objects_list.iter().map(|o| o.shape.clone()).collect(),
            materials: objects_list.iter().map(|o| o.material.clone()).collect(),
            objects: objects_list,
            collision_count: collisions.len(),
            collision_frames: collisions.iter().map(|c| c.frame).collect(),
            collisions,
            locations,
            velocities,
            inside_camera_view: visible,
        })
    }
}
