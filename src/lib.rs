//! mae: Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022) on libtorch.
//!
//! A one-to-one port of facebookresearch/mae. The top level mirrors the official files:
//! `models_mae` ↔ `models_mae.py`, `models_vit` ↔ `models_vit.py`, `engine_*` ↔ `engine_*.py`,
//! `main_*` ↔ `main_*.py`, `mae_visualize` ↔ `demo/mae_visualize.ipynb`, and `util::*` ↔
//! `util/*.py`. What the official code takes from a library lives in a folder named after it:
//! `timm`, `torchvision`, and `torch` (serialization, distributed, the data loader, optimizers,
//! autocast, state dicts, TensorBoard's writer). Code with no counterpart upstream has its own
//! folders: `interop` (other people's checkpoints: Hugging Face, timm, safetensors; `mae inspect`
//! and `mae convert`), `eval` (the robustness protocols of `mae eval` and `mae predict`) and `cli`
//! (command-line helpers). VarStore names are the official `state_dict` keys.

pub mod cli;
pub mod engine_finetune;
pub mod engine_pretrain;
pub mod eval;
pub mod interop;
pub mod mae_visualize;
pub mod main_finetune;
pub mod main_linprobe;
pub mod main_pretrain;
pub mod models_mae;
pub mod models_vit;
pub mod timm;
pub mod torch;
pub mod torchvision;
pub mod util;
