//! The data pipeline: decoding, resampling, transforms and augmentations against Pillow,
//! torchvision and timm, and the training data loader.
//!
//! - transforms: ImageFolder order, `pil_loader` pixels, the eval transform
//! - pil_resize: Pillow's `Image.resize`, byte for byte
//! - preprocess_table: the difference from Pillow/torchvision after every stage, every photo
//! - loader: region decoding and the crop loader give the plain pipeline's values; prefetch
//! - mixup_erasing: Mixup / CutMix and RandomErasing
//! - randaugment: RandAugment `rand-m9-mstd0.5-inc1`
#[path = "../common/mod.rs"]
mod common;

mod loader;
mod mixup_erasing;
mod pil_resize;
mod preprocess_table;
mod randaugment;
mod transforms;
