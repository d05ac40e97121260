//! Ports of `util/*.py`, plus the PyTorch checkpoint format (`checkpoint`, `pickle`).

pub mod checkpoint;
pub mod misc;
pub mod pickle;
pub mod pos_embed;
