//! The world of one rank: training without data parallelism goes through the
//! same code as a multi-GPU run, and every collective is the identity.

use super::{check_all_gather_input, check_all_reduce_input, check_root, Communicator};
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        check_all_reduce_input(t)?;
        Ok(t.detach())
    }

    fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        check_all_gather_input(t)?;
        Ok(t.detach())
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        check_root(root, 1)?;
        Ok(t.detach())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}
