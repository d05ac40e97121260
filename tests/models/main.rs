//! The models against their references: models_mae.rs against HuggingFace ViTMAE, models_vit.rs
//! against timm's VisionTransformer, the sin-cos tables against numpy, same-seed masking against
//! PyTorch, bf16 autocast against PyTorch's, and the models' structure.
//!
//! - models_mae: the MAE forward (tiny, B, L, H) with the same weights, images and noise
//! - models_vit: the ViT forward (tiny, B, L, H; H at 448 through interpolate_pos_embed)
//! - pos_embed: `get_2d_sincos_pos_embed`
//! - masking: `tch::manual_seed` masks the patches `torch.manual_seed` masks
//! - autocast: bf16 logits and reconstructions against fp32 and `torch.autocast`
//! - structure: official state_dict keys and shapes, initialisation, patchify, DropPath, loading
#[path = "../common/mod.rs"]
mod common;

mod autocast;
mod masking;
mod models_mae;
mod models_vit;
mod pos_embed;
mod structure;
