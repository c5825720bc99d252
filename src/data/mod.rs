//! Data: the synthetic physics dataset, the on-disk shard format, and (to come)
//! clip-consistent augmentation and the loader.

pub mod augment;
pub mod bouncing;
pub mod contact_sheet;
pub mod loader;
pub mod render;
pub mod shards;
pub mod synthetic;
