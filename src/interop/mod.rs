//! Not in the reference: checkpoints other people publish. Which official model a state dict
//! holds and the md5 of the official downloads (`detect`), Hugging Face and timm weights
//! (`hub`), and the commands `mae inspect` and `mae convert`.

pub mod convert;
pub mod detect;
pub mod hub;
pub mod inspect;
