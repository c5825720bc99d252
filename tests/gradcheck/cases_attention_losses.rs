//! Softmax family, layer norm, L2 normalisation, dropout, attention, losses.

use crate::common::*;

pub fn cases() -> Vec<Case> {
    vec![]
}
