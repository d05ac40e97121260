//! Port of main_finetune.py: its argument parser (official flag spellings and defaults) and, for
//! now, the `--eval` path (`mae eval`): build the model, load `--resume`, evaluate
//! `data_path/val`. Fine-tuning itself is ported with its own issue.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::engine_finetune::{evaluate, Batch};
use crate::inspect::{self, Detected};
use crate::models_vit::{self, VitConfig};
use crate::torchvision::datasets::{pil_loader, ImageFolder};
use crate::torchvision::pil::PassOrder;
use crate::torchvision::transforms::eval_transform_with;
use crate::util::checkpoint;
use crate::util::misc::load_vit_checkpoint;

/// MAE fine-tuning for image classification (`get_args_parser`).
#[derive(clap::Args, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub struct Args {
    /// Batch size per GPU (effective batch size is batch_size * accum_iter * # gpus
    #[arg(long, default_value_t = 64)]
    pub batch_size: i64,

    // Model parameters
    /// Name of model to train [default: detected from --resume; the official default is vit_large_patch16]
    #[arg(long)]
    pub model: Option<String>,
    /// images input size
    #[arg(long, default_value_t = 224)]
    pub input_size: i64,
    /// Drop path rate (default: 0.1)
    #[arg(long, default_value_t = 0.1)]
    pub drop_path: f64,

    /// Global average pooling of the patch tokens (the official default) [default: as the checkpoint]
    #[arg(long)]
    pub global_pool: bool,
    /// Use class token instead of global pool for classification
    #[arg(long, conflicts_with = "global_pool")]
    pub cls_token: bool,

    // Dataset parameters
    /// dataset path (evaluation reads DATA_PATH/val, one folder per class)
    #[arg(long, default_value = "/datasets01/imagenet_full_size/061417/")]
    pub data_path: PathBuf,
    /// number of the classification types [default: the checkpoint's head, else 1000]
    #[arg(long)]
    pub nb_classes: Option<i64>,

    /// device to use for training / testing: cpu, cuda, cuda:N [default: cuda when available]
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// resume from checkpoint
    #[arg(long, default_value = "")]
    pub resume: String,

    /// Perform evaluation only (implied by `mae eval`)
    #[arg(long)]
    pub eval: bool,
    /// Enabling distributed evaluation (recommended during training for faster monitor); accepted, one process here
    #[arg(long)]
    pub dist_eval: bool,
    /// Threads decoding and transforming images, ahead of the model
    #[arg(long, default_value_t = 10)]
    pub num_workers: usize,
    /// Pin CPU memory in DataLoader (accepted for compatibility)
    #[arg(long)]
    pub pin_mem: bool,
    #[arg(long)]
    pub no_pin_mem: bool,

    // Not in the official parser
    /// Write each image's top-5 predictions (class, name, logit, probability) to this JSON file
    #[arg(long)]
    pub output_json: Option<PathBuf>,
    /// Write every image's logits [N, nb_classes] and targets to this safetensors file
    #[arg(long)]
    pub save_logits: Option<PathBuf>,
    /// Resample as Pillow 12 (horizontal pass first, as the official numbers were computed) or 13
    #[arg(long, default_value = "12")]
    pub pillow: PassOrder,
    /// On CUDA, run the forward in float32 instead of the official autocast (float16)
    #[arg(long)]
    pub no_amp: bool,
}

/// `torch.device(args.device)`; no flag means CUDA when available, else CPU.
pub fn device(arg: Option<&str>) -> Result<Device> {
    let dev = match arg {
        None => return Ok(Device::cuda_if_available()),
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(s) => match s.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("--device {s}: expected cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = dev {
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            bail!("--device cuda:{i}: {n} CUDA device(s) available");
        }
    }
    Ok(dev)
}

/// The official model a state dict holds, by key names and shapes (`mae inspect`), and the
/// `--model` name it loads into. The test-sized models are named here: inspect calls them custom.
pub fn detect_model(sd: &[(String, Tensor)]) -> Result<(Detected, String)> {
    let shapes: Vec<(&str, Vec<i64>)> = sd.iter().map(|(k, t)| (k.as_str(), t.size())).collect();
    let det = inspect::detect(shapes.iter().map(|(k, s)| (*k, s.as_slice())))?;
    let name = det.model_name();
    Ok((det, name))
}

