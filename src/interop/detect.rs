//! Not in the reference: which official model a state dict holds, from its key names and
//! shapes only (no weights needed: it also runs on the key/shape lists in
//! `tests/data/reference/official_state_dicts.json`), and the md5 prefixes published with the
//! official checkpoints. `mae inspect` prints it; the loading commands pick `--model` with it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use tch::Tensor;

/// What kind of official checkpoint a state_dict is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `models_mae.MaskedAutoencoderViT` with its decoder (`mae_visualize_*.pth`, training checkpoints).
    MaePretrain,
    /// MAE encoder only, decoder stripped (`mae_pretrain_vit_*.pth`): the start of fine-tuning.
    MaeEncoder,
    /// `models_vit.VisionTransformer` with a linear head (`mae_finetuned_vit_*.pth`).
    Finetuned { global_pool: bool, num_classes: i64 },
    /// `main_linprobe.py`'s model: cls-token ViT with a BatchNorm(affine=False) + Linear head.
    Linprobe { num_classes: i64 },
}

/// The architecture read off a state_dict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub kind: Kind,
    pub embed_dim: i64,
    pub depth: i64,
    pub patch_size: i64,
    pub img_size: i64,
    /// A name of [`SIZES`], or `custom` when the dims match none.
    pub size: &'static str,
    pub decoder_embed_dim: Option<i64>,
    pub decoder_depth: Option<i64>,
}

/// The size names: (name, embed_dim, depth, patch_size). `base`, `large`, `huge` are the official
/// ones; `tiny` and `mini` are this project's small configurations (tests, Fashion-MNIST).
const SIZES: [(&str, i64, i64, i64); 5] = [
    ("base", 768, 12, 16),
    ("large", 1024, 24, 16),
    ("huge", 1280, 32, 14),
    ("tiny", 64, 2, 4),
    ("mini", 128, 6, 4),
];

impl Detected {
    /// The official model name (`--model`) this checkpoint loads into.
    pub fn model_name(&self) -> String {
        let arch = format!("vit_{}_patch{}", self.size, self.patch_size);
        match self.kind {
            Kind::MaePretrain => format!("mae_{arch}"),
            Kind::MaeEncoder | Kind::Finetuned { .. } | Kind::Linprobe { .. } => arch,
        }
    }

    /// One line for people, e.g. `vit_base_patch16 (fine-tuned, global pool, 1000 classes) ...`.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            Kind::MaePretrain => {
                let depth = self.decoder_depth.unwrap_or(0);
                format!(
                    "MAE pre-training model with decoder ({}-d, {depth} block{})",
                    self.decoder_embed_dim.unwrap_or(0),
                    if depth == 1 { "" } else { "s" }
                )
            }
            Kind::MaeEncoder => {
                "MAE pre-trained encoder without decoder (fine-tune or linear-probe it)".into()
            }
            Kind::Finetuned {
                global_pool,
                num_classes,
            } => format!(
                "fine-tuned classifier, {} pooling, {num_classes} classes",
                if *global_pool {
                    "global average"
                } else {
                    "cls token"
                }
            ),
            Kind::Linprobe { num_classes } => {
                format!("linear probe (BatchNorm + Linear head), {num_classes} classes")
            }
        };
        let mut s = format!(
            "{}: {what}; input {}x{}, patch {}, embed_dim {}, depth {}",
            self.model_name(),
            self.img_size,
            self.img_size,
            self.patch_size,
            self.embed_dim,
            self.depth
        );
        match self.size {
            "custom" => s.push_str(" (not a known size)"),
            "tiny" | "mini" => {
                s.push_str(" (this project's small configuration, not an official size)")
            }
            _ => {}
        }
        if let Kind::Finetuned {
            global_pool: false, ..
        } = self.kind
        {
            s.push_str(" (load with --cls_token)");
        }
        s
    }
}

fn count_blocks(shapes: &BTreeMap<&str, &[i64]>, prefix: &str) -> i64 {
    let mut n = 0;
    while shapes.contains_key(format!("{prefix}.{n}.norm1.weight").as_str()) {
        n += 1;
    }
    n
}

