//! The model-loading parts of util/misc.py and main_*.py: PyTorch's `load_state_dict` semantics
//! on a tch VarStore, and the loaders that feed official checkpoints to the Rust models
//! (`misc.load_model`'s `model_without_ddp.load_state_dict(checkpoint['model'])`, and the
//! pre-trained → fine-tuning path of `main_finetune.py`).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Result};
use tch::{nn, Tensor};

use crate::models_mae::MaskedAutoencoderViT;
use crate::models_vit::VisionTransformer;
use crate::timm::trunc_normal_;
use crate::util::pos_embed::interpolate_pos_embed;

/// What `load_state_dict(strict=False)` returns (`_IncompatibleKeys`), plus the keys whose shape
/// differs (PyTorch raises on those even when not strict; here they are reported and skipped).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub missing_keys: Vec<String>,
    pub unexpected_keys: Vec<String>,
    /// (key, shape in the checkpoint, shape in the model)
    pub mismatched_keys: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing_keys.is_empty() && self.unexpected_keys.is_empty() && self.mismatched_keys.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "missing_keys={:?}, unexpected_keys={:?}", self.missing_keys, self.unexpected_keys)?;
        for (k, from, to) in &self.mismatched_keys {
            write!(f, ", size mismatch for {k}: copying a param with shape {from:?} from checkpoint, the shape in current model is {to:?}")?;
        }
        Ok(())
    }
}

/// `model.load_state_dict(sd, strict)` on a VarStore: copies tensor for tensor under no_grad
/// (casting dtype / moving device as needed) and reports what did not match. Strict: any
/// missing, unexpected or mismatched key is an error that lists them, and nothing is copied.
pub fn load_state_dict(vs: &mut nn::VarStore, sd: Vec<(String, Tensor)>, strict: bool) -> Result<LoadReport> {
    let mut vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut report = LoadReport::default();
    let mut copies = Vec::new();
    for (k, t) in sd {
        match vars.remove(&k) {
            None => report.unexpected_keys.push(k),
            Some(v) if v.size() != t.size() => report.mismatched_keys.push((k, t.size(), v.size())),
            Some(v) => copies.push((v, t)),
        }
    }
    report.missing_keys = vars.into_keys().collect();
    if strict && !report.is_clean() {
        bail!("Error(s) in loading state_dict: {report}");
    }
    tch::no_grad(|| copies.into_iter().try_for_each(|(mut v, t)| v.f_copy_(&t)))?;
    Ok(report)
}

/// Resizes `key` of a checkpoint to the model's patch grid (`interpolate_pos_embed`).
fn interpolate_to(sd: &mut [(String, Tensor)], key: &str, pos_embed: &Tensor, num_patches: i64) -> Result<()> {
    interpolate_pos_embed(sd, key, num_patches, pos_embed.size()[1] - num_patches)
}

/// A pre-training checkpoint (`checkpoint['model']` of main_pretrain.py) into `model`, strictly;
/// `pos_embed` / `decoder_pos_embed` are interpolated when the checkpoint's resolution differs.
pub fn load_mae_checkpoint(vs: &mut nn::VarStore, model: &MaskedAutoencoderViT, mut sd: Vec<(String, Tensor)>) -> Result<LoadReport> {
    let n = model.patch_embed.num_patches;
    interpolate_to(&mut sd, "pos_embed", &model.pos_embed, n)?;
    interpolate_to(&mut sd, "decoder_pos_embed", &model.decoder_pos_embed, n)?;
    load_state_dict(vs, sd, true)
}

/// A fine-tuned checkpoint (main_finetune.py `--resume` / `--eval`) into `model`, strictly;
/// `pos_embed` is interpolated when the checkpoint's resolution differs.
pub fn load_vit_checkpoint(vs: &mut nn::VarStore, model: &VisionTransformer, mut sd: Vec<(String, Tensor)>) -> Result<LoadReport> {
    interpolate_to(&mut sd, "pos_embed", &model.pos_embed, model.patch_embed.num_patches)?;
    load_state_dict(vs, sd, true)
}

/// main_finetune.py `--finetune`: a pre-training checkpoint into a fresh VisionTransformer.
/// Drops `head.*` when its shape differs, interpolates `pos_embed`, loads non-strictly (the
/// decoder keys come back as unexpected), requires the missing keys to be exactly the new head
/// (and `fc_norm` with global pool), then `trunc_normal_(model.head.weight, std=2e-5)`.
pub fn load_pretrained_for_finetune(
    vs: &mut nn::VarStore,
    model: &mut VisionTransformer,
    mut sd: Vec<(String, Tensor)>,
) -> Result<LoadReport> {
    let state_dict: HashMap<String, Tensor> = vs.variables();
    sd.retain(|(k, t)| {
        let drop = (k == "head.weight" || k == "head.bias") && state_dict.get(k).is_some_and(|v| v.size() != t.size());
        if drop {
            println!("Removing key {k} from pretrained checkpoint");
        }
        !drop
    });

    // interpolate position embedding
    interpolate_to(&mut sd, "pos_embed", &model.pos_embed, model.patch_embed.num_patches)?;

    // load pre-trained model
    let msg = load_state_dict(vs, sd, false)?;
    println!("{msg}");
    ensure!(msg.mismatched_keys.is_empty(), "pre-trained checkpoint does not fit the model: {msg}");
    let mut want = vec!["head.bias", "head.weight"];
    if model.global_pool {
        want.extend(["fc_norm.bias", "fc_norm.weight"]);
    }
    let mut missing: Vec<&str> = msg.missing_keys.iter().map(String::as_str).collect();
    missing.sort();
    want.sort();
    ensure!(missing == want, "pre-trained checkpoint: missing keys {missing:?}, expected exactly {want:?}");

    // manually initialize fc layer
    if let Some(head) = &mut model.head {
        trunc_normal_(&mut head.ws, 2e-5);
    }
    Ok(msg)
}
