//! Port of main_pretrain.py: `mae pretrain`, MAE pre-training with the official recipe
//! (flags and defaults as the official argparse; one process, no DDP).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tch::{nn, Device};

use crate::engine_pretrain::{train_one_epoch, Step};
use crate::models_mae::{self, MaeConfig};
use crate::torchvision::datasets::{FashionMNIST, ImageFolder, FASHION_MNIST_ROOT};
use crate::util::amp::Precision;
use crate::util::arg_check::{self, Schedule};
use crate::util::data_loader::{DataLoader, EpochOptions, ImageSource, ResizedCrop};
use crate::util::datasets;
use crate::util::distributed::{self, DistArgs};
use crate::util::lr_sched::LrArgs;
use crate::util::misc::{self, py_float, timedelta, NativeScalerWithGradNormCount as NativeScaler};
use crate::util::optim::{add_weight_decay, named_parameters, AdamW};
use crate::util::pickle::Value;
use crate::util::plot;
use crate::util::tensorboard;

const DEFAULT_DATA_PATH: &str = "/datasets01/imagenet_full_size/061417/";

/// MAE pre-training
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// Batch size per GPU (effective batch size is batch_size * accum_iter * # gpus
    #[arg(long = "batch_size", default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 400)]
    pub epochs: i64,
    /// Accumulate gradient iterations (for increasing the effective batch size under memory constraints)
    #[arg(long = "accum_iter", default_value_t = 1)]
    pub accum_iter: usize,

    // Model parameters
    /// Name of model to train
    #[arg(long, default_value = "mae_vit_large_patch16")]
    pub model: String,
    /// images input size
    #[arg(long = "input_size", default_value_t = 224)]
    pub input_size: i64,
    /// Masking ratio (percentage of removed patches).
    #[arg(long = "mask_ratio", default_value_t = 0.75)]
    pub mask_ratio: f64,
    /// Use (per-patch) normalized pixels as targets for computing loss
    #[arg(long = "norm_pix_loss")]
    pub norm_pix_loss: bool,

    // Optimizer parameters
    /// weight decay (default: 0.05)
    #[arg(long = "weight_decay", default_value_t = 0.05)]
    pub weight_decay: f64,
    /// learning rate (absolute lr)
    #[arg(long)]
    pub lr: Option<f64>,
    /// base learning rate: absolute_lr = base_lr * total_batch_size / 256
    #[arg(long, default_value_t = 1e-3)]
    pub blr: f64,
    /// lower lr bound for cyclic schedulers that hit 0
    #[arg(long = "min_lr", default_value_t = 0.)]
    pub min_lr: f64,
    /// epochs to warmup LR
    #[arg(long = "warmup_epochs", default_value_t = 40)]
    pub warmup_epochs: i64,

    // Dataset parameters
    /// dataset path (ImageFolder: its `train` sub-directory is used; fashion_mnist: the IDX
    /// files, /usr/share/datasets/fashion-mnist when left at the default)
    #[arg(long = "data_path", default_value = DEFAULT_DATA_PATH)]
    pub data_path: PathBuf,
    /// Not in the official script: `imagefolder` (data_path/train) or `fashion_mnist` (train split)
    #[arg(long, default_value = "imagefolder")]
    pub dataset: String,
    /// path where to save, empty for no saving
    #[arg(long = "output_dir", default_value = "./output_dir")]
    pub output_dir: String,
    /// path where to tensorboard log (events.out.tfevents.*; empty: none)
    #[arg(long = "log_dir", default_value = "./output_dir")]
    pub log_dir: String,
    /// device to use for training / testing (cuda falls back to cpu when unavailable)
    #[arg(long, default_value = "cuda")]
    pub device: String,
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// resume from checkpoint
    #[arg(long, default_value = "")]
    pub resume: String,
    /// start epoch
    #[arg(long = "start_epoch", default_value_t = 0)]
    pub start_epoch: i64,
    #[arg(long = "num_workers", default_value_t = 10)]
    pub num_workers: usize,
    /// Pin CPU memory in DataLoader (accepted for compatibility)
    #[arg(long = "pin_mem", overrides_with = "no_pin_mem")]
    pub pin_mem: bool,
    #[arg(long = "no_pin_mem")]
    pub no_pin_mem: bool,

    // distributed training parameters
    #[command(flatten)]
    pub dist: DistArgs,

    // Not in the official parser
    /// Train on the first N training images only (short runs, tests)
    #[arg(long = "train_subset")]
    pub train_subset: Option<usize>,
    /// Save output_dir/checkpoint-N.pth every this many epochs and after the last (the official
    /// saves every 20)
    #[arg(long = "save_freq", default_value_t = 20)]
    pub save_freq: i64,
    /// Autocast dtype of the training forward: fp32, bf16 or fp16 (CUDA only, with dynamic loss
    /// scaling); weights, gradients and AdamW state stay float32 [default: fp32 on the CPU, fp16
    /// on CUDA, as the official torch.cuda.amp + GradScaler]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
}

