//! Not in the reference: `mae predict`, a fine-tuned classifier on photos. Each image goes
//! through the official eval transform (`mae eval`'s: resize to input_size / 0.875 with
//! Pillow's bicubic, center crop, ImageNet normalisation) and gets its top-k classes with their
//! softmax probabilities and readable names.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::class_subset::{imagenet_lemmas, IMAGENET_1K};
use super::Classifier;
use crate::cli::device;
use crate::interop::{detect, hub};
use crate::torch::amp::{self, Precision};
use crate::torchvision::datasets::pil_loader;
use crate::torchvision::pil::PassOrder;
use crate::torchvision::transforms::eval_transform_with;

/// Fashion-MNIST's classes, in label order (torchvision's `FashionMNIST.classes`).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Classify images with a fine-tuned ViT.
#[derive(clap::Args, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub struct Args {
    /// Fine-tuned classifier: an official mae_finetuned_*.pth, a `mae finetune` checkpoint, or
    /// weights/mae_finetuned_fmnist_mini_patch4.pth
    #[arg(long)]
    pub resume: PathBuf,
    /// Image to classify (repeat the flag or list several)
    #[arg(long = "image", num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// How many classes to list per image
    #[arg(long, default_value_t = 5)]
    pub topk: i64,
    /// Print JSON instead of the table
    #[arg(long)]
    pub json: bool,
    /// Class names, one a line in class order [default: the ImageNet-1k lemmas for 1000
    /// classes, Fashion-MNIST's for this project's 10-class vit_mini_patch4, else the indices]
    #[arg(long)]
    pub class_names: Option<PathBuf>,
    /// Input size [default: the checkpoint's, from its position embedding]
    #[arg(long)]
    pub input_size: Option<i64>,
    /// cpu, cuda or cuda:N [default: cuda when available]
    #[arg(long)]
    pub device: Option<String>,
    /// Resample as Pillow 12 (horizontal pass first, as the official numbers were computed) or 13
    #[arg(long, default_value = "12")]
    pub pillow: PassOrder,
    /// Autocast dtype of the forward: fp32, bf16 or fp16 (CUDA only) [default: fp32 on the CPU,
    /// fp16 on CUDA, as `mae eval`]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

/// The names of the classes and where they come from.
fn class_names(args: &Args, f: &detect::Finetuned) -> Result<(Vec<String>, String)> {
    if let Some(path) = &args.class_names {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --class_names {}", path.display()))?;
        let names: Vec<String> = text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if names.len() as i64 != f.num_classes {
            bail!(
                "--class_names {}: {} names for the {} classes of {}",
                path.display(),
                names.len(),
                f.num_classes,
                args.resume.display()
            );
        }
        return Ok((names, path.display().to_string()));
    }
    Ok(match (f.num_classes, f.size) {
        (IMAGENET_1K, _) => (
            imagenet_lemmas().into_iter().map(String::from).collect(),
            "ImageNet-1k (timm's WordNet lemmas)".into(),
        ),
        (10, "mini") => (
            FASHION_MNIST_CLASSES.map(String::from).to_vec(),
            "Fashion-MNIST".into(),
        ),
        (n, _) => (
            (0..n).map(|i| format!("class {i}")).collect(),
            "indices (no --class_names)".into(),
        ),
    })
}

/// One image's top-k: (class, probability).
fn top_k(probs: &Tensor, k: i64) -> Vec<(i64, f64)> {
    let (p, i) = probs.topk(k, 0, true, true);
    (0..k)
        .map(|j| (i.int64_value(&[j]), p.double_value(&[j])))
        .collect()
}

/// `mae predict`.
pub fn main(args: Args) -> Result<()> {
    if args.topk < 1 {
        bail!("--topk {}: must be at least 1", args.topk);
    }
    let device = device(args.device.as_deref())?;
    let precision = Precision::for_device(args.precision, device)?;
    let sd = hub::load(&args.resume, true)?.sd;
    let f = detect::finetuned(&sd, &args.resume)?;
    let (names, source) = class_names(&args, &f)?;
    let input_size = args.input_size.unwrap_or(f.img_size);
    let size = u32::try_from(input_size).ok().filter(|&s| s > 0);
    let size = size.with_context(|| format!("--input_size {input_size}: must be positive"))?;
    let what = args.resume.display().to_string();
    let (_vs, model) = Classifier {
        what: &what,
        name: f.model.clone(),
        num_classes: f.num_classes,
        global_pool: f.global_pool,
        input_size,
        sd,
    }
    .load(device)?;
    eprintln!(
        "{}: {}, {} classes, input {input_size}; names: {source}",
        args.resume.display(),
        f.model,
        f.num_classes
    );

    let k = args.topk.min(f.num_classes);
    let mut images = Vec::new();
    for path in &args.images {
        let x = eval_transform_with(&pil_loader(path)?, size, args.pillow).unsqueeze(0);
        let logits = tch::no_grad(|| {
            let _amp = amp::autocast(device, precision);
            model.forward_t(&x.to_device(device), false)
        })?;
        let probs = logits.to_kind(Kind::Float).softmax(1, Kind::Float).get(0);
        images.push((path, top_k(&probs.to_device(tch::Device::Cpu), k)));
    }

    if args.json {
        let images: Vec<_> = images
            .iter()
            .map(|(path, top)| {
                let top: Vec<_> = top
                    .iter()
                    .map(|&(c, p)| serde_json::json!({"class": c, "name": names[c as usize], "prob": p}))
                    .collect();
                serde_json::json!({"image": path, "top": top})
            })
            .collect();
        let out = serde_json::json!({
            "checkpoint": args.resume,
            "model": f.model,
            "names": source,
            "images": images,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (path, top) in &images {
        println!("{}", path.display());
        for &(c, p) in top {
            println!("  {:>6.2} %  {c:>4}  {}", 100. * p, names[c as usize]);
        }
    }
    Ok(())
}
