//! mae: Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022) on libtorch.
//!
//! A one-to-one port of facebookresearch/mae: `models_mae` ↔ `models_mae.py`,
//! `models_vit` ↔ `models_vit.py`, `util::*` ↔ `util/*.py`. The timm parts MAE imports live in
//! `timm`. VarStore names are the official `state_dict` keys.

pub mod convert;
pub mod engine_finetune;
pub mod engine_pretrain;
pub mod inspect;
pub mod mae_visualize;
pub mod main_finetune;
pub mod main_linprobe;
pub mod main_pretrain;
pub mod models_mae;
pub mod models_vit;
pub mod timm;
pub mod torchvision;
pub mod util;