impl Args {
    /// The numeric flags in their ranges (util/arg_check.rs), before anything is built.
    pub fn validate(&self) -> Result<()> {
        Schedule {
            batch_size: self.batch_size as i64,
            epochs: self.epochs,
            accum_iter: self.accum_iter as i64,
            lr: self.lr,
            blr: self.blr,
            min_lr: self.min_lr,
            weight_decay: self.weight_decay,
            warmup_epochs: self.warmup_epochs,
            start_epoch: self.start_epoch,
            train_subset: self.train_subset,
        }
        .validate()?;
        arg_check::input_size(self.input_size, Some(&self.model))?;
        arg_check::in_range("mask_ratio", self.mask_ratio, 0., 1., false)?;
        arg_check::at_least("save_freq", self.save_freq, 1)?;
        arg_check::dist(&self.dist)
    }

    /// The fields `lr_sched.adjust_learning_rate` reads (`lr` must be resolved first).
    pub fn lr_args(&self) -> LrArgs {
        LrArgs {
            lr: self.lr.expect("args.lr is set in main before training"),
            min_lr: self.min_lr,
            warmup_epochs: self.warmup_epochs,
            epochs: self.epochs,
        }
    }

    /// `args` as a plain dict, as saved in checkpoints (the official saves the Namespace).
    pub fn to_value(&self) -> Value {
        let s = |v: &str| Value::Str(v.into());
        let f = Value::Float;
        let i = |v: i64| Value::Int(v);
        let items = vec![
            ("batch_size", i(self.batch_size as i64)),
            ("epochs", i(self.epochs)),
            ("accum_iter", i(self.accum_iter as i64)),
            ("model", s(&self.model)),
            ("input_size", i(self.input_size)),
            ("mask_ratio", f(self.mask_ratio)),
            ("norm_pix_loss", Value::Bool(self.norm_pix_loss)),
            ("weight_decay", f(self.weight_decay)),
            ("lr", self.lr.map_or(Value::None, f)),
            ("blr", f(self.blr)),
            ("min_lr", f(self.min_lr)),
            ("warmup_epochs", i(self.warmup_epochs)),
            ("data_path", s(&self.data_path.to_string_lossy())),
            ("dataset", s(&self.dataset)),
            ("output_dir", s(&self.output_dir)),
            ("log_dir", s(&self.log_dir)),
            ("device", s(&self.device)),
            ("seed", i(self.seed)),
            ("resume", s(&self.resume)),
            ("start_epoch", i(self.start_epoch)),
            ("num_workers", i(self.num_workers as i64)),
            ("pin_mem", Value::Bool(!self.no_pin_mem)),
            ("world_size", i(distributed::get_world_size() as i64)),
            ("local_rank", i(self.dist.local_rank)),
            ("dist_on_itp", Value::Bool(self.dist.dist_on_itp)),
            ("dist_url", s(&self.dist.dist_url)),
            ("distributed", Value::Bool(distributed::info().distributed)),
        ];
        Value::Dict(items.into_iter().map(|(k, v)| (s(k), v)).collect())
    }
}

