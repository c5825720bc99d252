//! The gradient-check suite: every registered op, in f64, against central
//! finite differences — with odd sizes, broadcasting and strided inputs.
//!
//! Each family file returns its `Case`s. The one test below runs them all and
//! fails on any gradient mismatch, on any registered op without a case, and on
//! any recorded op that no case actually put on the tape.

mod cases_attention_losses;
mod cases_conv_pool_bn;
mod cases_dist;
mod cases_elementwise;
mod cases_shape;
mod common;

use common::Case;
use simclr::ops::registry;
use std::collections::BTreeSet;

fn all_cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(cases_shape::cases());
    v.extend(cases_elementwise::cases());
    v.extend(cases_conv_pool_bn::cases());
    v.extend(cases_attention_losses::cases());
    v.extend(cases_dist::cases());
    v
}

#[test]
fn every_registered_op_passes_gradcheck() {
    let cases = all_cases();
    let mut failures = Vec::new();
    let mut seen_on_tape: BTreeSet<&'static str> = BTreeSet::new();
    let mut named: BTreeSet<&'static str> = BTreeSet::new();
    for case in &cases {
        named.insert(case.op);
        if !registry::all().any(|n| n == case.op) {
            failures.push(format!("case `{}` ({}) names an op missing from ops::registry", case.op, case.what));
            continue;
        }
        match (case.run)() {
            Ok(report) => {
                if registry::is_recorded_op(case.op) && !report.ops.contains(&case.op) {
                    failures.push(format!(
                        "case `{}` ({}) never recorded `{}`: tape had {:?}",
                        case.op, case.what, case.op, report.ops
                    ));
                }
                println!(
                    "ok   {:<30} {:<50} {:>5} elements, max |err| {:.2e}",
                    case.op, case.what, report.checked, report.max_abs_err
                );
                seen_on_tape.extend(report.ops);
            }
            Err(e) => failures.push(format!("case `{}` ({}): {e}", case.op, case.what)),
        }
    }
    for op in registry::all() {
        if !named.contains(op) {
            failures.push(format!("registered op `{op}` has no gradcheck case"));
        }
    }
    for op in registry::RECORDED {
        if !seen_on_tape.contains(op) {
            failures.push(format!("recorded op `{op}` never appeared on a tape in any case"));
        }
    }
    for op in &seen_on_tape {
        if !registry::is_recorded_op(op) {
            failures.push(format!("op `{op}` recorded a node but is not in registry::RECORDED"));
        }
    }
    println!("{} cases, {} registered ops", cases.len(), registry::all().count());
    assert!(failures.is_empty(), "gradcheck failures:\n{}", failures.join("\n"));
}
