//! Convolution, pooling, batch norm, temporal mean.

use crate::common::*;

pub fn cases() -> Vec<Case> {
    vec![]
}
