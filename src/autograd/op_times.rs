//! Wall time per op, forward and backward, for finding where a training step goes
//! (`SIMCLR_OP_TIMES=1`; benches/train_step prints the table per case).
//!
//! Backward is timed exactly: each node's closure and the accumulation of what it
//! returns. Forward ops are not wrapped one by one; instead each recorded op is
//! charged the time since the previous record on the same thread (or since
//! [`mark`]), which on the single thread that runs the forward pass is that op's
//! own compute. Work between ops that records nothing (a view, an untracked
//! input, code outside the tape) lands on the next recorded op: call [`mark`]
//! before a forward pass so the time before it is not charged to its first op.
//!
//! Off (the default) it costs one relaxed atomic load per op.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Accumulated times of one op name.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpTime {
    pub forward: Duration,
    pub forward_calls: u64,
    pub backward: Duration,
    pub backward_calls: u64,
}

static ENABLED: OnceLock<AtomicBool> = OnceLock::new();
static TABLE: Mutex<Option<HashMap<&'static str, OpTime>>> = Mutex::new(None);

thread_local! {
    static LAST_RECORD: Cell<Option<Instant>> = const { Cell::new(None) };
}

fn flag() -> &'static AtomicBool {
    ENABLED.get_or_init(|| AtomicBool::new(std::env::var("SIMCLR_OP_TIMES").is_ok_and(|v| v == "1")))
}

/// Whether ops are being timed (`SIMCLR_OP_TIMES=1`, or [`set_enabled`]).
pub fn enabled() -> bool {
    flag().load(Ordering::Relaxed)
}

/// Turns timing on or off for the whole process (overrides the environment).
pub fn set_enabled(on: bool) {
    flag().store(on, Ordering::Relaxed);
    LAST_RECORD.with(|t| t.set(None));
}

/// Starts the forward clock on this thread: the next recorded op is charged from here.
pub fn mark() {
    if enabled() {
        LAST_RECORD.with(|t| t.set(Some(Instant::now())));
    }
}

fn add(name: &'static str, f: impl FnOnce(&mut OpTime)) {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    f(table.get_or_insert_with(HashMap::new).entry(name).or_default());
}

/// Called by `record` as an op's node is made: charges the time since the last mark.
pub(crate) fn forward_recorded(name: &'static str) {
    if !enabled() {
        return;
    }
    let now = Instant::now();
    if let Some(since) = LAST_RECORD.with(|t| t.replace(Some(now))) {
        add(name, |t| {
            t.forward += now - since;
            t.forward_calls += 1;
        });
    }
}

/// Times one backward node (`run` is its closure plus the gradient accumulation).
pub(crate) fn time_backward<R>(name: &'static str, run: impl FnOnce() -> R) -> R {
    if !enabled() {
        return run();
    }
    let start = Instant::now();
    let out = run();
    let spent = start.elapsed();
    add(name, |t| {
        t.backward += spent;
        t.backward_calls += 1;
    });
    // The forward clock restarts after a backward (a new forward follows).
    LAST_RECORD.with(|t| t.set(None));
    out
}

/// Takes the accumulated times (and starts a new table), most expensive first.
pub fn take() -> Vec<(&'static str, OpTime)> {
    let table = TABLE.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    let mut rows: Vec<_> = table.into_iter().collect();
    rows.sort_by(|a, b| (b.1.forward + b.1.backward).cmp(&(a.1.forward + a.1.backward)).then(a.0.cmp(b.0)));
    rows
}

/// The table as text: one line per op with forward and backward milliseconds per
/// `per` (e.g. the number of steps timed) and each op's share of the total.
pub fn format_table(rows: &[(&'static str, OpTime)], per: u64) -> String {
    let per = per.max(1) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / per;
    let total: f64 = rows.iter().map(|(_, t)| ms(t.forward) + ms(t.backward)).sum();
    let mut out =
        format!("{:<28} {:>9} {:>7} {:>9} {:>7} {:>7}\n", "op", "fwd ms", "calls", "bwd ms", "calls", "share");
    for (name, t) in rows {
        let both = ms(t.forward) + ms(t.backward);
        out += &format!(
            "{:<28} {:>9.2} {:>7} {:>9.2} {:>7} {:>6.1}%\n",
            name,
            ms(t.forward),
            t.forward_calls as f64 / per,
            ms(t.backward),
            t.backward_calls as f64 / per,
            100.0 * both / total.max(f64::MIN_POSITIVE)
        );
    }
    out += &format!("{:<28} {:>9.2} (forward + backward, ms per step)\n", "total", total);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{DType, Tensor};

    #[test]
    fn ops_are_charged_forward_and_backward_time() {
        set_enabled(true);
        take();
        let x = Tensor::from_f64s(&[1.0, -2.0, 3.0], &[3], DType::F64).unwrap().requires_grad().unwrap();
        mark();
        let y = x.relu().unwrap().sum_all().unwrap();
        y.backward().unwrap();
        set_enabled(false);
        let rows = take();
        let find = |n: &str| rows.iter().find(|r| r.0 == n).map(|r| r.1).unwrap_or_else(|| panic!("{n} in {rows:?}"));
        let relu = find("relu");
        // Other tests may run ops while timing is on: at least ours were counted.
        assert!(relu.forward_calls >= 1 && relu.backward_calls >= 1, "{relu:?}");
        assert!(relu.backward > Duration::ZERO);
        let table = format_table(&rows, 1);
        assert!(table.contains("relu") && table.contains("total"), "{table}");
    }
}
