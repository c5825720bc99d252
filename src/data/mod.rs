//! Data: the synthetic physics dataset (`bouncing`, `render`, `synthetic`),
//! the on-disk shard format (`shards`), clip-consistent augmentation
//! (`augment`, `resize`), the prefetching loader (`loader`) and the PNG
//! contact sheet (`contact_sheet`).

pub mod augment;
pub mod bouncing;
#[cfg(feature = "video")]
pub mod clevrer;
pub mod contact_sheet;
pub mod loader;
pub mod render;
pub mod resize;
pub mod shards;
pub mod synthetic;
