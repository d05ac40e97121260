//! `mae convert IN OUT --to official|hf|timm|safetensors`: a checkpoint in any format
//! [`crate::interop::hub::load`] reads, written as the official `.pth`, a Hugging Face folder that
//! transformers' `from_pretrained` loads, a timm safetensors file, or safetensors with the
//! official keys. Not in the reference.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Tensor};

use crate::interop::detect::{self, Detected, Kind};
use crate::interop::hub::{self, Format};
use crate::torch::serialization;
use crate::torch::state_dict;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum To {
    /// `{'model': state_dict}` .pth, as the official checkpoints
    Official,
    /// a folder with config.json and model.safetensors for transformers' from_pretrained
    Hf,
    /// safetensors for timm.create_model(..., pretrained_cfg_overlay=dict(file=OUT)) (no decoder)
    Timm,
    /// safetensors with the official keys, decoder included
    Safetensors,
}

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct Args {
    /// Checkpoint: .pth, .safetensors, or a Hugging Face folder (or hub cache models--org--name)
    pub input: PathBuf,
    /// Output file (official, timm, safetensors) or folder (hf)
    pub output: PathBuf,
    #[arg(long, value_enum)]
    pub to: To,
    /// --to hf with an MAE: config.json's norm_pix_loss (the loss ViTMAEForPreTraining computes);
    /// a Hugging Face input's own value is kept otherwise
    #[arg(long)]
    pub norm_pix_loss: bool,
}

