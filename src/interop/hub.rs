//! The MAE weights as the Hugging Face hub and timm hold them, read as (and written from) the
//! official state_dict keys.
//!
//! - transformers (`facebook/vit-mae-base` and the like, or `save_pretrained`): a folder with
//!   `config.json` and `model.safetensors` or `pytorch_model.bin`, or the hub cache's
//!   `models--org--name/` (its `snapshots/<rev>/`). Keys `vit.encoder.layer.{i}.attention.
//!   attention.query.weight` …; the decoder's layers are `decoder.decoder_layers.{i}.` in the hub
//!   files and `decoder.decoder_encoder.layer.{i}.` as transformers 5 writes them (both read; the
//!   hub's written). transformers 5's in-memory names (`vit.layers.{i}.attention.q_proj`) read too.
//! - timm (`vit_base_patch16_224.mae`): a safetensors file whose keys are the official ones.
//!
//! q, k and v are one `qkv` Linear in the official Attention (timm's), three in transformers':
//! reading concatenates them along the output dim, writing splits them, so a round trip is exact.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use tch::Tensor;

use crate::torch::serialization;

/// Where a state_dict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` zip with the official keys (`mae_pretrain_vit_base.pth`, training checkpoints).
    Official,
    /// safetensors with the official keys: timm's hub files, `mae convert --to safetensors|timm`.
    Safetensors,
    /// transformers `ViTMAEForPreTraining` (encoder `vit.`, decoder `decoder.`).
    HfViTMae,
    /// transformers `ViTMAEModel`: the encoder alone, keys without `vit.`.
    HfViTMaeModel,
    /// transformers `ViTForImageClassification` (`vit.` + `classifier`).
    HfViT,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Official => "official PyTorch checkpoint (torch.save)",
            Format::Safetensors => "safetensors with the official (timm) key names",
            Format::HfViTMae => "Hugging Face transformers ViTMAEForPreTraining",
            Format::HfViTMaeModel => "Hugging Face transformers ViTMAEModel (encoder)",
            Format::HfViT => "Hugging Face transformers ViTForImageClassification",
        })
    }
}

/// A checkpoint read from any of the formats, with the official keys.
pub struct Loaded {
    pub sd: Vec<(String, Tensor)>,
    pub format: Format,
    /// Which entry of the file held the state dict, and the wrapper prefixes stripped.
    pub source: serialization::Source,
    /// The weights file read (inside the folder when a folder was given).
    pub file: PathBuf,
    /// The folder's (or the file's sibling) `config.json`, for the Hugging Face formats.
    pub config: Option<serde_json::Value>,
}

/// Reads a checkpoint anywhere one is taken: a `.pth`, a `.safetensors`, a Hugging Face folder
/// (or its hub cache folder), with the keys mapped to the official ones. `mapped`: the tensors
/// of a `.pth` are views of the file ([`serialization::load_mapped`]).
pub fn load(path: &Path, mapped: bool) -> Result<Loaded> {
    let (file, config) = weights_file(path)?;
    // a file under an official name with another md5: a warning, not a refusal
    crate::interop::detect::warn_on_md5_mismatch(&file);
    let root = if mapped {
        serialization::load_mapped(&file)?
    } else {
        serialization::load(&file)?
    };
    to_official(file, config, root)
}

/// The loaded [`weights_file`] as the official state_dict, with the format it was in.
pub fn to_official(
    file: PathBuf,
    config_path: Option<PathBuf>,
    root: serialization::Value,
) -> Result<Loaded> {
    let safetensors = root.get("model").is_none() && is_safetensors(&file);
    let (sd, source) = serialization::state_dict_from(root)
        .with_context(|| format!("checkpoint {}", file.display()))?;
    let config = match &config_path {
        Some(c) => Some(read_config(c)?),
        None => None,
    };
    let (sd, format) = if let Some(prefix) = hf_prefix(&sd) {
        let format = match (prefix, sd.iter().any(|(k, _)| k.starts_with("classifier."))) {
            ("", _) => Format::HfViTMaeModel,
            (_, true) => Format::HfViT,
            _ => Format::HfViTMae,
        };
        let sd = hf_to_official(sd, prefix).with_context(|| format!("{}", file.display()))?;
        if let (Some(cfg), Some(path)) = (&config, &config_path) {
            check_config(cfg, &sd).with_context(|| {
                format!("{} does not describe {}", path.display(), file.display())
            })?;
        }
        (sd, format)
    } else if safetensors {
        (sd, Format::Safetensors)
    } else {
        (sd, Format::Official)
    };
    Ok(Loaded {
        sd,
        format,
        source,
        file,
        config,
    })
}