/// Tell which official model a state_dict holds from its key names and shapes.
pub fn detect<'a, I>(entries: I) -> anyhow::Result<Detected>
where
    I: IntoIterator<Item = (&'a str, &'a [i64])>,
{
    let shapes: BTreeMap<&str, &[i64]> = entries.into_iter().collect();
    let shape = |k: &str| -> anyhow::Result<&[i64]> {
        shapes.get(k).copied().ok_or_else(|| {
            anyhow::anyhow!(
                "no `{k}` key: not a MAE/ViT state_dict (keys: {})",
                preview(&shapes)
            )
        })
    };
    let proj = shape("patch_embed.proj.weight")?;
    let [embed_dim, in_chans, patch_size, patch_w] = *proj else {
        anyhow::bail!("patch_embed.proj.weight has shape {proj:?}, expected [embed_dim, 3, p, p]");
    };
    anyhow::ensure!(
        patch_size == patch_w && in_chans > 0 && patch_size > 0,
        "patch_embed.proj.weight has shape {proj:?}, expected square patches"
    );
    let pos = shape("pos_embed")?;
    let num_patches = match *pos {
        [1, l, d] if d == embed_dim && l >= 2 => l - 1,
        _ => {
            anyhow::bail!("pos_embed has shape {pos:?}, expected [1, 1 + num_patches, {embed_dim}]")
        }
    };
    let grid = (num_patches as f64).sqrt().round() as i64;
    anyhow::ensure!(
        grid * grid == num_patches,
        "pos_embed holds {num_patches} patches: not a square grid"
    );
    let depth = count_blocks(&shapes, "blocks");
    anyhow::ensure!(depth > 0, "no `blocks.0.*` keys: not a ViT state_dict");
    let size = SIZES
        .iter()
        .find(|(_, d, n, p)| *d == embed_dim && *n == depth && *p == patch_size)
        .map(|(name, ..)| *name)
        .unwrap_or("custom");

    let has = |k: &str| shapes.contains_key(k);
    let head_classes = |k: &str| shapes.get(k).and_then(|s| s.first().copied());
    let (kind, decoder_embed_dim, decoder_depth) = if has("decoder_embed.weight") {
        let dec = shape("decoder_embed.weight")?[0];
        (
            Kind::MaePretrain,
            Some(dec),
            Some(count_blocks(&shapes, "decoder_blocks")),
        )
    } else if has("head.1.weight") && has("head.0.running_mean") {
        (
            Kind::Linprobe {
                num_classes: head_classes("head.1.weight").unwrap_or(0),
            },
            None,
            None,
        )
    } else if let Some(num_classes) = head_classes("head.weight") {
        (
            Kind::Finetuned {
                global_pool: has("fc_norm.weight"),
                num_classes,
            },
            None,
            None,
        )
    } else {
        (Kind::MaeEncoder, None, None)
    };
    Ok(Detected {
        kind,
        embed_dim,
        depth,
        patch_size,
        img_size: grid * patch_size,
        size,
        decoder_embed_dim,
        decoder_depth,
    })
}

fn preview(shapes: &BTreeMap<&str, &[i64]>) -> String {
    let mut names: Vec<&str> = shapes.keys().take(6).copied().collect();
    if shapes.len() > 6 {
        names.push("…");
    }
    names.join(", ")
}

/// The official checkpoints with the md5 prefixes published beside them (README.md and
/// FINETUNE.md of facebookresearch/mae; weights/README.md lists their URLs).
pub const OFFICIAL_MD5_PREFIXES: [(&str, &str); 6] = [
    ("mae_pretrain_vit_base.pth", "8cad7c"),
    ("mae_pretrain_vit_large.pth", "b8b06e"),
    ("mae_pretrain_vit_huge.pth", "9bdbb0"),
    ("mae_finetuned_vit_base.pth", "1b25e9"),
    ("mae_finetuned_vit_large.pth", "51f550"),
    ("mae_finetuned_vit_huge.pth", "2541f2"),
];