/// `torch.device(args.device)`; CUDA requested without one is a warning, then the CPU.
fn device_of(name: &str) -> Result<Device> {
    Ok(match name {
        "cpu" => Device::Cpu,
        n if n == "cuda" || n.starts_with("cuda:") => {
            let idx = n
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse)
                .with_context(|| format!("--device {n}: expected cpu, cuda or cuda:N"))?;
            if tch::Cuda::is_available() {
                Device::Cuda(idx)
            } else {
                eprintln!("warning: --device {n} but CUDA is not available: training on the CPU");
                Device::Cpu
            }
        }
        n => bail!("--device {n}: expected cpu, cuda or cuda:N"),
    })
}

/// The training set of `--dataset`, printed as the official `print(dataset_train)`.
fn build_dataset(args: &Args) -> Result<Arc<dyn ImageSource>> {
    Ok(match args.dataset.as_str() {
        "imagefolder" => {
            let ds = ImageFolder::new(&args.data_path.join("train"))?;
            println!("{ds}");
            Arc::new(ds)
        }
        "fashion_mnist" => {
            let root = if args.data_path == Path::new(DEFAULT_DATA_PATH) {
                PathBuf::from(FASHION_MNIST_ROOT)
            } else {
                args.data_path.clone()
            };
            let ds = FashionMNIST::new(&root, true)?;
            println!(
                "Dataset FashionMNIST\n    Number of datapoints: {}\n    Root location: {}\n    Split: Train",
                ds.len(),
                root.display()
            );
            Arc::new(ds)
        }
        d => bail!("--dataset {d}: expected imagefolder or fashion_mnist"),
    })
}

