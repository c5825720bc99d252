//! Probe targets from a dataset's labels (`labels.jsonl`): the physics suite.
//!
//! Each probe asks what a linear read-out of the features can say about the
//! clip the encoder saw — its `num_frames` evenly spaced frames, as in
//! training ([`Window`]) — or, for the future probe, about a frame after the
//! last one it saw:
//!
//! | probe | kind | target |
//! |---|---|---|
//! | ball count | classes | how many balls (CLEVRER: objects) |
//! | centroid | R² ×6 | mean (x, y) of the balls at the first, middle and last seen frame |
//! | speed | R² | mean \|v\| of the balls over the seen frames |
//! | velocity | R² ×2 | mean (vx, vy) of the balls at the middle seen frame |
//! | gravity | binary | whether the clip falls under gravity |
//! | elastic | binary | whether collisions are elastic (restitution 1) |
//! | collision | binary | whether two balls collide between the first and last seen frame |
//! | wall bounce | binary | whether a ball bounces off a wall between the first and last seen frame |
//! | future centroid | R² ×2 | the centroid K frames after the last seen frame (unseen) |
//!
//! The centroid and means, not ball 0's values, because which ball is "ball
//! 0" is not visible in the pixels. A label without what a probe needs leaves
//! that clip out of it; a probe no clip has a target for is "n/a" with the
//! reason.
//!
//! Label forms read: bouncing-ball labels (`data::synthetic::ClipLabels`:
//! `ball_count`, `gravity`, `restitution`, `positions`/`velocities`
//! [frame][ball] = [x, y], `collisions` of `data::bouncing::Event`, whose
//! `frame` f means the contact happened between stored frames f − 1 and f),
//! and CLEVRER labels (`data::clevrer::annotations::AnnotationLabels`:
//! `object_count`, `locations`/`velocities` [clip frame][object] = [x, y, z]
//! or null; its collision frames are source-video frames, usable only where
//! the label also lists the source frame of each clip frame, as
//! `source_frames` or `frame_indices`; it has no gravity, restitution or wall
//! contacts).

use super::report::Metric;
use crate::data::loader::evenly_spaced_frames;
use crate::data::shards::ShardDataset;
use crate::error::{Error, Result};
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
    /// How the probe is scored: accuracy (several classes), ROC AUC (two), R².
    pub metric: Metric,
    pub target: std::result::Result<Target, String>,
}

/// The stored frames the encoder sees of each clip, and the one the future probe asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub seen: Vec<usize>,
    /// The last seen frame + `future_frames`; None without a future to ask about.
    pub future: Option<usize>,
    pub future_frames: usize,
}

impl Window {
    /// The frames training showed the model — `num_frames` evenly spaced over the clip, which
    /// leaves a few frames after the last one unseen — and the future probe's frame
    /// `future_frames` after the last seen one. `None` asks for the last stored frame (no future
    /// probe if it is seen). Where the unseen tail is shorter than `future_frames`, the model
    /// sees `num_frames` evenly spaced frames of the clip minus its last `future_frames` instead.
    pub fn new(stored_frames: usize, num_frames: usize, future_frames: Option<usize>) -> Result<Window> {
        if num_frames == 0 || num_frames > stored_frames {
            return Err(Error::invalid(
                "evaluate",
                format!("the model sees {num_frames} frames, but the clips have {stored_frames}"),
            ));
        }
        let training = evenly_spaced_frames(stored_frames, num_frames);
        let tail = stored_frames - 1 - training[num_frames - 1];
        let k = future_frames.unwrap_or(tail);
        let seen = if k <= tail {
            training
        } else {
            let context = stored_frames.saturating_sub(k);
            if num_frames > context {
                return Err(Error::invalid(
                    "--future_frames",
                    format!(
                        "{k} leaves {context} of the clips' {stored_frames} frames to see, fewer than the model's \
                         {num_frames}; lower --future_frames or use longer clips"
                    ),
                ));
            }
            evenly_spaced_frames(context, num_frames)
        };
        let future = (k > 0).then(|| seen[num_frames - 1] + k);
        Ok(Window { seen, future, future_frames: k })
    }
}

