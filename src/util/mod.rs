//! Ports of the official `util/*.py`, one file each, nothing else.

pub mod crop;
pub mod datasets;
pub mod lars;
pub mod lr_decay;
pub mod lr_sched;
pub mod misc;
pub mod pos_embed;
