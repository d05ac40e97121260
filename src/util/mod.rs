//! Ports of `util/*.py`, plus the PyTorch checkpoint format (`checkpoint`, `pickle`).

pub mod amp;
pub mod arg_check;
pub mod checkpoint;
pub mod crop;
pub mod data_loader;
pub mod datasets;
pub mod detect;
pub mod distributed;
pub mod hub;
pub mod lars;
pub mod lr_decay;
pub mod lr_sched;
pub mod misc;
pub mod netif;
pub mod optim;
pub mod pickle;
pub mod plot;
pub mod pos_embed;
pub mod pyfmt;
pub mod state_dict;
pub mod tensorboard;
