//! Not in the reference (the official repo has no code for them): the evaluation protocols of
//! the paper's robustness table and classifying a photo. `class_subset`: `mae eval
//! --class_subset` (wnid folders numbered by the ImageNet-1k indices; ImageNet-A / -R scored on
//! their 200 classes), with the class lists of timm's package data in `data/`; `imagenet_c`:
//! `mae eval --imagenet_c` (top-1 error per corruption and severity, mCE, resumable);
//! `predict`: `mae predict`. docs/EVALUATION.md describes each protocol and its source.

pub mod class_subset;
pub mod imagenet_c;
pub mod predict;

use anyhow::{Context, Result};
use tch::{nn, Device, Tensor};

use crate::models_vit::{self, VisionTransformer, VitConfig};

/// A fine-tuned classifier: `name` (a `models_vit` preset) with `num_classes` outputs and its
/// pooling, built at `input_size` on `device` and loaded from the state dict `sd` of the
/// checkpoint `what` (named in errors).
pub struct Classifier<'a> {
    pub what: &'a str,
    pub name: String,
    pub num_classes: i64,
    pub global_pool: bool,
    pub input_size: i64,
    pub sd: Vec<(String, Tensor)>,
}

impl Classifier<'_> {
    /// The model in its VarStore, every parameter the checkpoint's (strict loading).
    pub fn load(self, device: Device) -> Result<(nn::VarStore, VisionTransformer)> {
        let mut vs = nn::VarStore::new(device);
        let cfg = VitConfig {
            img_size: self.input_size,
            num_classes: self.num_classes,
            global_pool: self.global_pool,
            init: false, // load_checkpoint (strict) overwrites every parameter
            ..VitConfig::default()
        };
        let model = models_vit::build(&self.name, &vs.root(), cfg)?;
        model
            .load_checkpoint(&mut vs, self.sd)
            .with_context(|| format!("loading {} into {}", self.what, self.name))?;
        Ok((vs, model))
    }
}
