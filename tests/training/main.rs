//! Training: the engines step for step against PyTorch, and `mae pretrain` / `finetune` /
//! `linprobe` end to end (resume, logs, TensorBoard, bf16, kills, faults).
//!
//! - pretrain_steps: `engine_pretrain` against HF ViTMAE + torch.optim.AdamW
//! - finetune_steps: `param_groups_lrd` and `engine_finetune` against timm + torch.optim.AdamW
//! - linprobe_steps: linear probing with LARS against main_linprobe.py
//! - optim_kernels: AdamW single-tensor / foreach / fused and the fp16 unscale against torch
//! - bf16: `--precision bf16` steps against torch.autocast, loss curve and accuracy against fp32
//! - pretrain: lr schedule, weight-decay groups, exact resume, atomic saves, crops, Fashion-MNIST
//! - finetune: checkpoints, logs, resume and `--eval` of `mae finetune` and `mae linprobe`
//! - tensorboard: the official tags and steps, read by TensorBoard's reader
//! - kill_resume: kill -9 at random moments, then `--resume`, bit for bit
//! - faults: corrupt images and IDX files, a full disk
#[path = "../common/mod.rs"]
mod common;

mod bf16;
mod faults;
mod finetune;
mod finetune_steps;
mod kill_resume;
mod linprobe_steps;
mod optim_kernels;
mod pretrain;
mod pretrain_steps;
mod tensorboard;