/// Hex md5 of a file, read in 1 MiB chunks.
pub fn md5_hex(path: &Path) -> anyhow::Result<String> {
    use md5::{Digest, Md5};
    use std::io::Read;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The outcome of comparing a file's md5 with the published prefixes.
#[derive(Debug, Clone, PartialEq)]
pub struct Md5Check {
    /// One line for the user: which prefix matched, or why none did.
    pub line: String,
    /// The file has an official name but not its published prefix (incomplete/corrupt download,
    /// or a user's own file saved under that name).
    pub mismatch: bool,
}

/// Is this one of the official file names (`mae_pretrain_vit_base.pth`, …)?
pub fn has_official_name(path: &Path) -> bool {
    OFFICIAL_MD5_PREFIXES
        .iter()
        .any(|(n, _)| path.file_name().is_some_and(|f| f == *n))
}

/// Compare a file's md5 with the published prefixes: an official file name should match its own
/// prefix (`mismatch` otherwise); any other name is reported if it matches one. Errors only when
/// the file cannot be read.
pub fn verify_md5(path: &Path) -> anyhow::Result<Md5Check> {
    let md5 = md5_hex(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((_, prefix)) = OFFICIAL_MD5_PREFIXES.iter().find(|(n, _)| *n == name) {
        return Ok(if md5.starts_with(prefix) {
            Md5Check {
                line: format!("md5 {md5}: matches the published prefix {prefix} of {name}"),
                mismatch: false,
            }
        } else {
            Md5Check {
                line: format!(
                    "{}: md5 {md5} does not start with {prefix}, the prefix published for {name}: \
                     an incomplete or corrupt download, or another file saved under that name",
                    path.display()
                ),
                mismatch: true,
            }
        });
    }
    let line = match OFFICIAL_MD5_PREFIXES
        .iter()
        .find(|(_, p)| md5.starts_with(p))
    {
        Some((official, p)) => format!("md5 {md5}: matches the published prefix {p} of {official}"),
        None => format!("md5 {md5}: not one of the official checkpoints"),
    };
    Ok(Md5Check {
        line,
        mismatch: false,
    })
}

/// For the commands that load a checkpoint (`eval`, `visualize`, `finetune`, `linprobe`): a file
/// with an official name whose md5 is not the published one gets a warning, not a refusal (it
/// may be the user's own file). Files with other names are not hashed.
pub fn warn_on_md5_mismatch(path: &Path) {
    if !has_official_name(path) {
        return;
    }
    match verify_md5(path) {
        Ok(check) if check.mismatch => eprintln!("warning: {}", check.line),
        Ok(_) => {}
        Err(e) => eprintln!("warning: md5 of {} not checked: {e:#}", path.display()),
    }
}

/// The official model a state dict holds (by key names and shapes) and the `--model` name it
/// loads into. The test-sized models are named too (`mae inspect` calls them custom).
pub fn detect_model(sd: &[(String, Tensor)]) -> anyhow::Result<(Detected, String)> {
    let shapes: Vec<(&str, Vec<i64>)> = sd.iter().map(|(k, t)| (k.as_str(), t.size())).collect();
    let det = detect(shapes.iter().map(|(k, s)| (*k, s.as_slice())))?;
    let name = det.model_name();
    Ok((det, name))
}

/// What the state dict of a fine-tuned classifier says of its model.
pub struct Finetuned {
    /// The `--model` name it loads into.
    pub model: String,
    pub num_classes: i64,
    pub global_pool: bool,
    /// The input size its `pos_embed` was trained at.
    pub img_size: i64,
    /// A name of [`SIZES`] or `custom`.
    pub size: &'static str,
}

/// The model of a fine-tuned classifier's state dict (`mae eval`, `mae predict`); a state dict
/// that is not one is an error naming `path` and what it holds.
pub fn finetuned(sd: &[(String, Tensor)], path: &Path) -> anyhow::Result<Finetuned> {
    let (det, model) =
        detect_model(sd).with_context(|| format!("{}: cannot tell the model", path.display()))?;
    match det.kind {
        Kind::Finetuned {
            global_pool,
            num_classes,
        } => Ok(Finetuned {
            model,
            num_classes,
            global_pool,
            img_size: det.img_size,
            size: det.size,
        }),
        _ => anyhow::bail!(
            "{}: {}; evaluation needs a fine-tuned classifier (e.g. mae_finetuned_vit_base.pth)",
            path.display(),
            det.describe()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(&'static str, Vec<i64>)]) -> Vec<(&'static str, Vec<i64>)> {
        list.to_vec()
    }

    #[test]
    fn rejects_non_vit() {
        let e = entries(&[("fc.weight", vec![10, 3])]);
        let err = detect(e.iter().map(|(k, s)| (*k, s.as_slice()))).unwrap_err();
        assert!(err.to_string().contains("patch_embed.proj.weight"), "{err}");
    }

    #[test]
    fn custom_tiny_encoder() {
        let e = entries(&[
            ("patch_embed.proj.weight", vec![48, 3, 4, 4]),
            ("pos_embed", vec![1, 65, 48]),
            ("blocks.0.norm1.weight", vec![64]),
            ("blocks.1.norm1.weight", vec![64]),
            ("norm.weight", vec![64]),
        ]);
        let d = detect(e.iter().map(|(k, s)| (*k, s.as_slice()))).unwrap();
        assert_eq!(d.kind, Kind::MaeEncoder);
        assert_eq!((d.img_size, d.depth, d.size), (32, 2, "custom"));
    }

    #[test]
    fn project_small_configs_have_model_names() {
        let e = entries(&[
            ("patch_embed.proj.weight", vec![64, 3, 4, 4]),
            ("pos_embed", vec![1, 65, 64]),
            ("blocks.0.norm1.weight", vec![64]),
            ("blocks.1.norm1.weight", vec![64]),
            ("decoder_embed.weight", vec![32, 64]),
            ("decoder_blocks.0.norm1.weight", vec![32]),
        ]);
        let d = detect(e.iter().map(|(k, s)| (*k, s.as_slice()))).unwrap();
        assert_eq!(d.model_name(), "mae_vit_tiny_patch4");
        assert!(d.describe().contains("not an official size"));
    }
}
