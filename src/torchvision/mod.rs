//! The torchvision (and Pillow) parts MAE's data pipeline uses, ported so that the tensors a
//! model sees are identical to the official code's.

pub mod datasets;
pub mod pil;
pub mod transforms;