fn is_safetensors(file: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|_| &magic[..2] != b"PK")
}

/// The weights file of `path` (a file, or the one in a Hugging Face folder) and the
/// `config.json` beside it, if any.
pub fn weights_file(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        let config = path.parent().map(|d| d.join("config.json"));
        let hf_name = path
            .file_name()
            .is_some_and(|n| n == "model.safetensors" || n == "pytorch_model.bin");
        return Ok((
            path.to_path_buf(),
            config.filter(|c| hf_name && c.is_file()),
        ));
    }
    let dir = snapshot(path)?;
    let config = dir.join("config.json");
    ensure!(
        config.is_file(),
        "{} is a folder without config.json: not a Hugging Face model folder (pass the checkpoint file instead)",
        dir.display()
    );
    for shards in [
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ] {
        ensure!(
            !dir.join(shards).exists() || dir.join("model.safetensors").exists(),
            "{}: sharded weights ({shards}) are not supported; save with a larger max_shard_size",
            dir.display()
        );
    }
    let file = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|n| dir.join(n))
        .find(|f| f.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{}: no model.safetensors or pytorch_model.bin beside config.json",
                dir.display()
            )
        })?;
    Ok((file, Some(config)))
}

/// The hub cache's `models--org--name/`: the snapshot `refs/main` names, or the only one.
fn snapshot(dir: &Path) -> Result<PathBuf> {
    let snapshots = dir.join("snapshots");
    if !snapshots.is_dir() {
        return Ok(dir.to_path_buf());
    }
    if let Ok(rev) = std::fs::read_to_string(dir.join("refs/main")) {
        let snap = snapshots.join(rev.trim());
        ensure!(
            snap.is_dir(),
            "{}: refs/main names {}, which is not in snapshots/",
            dir.display(),
            rev.trim()
        );
        return Ok(snap);
    }
    let mut revs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .with_context(|| format!("cannot list {}", snapshots.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match revs.len() {
        1 => Ok(revs.remove(0)),
        n => bail!(
            "{}: {n} snapshots and no refs/main; pass the snapshot folder",
            snapshots.display()
        ),
    }
}

fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The Hugging Face key prefix of the encoder (`vit.` or none), or None for other key names.
fn hf_prefix(sd: &[(String, Tensor)]) -> Option<&'static str> {
    let has = |k: &str| sd.iter().any(|(n, _)| n == k);
    ["vit.", ""]
        .into_iter()
        .find(|p| has(&format!("{p}embeddings.patch_embeddings.projection.weight")))
}

// --------------------------------------------------------
// key names

/// One block's Linear/LayerNorm names: (official, hub file, transformers 5 in memory).
const BLOCK_KEYS: [(&str, &str, &str); 5] = [
    ("norm1", "layernorm_before", "layernorm_before"),
    ("attn.proj", "attention.output.dense", "attention.o_proj"),
    ("norm2", "layernorm_after", "layernorm_after"),
    ("mlp.fc1", "intermediate.dense", "mlp.fc1"),
    ("mlp.fc2", "output.dense", "mlp.fc2"),
];

/// q, k, v as the hub files and as transformers 5 name them.
const QKV: [[&str; 3]; 2] = [
    [
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
    ],
    ["attention.q_proj", "attention.k_proj", "attention.v_proj"],
];

/// A transformers state_dict as the official one: [`Format`]'s key layouts, q/k/v joined.
/// Every key must find its official name.
fn hf_to_official(sd: Vec<(String, Tensor)>, p: &str) -> Result<Vec<(String, Tensor)>> {
    let mut hf: HashMap<String, Tensor> = sd.into_iter().collect();
    let mut out: Vec<(String, Tensor)> = vec![];
    let take = |hf: &mut HashMap<String, Tensor>, out: &mut Vec<_>, ours: &str, theirs: &str| {
        if let Some(t) = hf.remove(theirs) {
            out.push((ours.to_string(), t));
        }
    };
    // parameters of the model itself first, then its submodules, as state_dict() orders them
    for (ours, theirs) in [
        ("cls_token", format!("{p}embeddings.cls_token")),
        ("pos_embed", format!("{p}embeddings.position_embeddings")),
        ("mask_token", "decoder.mask_token".into()),
        ("decoder_pos_embed", "decoder.decoder_pos_embed".into()),
    ] {
        take(&mut hf, &mut out, ours, &theirs);
    }
    for w in ["weight", "bias"] {
        take(
            &mut hf,
            &mut out,
            &format!("patch_embed.proj.{w}"),
            &format!("{p}embeddings.patch_embeddings.projection.{w}"),
        );
    }
    let encoder = [format!("{p}encoder.layer."), format!("{p}layers.")];
    blocks(&mut hf, &mut out, "blocks", &encoder)?;
    for (ours, theirs) in [
        ("norm", format!("{p}layernorm")),
        ("head", "classifier".into()),
        ("decoder_embed", "decoder.decoder_embed".into()),
    ] {
        for w in ["weight", "bias"] {
            take(
                &mut hf,
                &mut out,
                &format!("{ours}.{w}"),
                &format!("{theirs}.{w}"),
            );
        }
    }
    let decoder = [
        "decoder.decoder_layers.".to_string(),
        "decoder.decoder_encoder.layer.".into(),
    ];
    blocks(&mut hf, &mut out, "decoder_blocks", &decoder)?;
    for m in ["decoder_norm", "decoder_pred"] {
        for w in ["weight", "bias"] {
            take(
                &mut hf,
                &mut out,
                &format!("{m}.{w}"),
                &format!("decoder.{m}.{w}"),
            );
        }
    }
    if !hf.is_empty() {
        let mut left: Vec<&String> = hf.keys().collect();
        left.sort();
        bail!(
            "{} key(s) with no counterpart in the official models: {}",
            left.len(),
            left.iter()
                .take(6)
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(out)
}

/// The layers under either of `prefixes` as `{ours}.{i}.*`, q/k/v concatenated into qkv.
fn blocks(
    hf: &mut HashMap<String, Tensor>,
    out: &mut Vec<(String, Tensor)>,
    ours: &str,
    prefixes: &[String],
) -> Result<()> {
    for i in 0.. {
        let Some(pre) = prefixes
            .iter()
            .map(|p| format!("{p}{i}."))
            .find(|p| hf.contains_key(&format!("{p}layernorm_before.weight")))
        else {
            return Ok(());
        };
        // norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2: the Block's state_dict order
        for (j, (official, hub, now)) in BLOCK_KEYS.iter().enumerate() {
            if j == 1 {
                qkv_to_official(hf, out, &pre, &format!("{ours}.{i}.attn.qkv"))?;
            }
            for w in ["weight", "bias"] {
                let t = [hub, now]
                    .iter()
                    .find_map(|n| hf.remove(&format!("{pre}{n}.{w}")))
                    .ok_or_else(|| anyhow!("no {pre}{hub}.{w}"))?;
                out.push((format!("{ours}.{i}.{official}.{w}"), t));
            }
        }
    }
    unreachable!()
}

/// The official state_dict (of `format`'s model) with the hub files' key names, q/k/v split.
pub fn official_to_hf(sd: &[(String, Tensor)], format: Format) -> Result<Vec<(String, Tensor)>> {
    let p = if format == Format::HfViTMaeModel {
        ""
    } else {
        "vit."
    };
    let mut out = vec![];
    for (k, t) in sd {
        let name = |s: String| (s, t.shallow_clone());
        if let Some((i, rest)) = block_key(k, "blocks.") {
            out.extend(block_to_hf(&format!("{p}encoder.layer.{i}."), rest, t)?);
        } else if let Some((i, rest)) = block_key(k, "decoder_blocks.") {
            out.extend(block_to_hf(
                &format!("decoder.decoder_layers.{i}."),
                rest,
                t,
            )?);
        } else {
            out.push(name(match k.as_str() {
                "cls_token" => format!("{p}embeddings.cls_token"),
                "pos_embed" => format!("{p}embeddings.position_embeddings"),
                "patch_embed.proj.weight" | "patch_embed.proj.bias" => format!(
                    "{p}embeddings.patch_embeddings.projection.{}",
                    &k["patch_embed.proj.".len()..]
                ),
                "norm.weight" | "norm.bias" => format!("{p}layernorm.{}", &k["norm.".len()..]),
                "head.weight" | "head.bias" => format!("classifier.{}", &k["head.".len()..]),
                "mask_token" | "decoder_pos_embed" => format!("decoder.{k}"),
                k if ["decoder_embed.", "decoder_norm.", "decoder_pred."]
                    .iter()
                    .any(|m| k.starts_with(m)) =>
                {
                    format!("decoder.{k}")
                }
                k => bail!("{k}: no Hugging Face counterpart in {format}"),
            }));
        }
    }
    Ok(out)
}

/// q, k, v of the layer at `pre` (either naming) as one `{qkv}.weight` / `{qkv}.bias`.
fn qkv_to_official(
    hf: &mut HashMap<String, Tensor>,
    out: &mut Vec<(String, Tensor)>,
    pre: &str,
    qkv: &str,
) -> Result<()> {
    for w in ["weight", "bias"] {
        let names = QKV
            .iter()
            .find(|names| hf.contains_key(&format!("{pre}{}.{w}", names[0])))
            .ok_or_else(|| anyhow!("{pre}: no query {w}"))?;
        let parts = names
            .iter()
            .map(|n| {
                let key = format!("{pre}{n}.{w}");
                hf.remove(&key).ok_or_else(|| anyhow!("no {key}"))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push((format!("{qkv}.{w}"), Tensor::cat(&parts, 0)));
    }
    Ok(())
}

/// `blocks.3.attn.qkv.weight` → (3, `attn.qkv.weight`).
fn block_key<'a>(k: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (i, rest) = k.strip_prefix(prefix)?.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

fn block_to_hf(pre: &str, rest: &str, t: &Tensor) -> Result<Vec<(String, Tensor)>> {
    let (module, w) = rest
        .rsplit_once('.')
        .ok_or_else(|| anyhow!("{pre}{rest}: not a block parameter"))?;
    if module == "attn.qkv" {
        let parts = t.chunk(3, 0);
        return Ok(QKV[0]
            .iter()
            .zip(parts)
            .map(|(n, t)| (format!("{pre}{n}.{w}"), t.contiguous()))
            .collect());
    }
    let hub = BLOCK_KEYS
        .iter()
        .find(|(o, ..)| *o == module)
        .map(|(_, hub, _)| *hub)
        .ok_or_else(|| anyhow!("{pre}{rest}: not a block parameter"))?;
    Ok(vec![(format!("{pre}{hub}.{w}"), t.shallow_clone())])
}

// --------------------------------------------------------
// config.json

fn shape_of(sd: &[(String, Tensor)], key: &str) -> Option<Vec<i64>> {
    sd.iter().find(|(k, _)| k == key).map(|(_, t)| t.size())
}

/// `config.json`'s sizes must be those of the weights: `hidden_size`, `num_hidden_layers`,
/// `patch_size`, `image_size` (and the decoder's when present).
fn check_config(cfg: &serde_json::Value, sd: &[(String, Tensor)]) -> Result<()> {
    let proj = shape_of(sd, "patch_embed.proj.weight").unwrap_or_default();
    let pos = shape_of(sd, "pos_embed").unwrap_or_default();
    let count = |p: &str| {
        (0..)
            .take_while(|i| {
                sd.iter()
                    .any(|(k, _)| k == &format!("{p}.{i}.norm1.weight"))
            })
            .count() as i64
    };
    let patch = proj.get(2).copied().unwrap_or(0);
    let grid = ((pos.get(1).copied().unwrap_or(1) - 1) as f64)
        .sqrt()
        .round() as i64;
    let mut want = vec![
        ("hidden_size", proj.first().copied().unwrap_or(0)),
        ("num_hidden_layers", count("blocks")),
        ("patch_size", patch),
        ("image_size", grid * patch),
    ];
    if let Some(dec) = shape_of(sd, "decoder_embed.weight") {
        want.push(("decoder_hidden_size", dec[0]));
        want.push(("decoder_num_hidden_layers", count("decoder_blocks")));
    }
    for (key, value) in want {
        if let Some(v) = cfg.get(key) {
            ensure!(
                v.as_i64() == Some(value),
                "config.json has {key} {v}, the weights {value}"
            );
        }
    }
    Ok(())
}
