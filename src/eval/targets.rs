//! Probe targets from a dataset's labels (`labels.jsonl`).
//!
//! Four probes, each asking what a linear read-out of the features can say
//! about the clip the encoder saw (its `num_frames` evenly spaced frames):
//!
//! - **count**: how many balls (bouncing) or objects (CLEVRER); the classes
//!   are the distinct counts present.
//! - **positions**: the centroid (x, y) of the balls at the first, middle and
//!   last selected frame — 6 targets. The centroid, not ball 0's position,
//!   because which ball is "ball 0" is not visible in the pixels.
//! - **velocity**: the mean velocity (vx, vy) of the balls and their mean
//!   speed at the middle selected frame — 3 targets, order-invariant too.
//! - **collision**: whether two balls collide between the first and the last
//!   selected frame (binary).
//!
//! A label without what a probe needs leaves that clip out of it; a probe no
//! clip has a target for is reported as "n/a" with the reason.
//!
//! Label forms read: bouncing-ball labels (`data::synthetic::ClipLabels`:
//! `ball_count`, `positions`/`velocities` [frame][ball] = [x, y], `collisions`
//! of `data::bouncing::Event`, whose `frame` f means the contact happened
//! between stored frames f − 1 and f), and CLEVRER labels
//! (`data::clevrer::annotations::AnnotationLabels`: `object_count`,
//! `locations`/`velocities` [clip frame][object] = [x, y, z] or null; its
//! collision frames are source-video frames, usable only where the label
//! also lists the source frame of each clip frame, as `source_frames` or
//! `frame_indices`).

use crate::data::loader::evenly_spaced_frames;
use crate::data::shards::ShardDataset;
use crate::error::Result;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;

/// What a probe predicts, one entry per clip (`None`: this clip has no target).
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Classes { class_names: Vec<String>, labels: Vec<Option<usize>> },
    Values { names: Vec<String>, values: Vec<Option<Vec<f64>>> },
}

/// One probe's targets, or why it cannot be run on this dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTarget {
    pub name: String,
    pub target: std::result::Result<Target, String>,
}

/// The label fields the probes use; everything else in a label is ignored.
#[derive(Deserialize, Default)]
struct LabelFields {
    ball_count: Option<usize>,
    object_count: Option<usize>,
    /// Bouncing: [frame][ball] = [x, y]. CLEVRER uses `locations`.
    positions: Option<Vec<Vec<Option<Vec<f64>>>>>,
    locations: Option<Vec<Vec<Option<Vec<f64>>>>>,
    velocities: Option<Vec<Vec<Option<Vec<f64>>>>>,
    collisions: Option<Vec<Value>>,
    source_frames: Option<Vec<usize>>,
    frame_indices: Option<Vec<usize>>,
}

/// The object holding a clip's labels: the label itself, or (for labels that
/// nest their annotation) its first object-valued field with a count.
fn label_body(label: &Value) -> &Value {
    let has_count = |v: &Value| v.get("ball_count").is_some() || v.get("object_count").is_some();
    if has_count(label) {
        return label;
    }
    label.as_object().and_then(|o| o.values().find(|v| v.is_object() && has_count(v))).unwrap_or(label)
}

fn parse(label: &Value) -> LabelFields {
    LabelFields::deserialize(label_body(label)).unwrap_or_default()
}

/// Frames of a clip the targets refer to (indices into the stored frames).
#[derive(Clone, Copy, Debug)]
struct Moments {
    first: usize,
    middle: usize,
    last: usize,
}

/// Mean of the (x, y) of the objects present at `frame` (None if none is).
fn centroid(per_frame: &[Vec<Option<Vec<f64>>>], frame: usize) -> Option<[f64; 2]> {
    let points: Vec<[f64; 2]> = per_frame
        .get(frame)?
        .iter()
        .flatten()
        .filter(|p| p.len() >= 2 && p[0].is_finite() && p[1].is_finite())
        .map(|p| [p[0], p[1]])
        .collect();
    if points.is_empty() {
        return None;
    }
    let n = points.len() as f64;
    Some([points.iter().map(|p| p[0]).sum::<f64>() / n, points.iter().map(|p| p[1]).sum::<f64>() / n])
}

fn positions_target(l: &LabelFields, stored_frames: usize, m: Moments) -> Option<Vec<f64>> {
    let per_frame = l.positions.as_ref().or(l.locations.as_ref()).filter(|p| p.len() == stored_frames)?;
    let mut out = Vec::with_capacity(6);
    for frame in [m.first, m.middle, m.last] {
        out.extend(centroid(per_frame, frame)?);
    }
    Some(out)
}