/// The label fields the probes use; everything else in a label is ignored.
#[derive(Deserialize, Default)]
struct LabelFields {
    ball_count: Option<usize>,
    object_count: Option<usize>,
    gravity: Option<f64>,
    restitution: Option<f64>,
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

fn positions(l: &LabelFields, stored_frames: usize) -> Option<&Vec<Vec<Option<Vec<f64>>>>> {
    l.positions.as_ref().or(l.locations.as_ref()).filter(|p| p.len() == stored_frames)
}

fn velocities(l: &LabelFields, stored_frames: usize) -> Option<&Vec<Vec<Option<Vec<f64>>>>> {
    l.velocities.as_ref().filter(|v| v.len() == stored_frames)
}

/// The first, middle and last seen frame.
fn moments(w: &Window) -> [usize; 3] {
    [w.seen[0], w.seen[w.seen.len() / 2], w.seen[w.seen.len() - 1]]
}

fn centroid_target(l: &LabelFields, stored_frames: usize, w: &Window) -> Option<Vec<f64>> {
    let per_frame = positions(l, stored_frames)?;
    let mut out = Vec::with_capacity(6);
    for frame in moments(w) {
        out.extend(centroid(per_frame, frame)?);
    }
    Some(out)
}

/// Mean |v| over the objects and the seen frames.
fn speed_target(l: &LabelFields, stored_frames: usize, w: &Window) -> Option<Vec<f64>> {
    let per_frame = velocities(l, stored_frames)?;
    let speeds: Vec<f64> = w
        .seen
        .iter()
        .flat_map(|&f| per_frame[f].iter().flatten())
        .filter(|v| v.len() >= 2)
        .map(|v| v[0].hypot(v[1]))
        .collect();
    let speed = speeds.iter().sum::<f64>() / speeds.len() as f64;
    speed.is_finite().then(|| vec![speed])
}

fn velocity_target(l: &LabelFields, stored_frames: usize, w: &Window) -> Option<Vec<f64>> {
    Some(centroid(velocities(l, stored_frames)?, moments(w)[1])?.to_vec())
}

fn future_target(l: &LabelFields, stored_frames: usize, w: &Window) -> Option<Vec<f64>> {
    Some(centroid(positions(l, stored_frames)?, w.future?)?.to_vec())
}

/// Whether a bouncing-ball event of `kind` ("ball" or "wall") happened between the first
/// and last seen frame; None for labels without bouncing-ball events.
fn bouncing_event_target(l: &LabelFields, w: &Window, kind: &str) -> Option<bool> {
    let events = l.collisions.as_ref()?;
    if !events.iter().all(|e| e.get("kind").is_some()) || l.ball_count.is_none() {
        return None;
    }
    let [first, _, last] = moments(w);
    // Event frame f: the contact happened between stored frames f − 1 and f.
    let inside = |e: &Value| {
        let frame = e.get("frame").and_then(Value::as_u64).map(|f| f as usize);
        e.get("kind").and_then(Value::as_str) == Some(kind) && frame.is_some_and(|f| first < f && f <= last)
    };
    Some(events.iter().any(inside))
}

/// Whether two objects collide between the first and last seen frame.
fn collision_target(l: &LabelFields, w: &Window) -> Option<bool> {
    if let Some(bouncing) = bouncing_event_target(l, w, "ball") {
        return Some(bouncing);
    }
    // CLEVRER: collision frames are source-video frames; map the seen frames there.
    let events = l.collisions.as_ref()?;
    let [first, _, last] = moments(w);
    let source = l.source_frames.as_ref().or(l.frame_indices.as_ref())?;
    let (first, last) = (*source.get(first)?, *source.get(last)?);
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

/// A probe's per-clip values, or `missing` where no clip has one.
fn values_or(values: Vec<Option<Vec<f64>>>, names: &[&str], missing: &str) -> std::result::Result<Target, String> {
    if all_missing(&values) {
        Err(missing.to_string())
    } else {
        Ok(Target::Values { names: names.iter().map(|n| n.to_string()).collect(), values })
    }
}

/// A yes/no probe's per-clip answers, or `missing` where no clip has one.
fn binary_or(answers: Vec<Option<bool>>, classes: [&str; 2], missing: &str) -> std::result::Result<Target, String> {
    if all_missing(&answers) {
        Err(missing.to_string())
    } else {
        let labels = answers.into_iter().map(|a| a.map(usize::from)).collect();
        Ok(Target::Classes { class_names: classes.map(String::from).to_vec(), labels })
    }
}

/// Targets of the probe suite for clips whose labels are `labels`, each clip
/// holding `stored_frames` frames of which the model sees `window.seen`.
pub fn targets_from_labels(labels: &[&Value], stored_frames: usize, window: &Window) -> Vec<ProbeTarget> {
    let w = window;
    let fields: Vec<LabelFields> = labels.iter().map(|l| parse(l)).collect();
    let each = |f: &dyn Fn(&LabelFields) -> Option<Vec<f64>>| fields.iter().map(f).collect::<Vec<_>>();
    let each_bool = |f: &dyn Fn(&LabelFields) -> Option<bool>| fields.iter().map(f).collect::<Vec<_>>();

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
    let count_metric = if distinct.len() == 2 { Metric::RocAuc } else { Metric::Accuracy };

    let no_positions = "the labels have no per-frame positions";
    let no_velocities = "the labels have no per-frame velocities";
    let centroid_names = ["x@first", "y@first", "x@middle", "y@middle", "x@last", "y@last"];
    let centroid = values_or(each(&|f| centroid_target(f, stored_frames, w)), &centroid_names, no_positions);
    let speed = values_or(each(&|f| speed_target(f, stored_frames, w)), &["mean |v|"], no_velocities);
    let velocity =
        values_or(each(&|f| velocity_target(f, stored_frames, w)), &["vx@middle", "vy@middle"], no_velocities);
    let gravity = binary_or(each_bool(&|f| f.gravity.map(|g| g > 0.0)), ["off", "on"], "the labels have no gravity");
    let elastic = binary_or(
        each_bool(&|f| f.restitution.map(|e| e >= 1.0 - 1e-9)),
        ["inelastic", "elastic"],
        "the labels have no restitution",
    );
    let collision = binary_or(
        each_bool(&|f| collision_target(f, w)),
        ["no", "yes"],
        "the labels have no collision events that can be placed among the clip's frames",
    );
    let wall = binary_or(
        each_bool(&|f| bouncing_event_target(f, w, "wall")),
        ["no", "yes"],
        "the labels have no wall contacts (bouncing-ball events)",
    );
    let future = match w.future {
        None => Err("the model sees the clip's last frame: pass --future_frames K to show it the clip \
                     minus its last K frames and ask where the balls are K frames later"
            .to_string()),
        Some(frame) if frame >= stored_frames => {
            Err(format!("frame {frame} is past the clips' {stored_frames} frames"))
        }
        Some(_) => values_or(each(&|f| future_target(f, stored_frames, w)), &["x@future", "y@future"], no_positions),
    };
    let future_name = format!("future centroid (+{})", w.future_frames);

    [
        (count_name.to_string(), count_metric, count),
        ("centroid".into(), Metric::R2, centroid),
        ("speed".into(), Metric::R2, speed),
        ("velocity".into(), Metric::R2, velocity),
        ("gravity".into(), Metric::RocAuc, gravity),
        ("elastic".into(), Metric::RocAuc, elastic),
        ("collision".into(), Metric::RocAuc, collision),
        ("wall bounce".into(), Metric::RocAuc, wall),
        (future_name, Metric::R2, future),
    ]
    .into_iter()
    .map(|(name, metric, target)| ProbeTarget { name, metric, target })
    .collect()
}

/// `targets_from_labels` for clips `clip_ids` of a dataset, the model seeing `window.seen`.
pub fn probe_targets(ds: &ShardDataset, clip_ids: &[usize], window: &Window) -> Result<Vec<ProbeTarget>> {
    let labels: Vec<&Value> = clip_ids.iter().map(|&i| ds.label(i)).collect::<Result<_>>()?;
    Ok(targets_from_labels(&labels, ds.manifest().frames, window))
}
