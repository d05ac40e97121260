//! Checkpoint formats: what `torch.save` and the hubs write, read bit for bit; what we write, read
//! back by PyTorch, transformers and timm; which model a file holds.
//!
//! - serialization: the zip format against files PyTorch wrote (small models in three dtypes and
//!   one large file), round trips both ways, hostile and broken files, `mae inspect` on them
//! - legacy_format: the pre-1.6 non-zip format
//! - containers: the dict layouts people save (`model`, `state_dict`, EMA, DDP/compile prefixes)
//! - fast_load: memory-mapped parallel loading, models built without random init
//! - hub: Hugging Face and timm files in and out (`mae convert`)
//! - detect: the model named from a state dict's keys and shapes
#[path = "../common/mod.rs"]
mod common;

mod containers;
mod detect;
mod fast_load;
mod hub;
mod legacy_format;
mod serialization;
