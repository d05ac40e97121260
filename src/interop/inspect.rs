//! `mae inspect`: what a checkpoint holds and which official model it matches (util/detect.rs).
//! Not in the reference.
use crate::interop::detect::{detect, has_official_name, verify_md5, Detected, Kind};
use crate::interop::hub;
use crate::torch::serialization;
use crate::torch::serialization::pickle::kind_name;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct Args {
    /// Checkpoint: .pth written by torch.save, .safetensors, or a Hugging Face folder
    /// (config.json + model.safetensors / pytorch_model.bin, or the hub cache's models--org--name).
    pub checkpoint: PathBuf,
    /// Containers longer than this are shortened in the top-level outline.
    #[arg(long, default_value_t = 6)]
    pub max_items: usize,
    /// Check the state_dict against this model (`mae_vit_base_patch16`, `vit_large_patch16`, …)
    /// and report missing / unexpected / mis-shaped keys as `load_state_dict(strict=False)` does.
    #[arg(long)]
    pub model: Option<String>,
    /// With --model vit_*: the cls-token variant (`norm`) instead of global pooling (`fc_norm`).
    #[arg(long)]
    pub cls_token: bool,
    /// Check the file's md5 against the prefixes published with the official checkpoints (done
    /// anyway when the file has an official name, e.g. mae_pretrain_vit_base.pth).
    #[arg(long)]
    pub verify: bool,
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let path = &args.checkpoint;
    let (file, config) = hub::weights_file(path)?;
    let bytes = std::fs::metadata(&file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let start = std::time::Instant::now();
    let verified = if args.verify || has_official_name(&file) {
        Some(verify_md5(&file)?)
    } else {
        None
    };
    // a mismatch is reported after the outline: a corrupt download that still parses, or the
    // user's own file under an official name, is worth seeing
    let outline = outline(&args, &file, config.as_deref(), bytes, start);
    match verified {
        Some(check) if check.mismatch => {
            if let Err(e) = &outline {
                eprintln!("error: {e:#}");
            }
            anyhow::ensure!(!args.verify, "{}", check.line);
            eprintln!("warning: {} (--verify makes this an error)", check.line);
            outline
        }
        Some(check) => {
            println!("{}", check.line);
            outline
        }
        None => outline,
    }
}

/// Everything `mae inspect` prints about the file's contents.
fn outline(
    args: &Args,
    file: &std::path::Path,
    config: Option<&std::path::Path>,
    bytes: u64,
    start: std::time::Instant,
) -> anyhow::Result<()> {
    let root = serialization::load(file)?;
    println!(
        "checkpoint: {} ({:.1} MB, loaded in {:.2} s)",
        file.display(),
        bytes as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    println!("top level: {}", root.summary(args.max_items));
    let loaded = hub::to_official(file.to_path_buf(), config.map(|c| c.to_path_buf()), root)
        .with_context(|| format!("{}: no state_dict", file.display()))?;
    println!("format: {}", loaded.format);
    let where_ = match loaded.format {
        hub::Format::Official | hub::Format::Safetensors => loaded.source.to_string(),
        _ => format!("{}, mapped to the official keys", loaded.source),
    };
    let sd = loaded.sd;
    println!("\nstate_dict ({where_}): {} tensors", sd.len());
    let width = sd.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut kinds = BTreeMap::new();
    let mut numel: i64 = 0;
    for (name, t) in &sd {
        let kind = kind_name(t.kind());
        *kinds.entry(kind).or_insert(0usize) += 1;
        numel += t.numel() as i64;
        println!("  {name:<width$}  {kind:<4}  {:?}", t.size());
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    println!(
        "parameters: {} ({:.2} M) in {} tensors; dtypes: {}",
        group_thousands(numel),
        numel as f64 / 1e6,
        sd.len(),
        kinds.join(", ")
    );
    let shapes: Vec<(String, Vec<i64>)> = sd.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    let detected = detect(shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice())));
    match &detected {
        Ok(d) => println!("model: {}", d.describe()),
        Err(e) => println!("model: not an official MAE/ViT checkpoint ({e})"),
    }
    if let Some(name) = &args.model {
        check_against(name, args.cls_token, detected.ok().as_ref(), sd)?;
    }
    Ok(())
}

/// Build `name` (at the checkpoint's resolution and class count) and load `sd` non-strictly.
fn check_against(
    name: &str,
    cls_token: bool,
    detected: Option<&Detected>,
    sd: Vec<(String, tch::Tensor)>,
) -> anyhow::Result<()> {
    let img_size = detected.map_or(224, |d| d.img_size);
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    if name.starts_with("mae_") {
        let cfg = crate::models_mae::MaeConfig {
            img_size,
            init: false, // only the names and shapes are compared
            ..Default::default()
        };
        crate::models_mae::build(name, &vs.root(), cfg)
            .with_context(|| format!("--model {name}"))?;
    } else {
        let num_classes = match detected.map(|d| &d.kind) {
            Some(Kind::Finetuned { num_classes, .. }) => *num_classes,
            _ => 1000,
        };
        let cfg = crate::models_vit::VitConfig {
            img_size,
            num_classes,
            global_pool: !cls_token,
            init: false,
            ..Default::default()
        };
        crate::models_vit::build(name, &vs.root(), cfg)
            .with_context(|| format!("--model {name}"))?;
    }
    let n = sd.len();
    let report = crate::torch::state_dict::load_state_dict(&mut vs, sd, false)?;
    if report.is_clean() {
        println!("check: all {n} keys load into {name} (names and shapes match)");
    } else {
        println!("check against {name} (strict=False): {report}");
    }
    Ok(())
}

fn group_thousands(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