fn velocity_target(l: &LabelFields, stored_frames: usize, m: Moments) -> Option<Vec<f64>> {
    let per_frame = l.velocities.as_ref().filter(|v| v.len() == stored_frames)?;
    let mean = centroid(per_frame, m.middle)?;
    let speeds: Vec<f64> =
        per_frame[m.middle].iter().flatten().filter(|v| v.len() >= 2).map(|v| v[0].hypot(v[1])).collect();
    let speed = speeds.iter().sum::<f64>() / speeds.len() as f64;
    speed.is_finite().then(|| vec![mean[0], mean[1], speed])
}

/// Whether two objects collide between the first and last selected frame.
fn collision_target(l: &LabelFields, m: Moments) -> Option<bool> {
    let events = l.collisions.as_ref()?;
    let bouncing = events.iter().all(|e| e.get("kind").is_some());
    if bouncing {
        // Event frame f: the contact happened between stored frames f − 1 and f.
        let inside = |e: &Value| {
            let frame = e.get("frame").and_then(Value::as_u64).map(|f| f as usize);
            e.get("kind").and_then(Value::as_str) == Some("ball") && frame.is_some_and(|f| m.first < f && f <= m.last)
        };
        return Some(events.iter().any(inside));
    }
    // CLEVRER: collision frames are source-video frames; map the moments there.
    let source = l.source_frames.as_ref().or(l.frame_indices.as_ref())?;
    let (first, last) = (*source.get(m.first)?, *source.get(m.last)?);
    let mut any = false;
    for e in events {
        let f = e.get("frame").and_then(Value::as_u64)? as usize;
        any |= first < f && f <= last;
    }
    Some(any)
}

fn all_missing<T>(v: &[Option<T>]) -> bool {
    v.iter().all(Option::is_none)
}

/// Targets of the four probes for clips whose labels are `labels`, each clip
/// holding `stored_frames` frames of which the model sees `num_frames`
/// (evenly spaced, as in training).
pub fn targets_from_labels(labels: &[&Value], stored_frames: usize, num_frames: usize) -> Vec<ProbeTarget> {
    let selected = evenly_spaced_frames(stored_frames, num_frames.clamp(1, stored_frames.max(1)));
    let moments = Moments {
        first: selected.first().copied().unwrap_or(0),
        middle: selected.get(selected.len() / 2).copied().unwrap_or(0),
        last: selected.last().copied().unwrap_or(0),
    };
    let fields: Vec<LabelFields> = labels.iter().map(|l| parse(l)).collect();

    let counts: Vec<Option<usize>> = fields.iter().map(|f| f.ball_count.or(f.object_count)).collect();
    let objects = fields.iter().any(|f| f.ball_count.is_none() && f.object_count.is_some());
    let count_name = if objects { "object count" } else { "ball count" };
    let distinct: Vec<usize> = counts.iter().flatten().copied().collect::<BTreeSet<_>>().into_iter().collect();
    let count = if all_missing(&counts) {
        Err("the labels have no ball_count or object_count".to_string())
    } else {
        Ok(Target::Classes {
            class_names: distinct.iter().map(usize::to_string).collect(),
            labels: counts.iter().map(|c| c.and_then(|c| distinct.binary_search(&c).ok())).collect(),
        })
    };

    let positions: Vec<Option<Vec<f64>>> = fields.iter().map(|f| positions_target(f, stored_frames, moments)).collect();
    let positions = if all_missing(&positions) {
        Err("the labels have no per-frame positions".to_string())
    } else {
        let names = ["first", "middle", "last"].iter().flat_map(|w| [format!("x@{w}"), format!("y@{w}")]).collect();
        Ok(Target::Values { names, values: positions })
    };

    let velocity: Vec<Option<Vec<f64>>> = fields.iter().map(|f| velocity_target(f, stored_frames, moments)).collect();
    let velocity = if all_missing(&velocity) {
        Err("the labels have no per-frame velocities".to_string())
    } else {
        let names = ["vx@middle", "vy@middle", "speed@middle"].map(String::from).to_vec();
        Ok(Target::Values { names, values: velocity })
    };

    let collision: Vec<Option<usize>> = fields.iter().map(|f| collision_target(f, moments).map(usize::from)).collect();
    let collision = if all_missing(&collision) {
        Err("the labels have no collision events that can be placed among the clip's frames".to_string())
    } else {
        Ok(Target::Classes { class_names: vec!["no".into(), "yes".into()], labels: collision })
    };

    [(count_name, count), ("positions", positions), ("velocity", velocity), ("collision", collision)]
        .into_iter()
        .map(|(name, target)| ProbeTarget { name: name.to_string(), target })
        .collect()
}

/// `targets_from_labels` for clips `clip_ids` of a dataset, the model seeing
/// `num_frames` of each clip's frames.
pub fn probe_targets(ds: &ShardDataset, clip_ids: &[usize], num_frames: usize) -> Result<Vec<ProbeTarget>> {
    let labels: Vec<&Value> = clip_ids.iter().map(|&i| ds.label(i)).collect::<Result<_>>()?;
    Ok(targets_from_labels(&labels, ds.manifest().frames, num_frames))
}