pub fn main(args: Args) -> Result<()> {
    let loaded = hub::load(&args.input, false)?;
    println!("{}: {}", loaded.file.display(), loaded.format);
    let shapes: Vec<(String, Vec<i64>)> = loaded
        .sd
        .iter()
        .map(|(k, t)| (k.clone(), t.size()))
        .collect();
    let det = detect::detect(shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice())))
        .with_context(|| format!("{}: not an MAE/ViT checkpoint", args.input.display()))?;
    println!("model: {}", det.describe());
    let sd = loaded.sd;
    let out = &args.output;
    match args.to {
        To::Official => serialization::save_state_dict(out, &sd)?,
        To::Safetensors => serialization::save_safetensors(out, &sd)?,
        To::Timm => {
            let hint = timm_hint(&det, out)?;
            let encoder: Vec<(String, Tensor)> =
                sd.into_iter().filter(|(k, _)| !is_decoder(k)).collect();
            serialization::save_safetensors(out, &encoder)?;
            println!("{hint}");
        }
        To::Hf => {
            let norm_pix_loss = args.norm_pix_loss
                || loaded
                    .config
                    .as_ref()
                    .and_then(|c| c.get("norm_pix_loss")?.as_bool())
                    .unwrap_or(false);
            let (format, config) = hf_config(&det, &sd, norm_pix_loss)?;
            std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
            serialization::save_safetensors(
                &out.join("model.safetensors"),
                &hub::official_to_hf(&sd, format)?,
            )?;
            let json = serde_json::to_string_pretty(&config)? + "\n";
            let path = out.join("config.json");
            serialization::atomic_write(&path, |w| Ok(w.write_all(json.as_bytes())?))
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "load with transformers: {}.from_pretrained({:?})",
                config["architectures"][0].as_str().unwrap_or_default(),
                out.display().to_string()
            );
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// The MAE decoder's parameters (timm's VisionTransformer has none).
fn is_decoder(k: &str) -> bool {
    k == "mask_token" || k.starts_with("decoder_")
}

/// How timm loads the file: the timm model name of the official sizes.
fn timm_hint(det: &Detected, out: &Path) -> Result<String> {
    let arch = match det.size {
        "base" | "large" => format!("vit_{}_patch16_{}", det.size, det.img_size),
        "huge" => format!("vit_huge_patch14_{}", det.img_size),
        _ => format!(
            "vit_base_patch16_224\", img_size={}, patch_size={}, embed_dim={}, depth={}, num_heads=…",
            det.img_size, det.patch_size, det.embed_dim, det.depth
        ),
    };
    // timm drops a checkpoint's head when num_classes differs from the pretrained_cfg's
    let (extra, overlay) = match det.kind {
        Kind::MaePretrain | Kind::MaeEncoder => (", num_classes=0".to_string(), String::new()),
        Kind::Finetuned {
            global_pool,
            num_classes,
        } => (
            if global_pool {
                format!(", global_pool=\"avg\", fc_norm=True, num_classes={num_classes}")
            } else {
                format!(", global_pool=\"token\", num_classes={num_classes}")
            },
            format!(", num_classes={num_classes}"),
        ),
        Kind::Linprobe { .. } => bail!(
            "a linear-probe checkpoint (BatchNorm + Linear head) has no timm model; convert --to official or safetensors"
        ),
    };
    Ok(format!(
        "load with timm: timm.create_model(\"{arch}\"{extra}, pretrained=True, pretrained_cfg_overlay=dict(file={:?}{overlay}))",
        out.display().to_string()
    ))
}

/// Builds the port's model for `det` and loads `sd` strictly, to check it and to read the
/// number of heads (which the weights do not tell): (encoder heads, decoder heads).
fn heads(det: &Detected, sd: &[(String, Tensor)]) -> Result<(i64, Option<i64>)> {
    let name = det.model_name();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let heads = match det.kind {
        Kind::MaePretrain => {
            let cfg = crate::models_mae::MaeConfig {
                img_size: det.img_size,
                init: false,
                ..Default::default()
            };
            let m = crate::models_mae::build(&name, &vs.root(), cfg)?;
            (
                m.blocks[0].attn.num_heads,
                Some(m.decoder_blocks[0].attn.num_heads),
            )
        }
        _ => {
            let (num_classes, global_pool) = match det.kind {
                Kind::Finetuned {
                    num_classes,
                    global_pool,
                } => (num_classes, global_pool),
                _ => (0, false),
            };
            let cfg = crate::models_vit::VitConfig {
                img_size: det.img_size,
                num_classes,
                global_pool,
                init: false,
                ..Default::default()
            };
            let m = crate::models_vit::build(&name, &vs.root(), cfg)?;
            (m.blocks[0].attn.num_heads, None)
        }
    };
    let copy: Vec<(String, Tensor)> = sd
        .iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let report = state_dict::load_state_dict(&mut vs, copy, false)?;
    if !report.is_clean() {
        bail!("the weights do not load into {name}: {report}");
    }
    Ok(heads)
}

/// The transformers class for `det` and its config.json (the port's LayerNorm eps, 1e-6).
fn hf_config(
    det: &Detected,
    sd: &[(String, Tensor)],
    norm_pix_loss: bool,
) -> Result<(Format, serde_json::Value)> {
    let width = |k: &str| {
        sd.iter()
            .find(|(n, _)| n == k)
            .map_or(0, |(_, t)| t.size()[0])
    };
    let (num_heads, decoder_heads) = heads(det, sd)?;
    let mut cfg = serde_json::json!({
        "hidden_size": det.embed_dim,
        "num_hidden_layers": det.depth,
        "num_attention_heads": num_heads,
        "intermediate_size": width("blocks.0.mlp.fc1.weight"),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": det.img_size,
        "patch_size": det.patch_size,
        "num_channels": 3,
        "qkv_bias": true,
    });
    let obj = cfg.as_object_mut().expect("a JSON object");
    let mut set = |k: &str, v: serde_json::Value| obj.insert(k.to_string(), v);
    let format = match det.kind {
        Kind::MaePretrain => {
            set("architectures", serde_json::json!(["ViTMAEForPreTraining"]));
            set("model_type", "vit_mae".into());
            set("decoder_hidden_size", det.decoder_embed_dim.into());
            set("decoder_num_hidden_layers", det.decoder_depth.into());
            set("decoder_num_attention_heads", decoder_heads.into());
            set(
                "decoder_intermediate_size",
                width("decoder_blocks.0.mlp.fc1.weight").into(),
            );
            set("mask_ratio", 0.75.into());
            set("norm_pix_loss", norm_pix_loss.into());
            Format::HfViTMae
        }
        Kind::MaeEncoder => {
            // ViTMAEModel masks 75% of the patches unless told otherwise: features of all
            set("architectures", serde_json::json!(["ViTMAEModel"]));
            set("model_type", "vit_mae".into());
            set("mask_ratio", 0.0.into());
            Format::HfViTMaeModel
        }
        Kind::Finetuned {
            global_pool: false,
            num_classes,
        } => {
            set("architectures", serde_json::json!(["ViTForImageClassification"]));
            set("model_type", "vit".into());
            set("encoder_stride", det.patch_size.into());
            let labels: serde_json::Map<String, serde_json::Value> = (0..num_classes)
                .map(|i| (i.to_string(), format!("LABEL_{i}").into()))
                .collect();
            set("id2label", labels.into());
            let ids: serde_json::Map<String, serde_json::Value> = (0..num_classes)
                .map(|i| (format!("LABEL_{i}"), i.into()))
                .collect();
            set("label2id", ids.into());
            Format::HfViT
        }
        Kind::Finetuned {
            global_pool: true, ..
        } => bail!(
            "a global-pool fine-tuned ViT (fc_norm over the mean of the patch tokens) has no transformers class: ViTForImageClassification classifies the cls token after the final LayerNorm; convert --to timm instead"
        ),
        Kind::Linprobe { .. } => bail!(
            "a linear-probe checkpoint (BatchNorm + Linear head) has no transformers class; convert --to official or safetensors"
        ),
    };
    Ok((format, cfg))
}