pub fn main(mut args: Args) -> Result<()> {
    args.validate()?;
    println!("{}", format!("{args:?}").replace(", ", ",\n"));
    let device = misc::init_distributed_mode(&args.dist, device_of(&args.device)?)?
        .device(device_of(&args.device)?);
    // --precision checked before the data and the model are built
    let precision = Precision::for_device(args.precision, device)?;

    // fix the seed for reproducibility (not `seed + rank` as the official: every rank draws the
    // masking noise of the whole global batch and keeps its rows, distributed::global_batch_noise)
    tch::manual_seed(args.seed);

    // simple augmentation
    let input_size = u32::try_from(args.input_size).context("--input_size")?;
    let dataset_train = datasets::first(build_dataset(&args)?, args.train_subset);
    // transform_train as data: the loader decodes only each box's part of a JPEG
    let crop = ResizedCrop::pretrain(input_size);
    let data_loader_train = DataLoader {
        dataset: dataset_train,
        transform: Arc::new(move |img, rng| crop.apply(img, rng)),
        batch_size: args.batch_size,
        num_workers: args.num_workers,
        seed: args.seed as u64,
        prefetch: 2,
    };
    if data_loader_train.is_empty() {
        bail!(
            "{} images make no full batch of {} (the last partial batch is dropped)",
            data_loader_train.dataset.len(),
            args.batch_size
        );
    }
    println!("Sampler_train = shuffled, seed {} + epoch", args.seed);

    // define the model
    let mut vs = nn::VarStore::new(device);
    let cfg = MaeConfig {
        img_size: args.input_size,
        norm_pix_loss: args.norm_pix_loss,
        ..MaeConfig::default()
    };
    let model = models_mae::build(&args.model, &vs.root(), cfg)?;
    let model_size = model.patch_embed.img_size;
    if model_size != args.input_size {
        bail!(
            "--model {} takes {model_size}×{model_size} images, --input_size is {}",
            args.model,
            args.input_size
        );
    }
    let n_params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    println!("Model = {} ({n_params} trainable parameters)", args.model);
    distributed::distributed_data_parallel(&vs)?;

    let eff_batch_size = args.batch_size * args.accum_iter * misc::get_world_size();
    let lr = *args
        .lr
        .get_or_insert(args.blr * eff_batch_size as f64 / 256.); // only base_lr is specified
    println!("base lr: {}", py_e2(lr * 256. / eff_batch_size as f64));
    println!("actual lr: {}", py_e2(lr));
    println!("accumulate grad iterations: {}", args.accum_iter);
    println!("effective batch size: {eff_batch_size}");

    // following timm: set wd as 0 for bias and norm layers
    let param_groups = add_weight_decay(named_parameters(&vs), args.weight_decay, &[]);
    let mut optimizer = AdamW::new(param_groups, lr, (0.9, 0.95));
    println!("{optimizer}");
    println!("precision: {precision:?}");
    let mut loss_scaler = NativeScaler::new(precision == Precision::Fp16);

    if !args.resume.is_empty() {
        let resume = PathBuf::from(&args.resume);
        if let Some(start) = misc::load_model(&resume, &mut vs, &mut optimizer, &mut loss_scaler)? {
            args.start_epoch = start;
        }
    }

    let output_dir = PathBuf::from(&args.output_dir);
    if !args.output_dir.is_empty() {
        std::fs::create_dir_all(&output_dir)
            .with_context(|| format!("creating --output_dir {}", output_dir.display()))?;
    }
    let mut log_writer = tensorboard::main_process_writer(&args.log_dir)?;
    println!("Start training for {} epochs", args.epochs);
    let start_time = Instant::now();
    for epoch in args.start_epoch..args.epochs {
        // Not in the official: the masking noise of epoch e comes from torch's generator seeded
        // with seed + e (epoch 0 continues after the model init), so a resumed run is identical.
        if epoch > 0 {
            tch::manual_seed(args.seed + epoch);
        }
        // pin_memory=True: on CUDA the batches arrive on the device (non_blocking copy)
        let opts = EpochOptions {
            device: Some(device),
            crop: Some(crop),
            ..Default::default()
        };
        let batches = data_loader_train.epoch_with(epoch as u64, &opts)?;
        let train_stats = train_one_epoch(
            &model,
            batches,
            &mut optimizer,
            device,
            epoch,
            &mut loss_scaler,
            log_writer.as_mut(),
            &args,
        )?;
        let save = !args.output_dir.is_empty() && misc::is_main_process(); // save_on_master
        if save && (epoch % args.save_freq == 0 || epoch + 1 == args.epochs) {
            misc::save_model(
                &output_dir,
                args.to_value(),
                epoch,
                &vs,
                &optimizer,
                &loss_scaler,
            )?;
        }

        if save {
            // json.dumps({'train_lr': .., 'train_loss': .., 'epoch': ..}): keys in this order
            let log_stats = format!(
                "{{\"train_lr\": {}, \"train_loss\": {}, \"epoch\": {epoch}}}",
                py_float(train_stats.lr),
                py_float(train_stats.loss)
            );
            append(&output_dir.join("log.txt"), &format!("{log_stats}\n"))?;
            let steps: String = train_stats
                .steps
                .iter()
                .map(|Step { epoch, loss, lr }| format!("{epoch},{loss},{lr}\n"))
                .collect();
            append(&output_dir.join("train_steps.csv"), &steps)?;
        }
        if let Some(w) = log_writer.as_mut() {
            w.flush()?;
        }
    }

    let total_time = start_time.elapsed().as_secs_f64();
    println!("Training time {}", timedelta(total_time));
    if !args.output_dir.is_empty() && misc::is_main_process() {
        let png = output_dir.join("loss_curve.png");
        plot::loss_curve(&output_dir.join("train_steps.csv"), &png, &args.model)?;
        println!("Loss curve: {}", png.display());
    }
    Ok(())
}

/// Python's `"%.2e" % v` (the exponent has at least two digits: `1.00e-03`).
pub fn py_e2(v: f64) -> String {
    let s = format!("{v:.2e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

fn append(path: &Path, text: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