/// `main(args)` of main_finetune.py; only `--eval` is ported so far.
pub fn main(args: &Args) -> Result<()> {
    if !args.eval {
        bail!(
            "fine-tuning (main_finetune.py without --eval) is not ported yet; `mae eval` evaluates"
        );
    }
    let device = device(args.device.as_deref())?;

    // fix the seed for reproducibility
    tch::manual_seed(args.seed);

    if args.resume.is_empty() {
        bail!("--resume CHECKPOINT is required to evaluate (a fine-tuned checkpoint such as mae_finetuned_vit_base.pth; see weights/README.md)");
    }
    let resume = Path::new(&args.resume);
    let sd = checkpoint::load_state_dict(resume)?;
    let detected = detect_model(&sd);
    let (model_name, nb_classes, global_pool) = match (&args.model, &detected) {
        (Some(m), _) => (m.clone(), args.nb_classes.unwrap_or(1000), !args.cls_token),
        (None, Ok((det, name))) => match det.kind {
            inspect::Kind::Finetuned {
                global_pool,
                num_classes,
            } => (
                name.clone(),
                args.nb_classes.unwrap_or(num_classes),
                if args.cls_token || args.global_pool {
                    !args.cls_token
                } else {
                    global_pool
                },
            ),
            _ => bail!(
                "{}: {}; evaluation needs a fine-tuned classifier (e.g. mae_finetuned_vit_base.pth)",
                resume.display(),
                det.describe()
            ),
        },
        (None, Err(e)) => bail!(
            "{}: cannot tell the model ({e:#}); pass --model",
            resume.display()
        ),
    };

    let dataset_val = build_dataset(args)?;
    println!("{dataset_val}");

    let mut vs = nn::VarStore::new(device);
    let cfg = VitConfig {
        img_size: args.input_size,
        num_classes: nb_classes,
        drop_path_rate: args.drop_path,
        global_pool,
        ..VitConfig::default()
    };
    let model = models_vit::build(&model_name, &vs.root(), cfg)?;
    load_vit_checkpoint(&mut vs, &model, sd)
        .with_context(|| format!("loading {} into {model_name}", resume.display()))?;
    println!("Resume checkpoint {}", resume.display());

    let num_images = dataset_val.len();
    let dataset_val = Arc::new(dataset_val);
    let data_loader_val = data_loader_val(dataset_val.clone(), args)?;
    let keep_logits = args.output_json.is_some() || args.save_logits.is_some();
    let amp = !args.no_amp;
    let (test_stats, logits) = evaluate(
        data_loader_val,
        num_images,
        &model,
        device,
        amp,
        keep_logits,
    )?;
    println!(
        "Accuracy of the network on the {num_images} test images: {:.1}%",
        test_stats.acc1
    );
    if let Some(logits) = logits {
        let targets: Vec<i64> = dataset_val.samples.iter().map(|s| s.1).collect();
        if let Some(path) = &args.save_logits {
            let t = Tensor::from_slice(&targets);
            checkpoint::save_safetensors(
                path,
                &[
                    ("logits".into(), logits.shallow_clone()),
                    ("targets".into(), t),
                ],
            )?;
        }
        if let Some(path) = &args.output_json {
            write_top5(path, &dataset_val, &logits)?;
        }
    }
    Ok(())
}

/// util/datasets.py `build_dataset(is_train=False, args)`: ImageFolder of `data_path/val`.
fn build_dataset(args: &Args) -> Result<ImageFolder> {
    let root = args.data_path.join("val");
    ImageFolder::new(&root).with_context(|| {
        format!(
            "--data_path {}: expected class folders of images under {}",
            args.data_path.display(),
            root.display()
        )
    })
}

/// `DataLoader(dataset_val, sampler=SequentialSampler, batch_size, num_workers, drop_last=False)`:
/// `num_workers` rayon threads decode and transform a batch while the model runs the previous
/// one (two batches queued at most). A failure stops the loader after sending its error.
fn data_loader_val(
    dataset: Arc<ImageFolder>,
    args: &Args,
) -> Result<impl Iterator<Item = Result<Batch>>> {
    use rayon::prelude::*;
    if args.batch_size < 1 {
        bail!("--batch_size must be at least 1, got {}", args.batch_size);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.num_workers.max(1))
        .build()
        .context("starting the data loader threads")?;
    let (batch_size, input_size, order) = (args.batch_size as usize, args.input_size, args.pillow);
    let input_size = u32::try_from(input_size).context("--input_size")?;
    let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(2);
    std::thread::spawn(move || {
        for chunk in dataset.samples.chunks(batch_size) {
            let images: Result<Vec<Tensor>> = pool.install(|| {
                chunk
                    .par_iter()
                    .map(|(path, _)| Ok(eval_transform_with(&pil_loader(path)?, input_size, order)))
                    .collect()
            });
            let target: Vec<i64> = chunk.iter().map(|s| s.1).collect();
            let batch = images.map(|images| Batch {
                images: Tensor::stack(&images, 0),
                target: Tensor::from_slice(&target),
            });
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return; // the consumer stopped, or it has the error
            }
        }
    });
    Ok(rx.into_iter())
}

/// `--output_json`: per image, its path, target and top-5 classes with logit and probability.
fn write_top5(path: &Path, dataset: &ImageFolder, logits: &Tensor) -> Result<()> {
    let k = logits.size()[1].min(5);
    let probs = logits.softmax(1, Kind::Float);
    let (top_p, top_i) = probs.topk(k, 1, true, true);
    let top_l = logits.gather(1, &top_i, false);
    let images: Vec<serde_json::Value> = dataset
        .samples
        .iter()
        .enumerate()
        .map(|(n, (p, target))| {
            let n = n as i64;
            let top5: Vec<serde_json::Value> = (0..k)
                .map(|j| {
                    let c = top_i.int64_value(&[n, j]);
                    serde_json::json!({
                        "class": c,
                        "name": dataset.classes.get(c as usize),
                        "logit": top_l.double_value(&[n, j]),
                        "prob": top_p.double_value(&[n, j]),
                    })
                })
                .collect();
            serde_json::json!({"path": p, "target": target, "top5": top5})
        })
        .collect();
    let json = serde_json::json!({"classes": dataset.classes, "images": images});
    std::fs::write(path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing --output_json {}", path.display()))
}
