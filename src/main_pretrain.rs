//! Port of main_pretrain.py: `mae pretrain`, MAE pre-training with the official recipe (flags
//! and defaults as the official argparse; one process, or DDP over c10d).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::nn;

use crate::cli;
use crate::cli::arg_check::{self, Schedule};
use crate::cli::plot;
use crate::cli::pyfmt::{json_dumps, py_e2, timedelta, Stat};
use crate::engine_pretrain::{self, train_one_epoch};
use crate::models_mae::{self, MaeConfig, MaskSampling};
use crate::torch::amp::Precision;
use crate::torch::data_loader::{DataLoader, EpochOptions, ResizedCrop, Transform};
use crate::torch::distributed::{self, DistArgs};
use crate::torch::optim::{add_weight_decay, named_parameters, AdamImpl, AdamW};
use crate::torch::serialization::pickle::Value;
use crate::torch::tensorboard;
use crate::torchvision::pil::Filter;
use crate::torchvision::transforms::{
    color_jitter, eval_transform, hflip, pretrain_crop_params, resized_crop, to_tensor_normalize,
    IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
};
use crate::util::datasets::{build_dataset, DEFAULT_DATA_PATH};
use crate::util::lr_sched::LrArgs;
use crate::util::misc::{self, NativeScalerWithGradNormCount as NativeScaler, Step};

/// MAE pre-training
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
#[command(rename_all = "snake_case")]
pub struct Args {
    /// Batch size per GPU (effective batch size is batch_size * accum_iter * # gpus
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 400)]
    pub epochs: i64,
    /// Accumulate gradient iterations (for increasing the effective batch size under memory constraints)
    #[arg(long, default_value_t = 1)]
    pub accum_iter: usize,

    // Model parameters
    /// Name of model to train
    #[arg(long, default_value = "mae_vit_large_patch16")]
    pub model: String,
    /// images input size
    #[arg(long, default_value_t = 224)]
    pub input_size: i64,
    /// Masking ratio (percentage of removed patches).
    #[arg(long, default_value_t = 0.75)]
    pub mask_ratio: f64,
    /// Use (per-patch) normalized pixels as targets for computing loss
    #[arg(long)]
    pub norm_pix_loss: bool,

    // Optimizer parameters
    /// weight decay (default: 0.05)
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// learning rate (absolute lr)
    #[arg(long)]
    pub lr: Option<f64>,
    /// base learning rate: absolute_lr = base_lr * total_batch_size / 256
    #[arg(long, default_value_t = 1e-3)]
    pub blr: f64,
    /// lower lr bound for cyclic schedulers that hit 0
    #[arg(long, default_value_t = 0.)]
    pub min_lr: f64,
    /// epochs to warmup LR
    #[arg(long, default_value_t = 40)]
    pub warmup_epochs: i64,

    // Dataset parameters
    /// dataset path (ImageFolder: its `train` sub-directory is used; fashion_mnist: the IDX
    /// files, /usr/share/datasets/fashion-mnist when left at the default)
    #[arg(long, default_value = DEFAULT_DATA_PATH)]
    pub data_path: PathBuf,
    /// Not in the official script: `imagefolder` (data_path/train) or `fashion_mnist` (train split)
    #[arg(long, default_value = "imagefolder")]
    pub dataset: String,
    /// path where to save, empty for no saving
    #[arg(long, default_value = "./output_dir")]
    pub output_dir: String,
    /// path where to tensorboard log (events.out.tfevents.*; empty: none)
    #[arg(long, default_value = "./output_dir")]
    pub log_dir: String,
    /// device to use for training / testing: cpu, cuda, cuda:N [default: cuda when available]
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: i64,
    /// resume from checkpoint
    #[arg(long, default_value = "")]
    pub resume: String,
    /// start epoch
    #[arg(long, default_value_t = 0)]
    pub start_epoch: i64,
    #[arg(long, default_value_t = 10)]
    pub num_workers: usize,
    /// Pin CPU memory in DataLoader (accepted for compatibility)
    #[arg(long, overrides_with = "no_pin_mem")]
    pub pin_mem: bool,
    #[arg(long)]
    pub no_pin_mem: bool,

    // distributed training parameters
    #[command(flatten)]
    pub dist: DistArgs,

    // Not in the official parser
    /// Train on the first N training images only (short runs, tests)
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Save output_dir/checkpoint-N.pth every this many epochs and after the last (the official
    /// saves every 20)
    #[arg(long, default_value_t = 20)]
    pub save_freq: i64,
    /// Autocast dtype of the training forward: fp32, bf16 or fp16 (CUDA only, with dynamic loss
    /// scaling); weights, gradients and AdamW state stay float32 [default: fp32 on the CPU, fp16
    /// on CUDA, as the official torch.cuda.amp + GradScaler]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// AdamW through torch's `fused=True` kernel (one kernel per step) instead of torch's default
    /// (foreach on CUDA, single-tensor on the CPU)
    #[arg(long)]
    pub fused_optimizer: bool,

    // Not in the official parser: the paper's ablations (docs/REPRODUCTION.md), off by default
    /// Which patches are masked (Figure 6): random (the official), block (BEiT's block-wise
    /// masking) or grid (one patch kept of every 2×2; --mask_ratio 0.75)
    #[arg(long, value_enum, default_value_t = MaskSampling::Random)]
    pub mask_sampling: MaskSampling,
    /// The encoder sees every patch, the masked ones replaced by a learned mask token (Table 1(c),
    /// "encoder w/ [M]"); adds `encoder_mask_token` to the checkpoint
    #[arg(long)]
    pub encoder_mask_token: bool,
    /// Decoder blocks instead of the preset's (Table 1(a))
    #[arg(long)]
    pub decoder_depth: Option<i64>,
    /// Decoder width instead of the preset's (Table 1(b)); a multiple of its heads
    #[arg(long)]
    pub decoder_embed_dim: Option<i64>,
    /// Pre-training augmentation (Table 1(e)): none (center crop, no flip), crop_fixed (fixed-size
    /// random crop + flip), crop_rand (the official RandomResizedCrop + flip), crop_color
    /// (crop_rand + ColorJitter 0.4)
    #[arg(long, value_enum, default_value_t = PretrainAug::CropRand)]
    pub pretrain_aug: PretrainAug,
}

/// Not in the reference (the paper's Table 1(e)): the pre-training augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum PretrainAug {
    /// "no data augmentation (only center-crop, no flipping)": the evaluation transform,
    /// Resize(input_size / 0.875) and CenterCrop(input_size).
    None,
    /// "cropping-only, fixed-size" with random horizontal flipping: a square of side
    /// 0.875·min(W, H) at a uniformly random position (the region a RandomCrop(input_size) after
    /// Resize(input_size / 0.875) takes), resized to input_size (bicubic).
    CropFixed,
    /// "cropping-only, random-size" with flipping: the official RandomResizedCrop(scale 0.2–1).
    CropRand,
    /// crop_rand, then torchvision's ColorJitter(0.4, 0.4, 0.4) (the strength of timm's
    /// `color_jitter=0.4`; the paper does not give one).
    CropColor,
}

impl PretrainAug {
    /// `transform_train` of this augmentation at `size`.
    pub fn transform(self, size: u32) -> Transform {
        match self {
            PretrainAug::None => Transform::new(move |img, _| eval_transform(img, size)),
            PretrainAug::CropFixed => Transform::Crop(ResizedCrop {
                size,
                params: |w, h, rng| {
                    let side = (0.875 * w.min(h) as f64).round().max(1.) as i64;
                    let top = rng.randint(0, h as i64 - side + 1);
                    let left = rng.randint(0, w as i64 - side + 1);
                    (top, left, side, side)
                },
                fast_decode: false,
            }),
            PretrainAug::CropRand => Transform::Crop(ResizedCrop::pretrain(size)),
            PretrainAug::CropColor => Transform::new(move |img, rng| {
                let (i, j, h, w) = pretrain_crop_params(img.width(), img.height(), rng);
                let img = resized_crop(img, i, j, h, w, size, Filter::Bicubic);
                let img = match rng.uniform(0., 1.) < 0.5 {
                    true => hflip(&img),
                    false => img,
                };
                let img = color_jitter(&img, (0.4, 0.4, 0.4), rng);
                to_tensor_normalize(&img, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
            }),
        }
    }
}

impl Args {
    /// The numeric flags in their ranges (cli::arg_check), before anything is built.
    pub fn validate(&self) -> Result<()> {
        Schedule {
            batch_size: self.batch_size,
            epochs: self.epochs,
            accum_iter: self.accum_iter,
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
        arg_check::opt_at_least("decoder_depth", self.decoder_depth, 1)?;
        arg_check::opt_at_least("decoder_embed_dim", self.decoder_embed_dim, 4)?;
        if let Some(d) = self.decoder_embed_dim.filter(|d| d % 4 != 0) {
            bail!("--decoder_embed_dim {d}: must be a multiple of 4 (the 2-D sin-cos position embedding)");
        }
        arg_check::dist(&self.dist)
    }

    /// The fields `lr_sched.adjust_learning_rate` reads (`lr` must be resolved first).
    pub fn lr_args(&self) -> LrArgs {
        LrArgs {
            lr: self.lr.expect("args.lr is set before training"),
            min_lr: self.min_lr,
            warmup_epochs: self.warmup_epochs,
            epochs: self.epochs,
        }
    }

    /// `args` as saved in checkpoints (cli::args_value), with what `main` derives.
    pub fn to_value(&self) -> Result<Value> {
        let dist = distributed::info();
        cli::args_value(
            self,
            vec![
                ("pin_mem", Value::Bool(!self.no_pin_mem)),
                ("world_size", Value::Int(dist.world_size as i64)),
                ("rank", Value::Int(dist.rank as i64)),
                ("distributed", Value::Bool(dist.distributed)),
            ],
        )
    }
}

pub fn main(mut args: Args) -> Result<()> {
    args.validate()?;
    println!("{}", format!("{args:?}").replace(", ", ",\n"));
    let device = cli::device(args.device.as_deref())?;
    let device = misc::init_distributed_mode(&args.dist, device)?.device(device);
    // --precision checked before the data and the model are built
    let precision = Precision::for_device(args.precision, device)?;

    // fix the seed for reproducibility (not `seed + rank` as the official: every rank draws the
    // masking noise of the whole global batch and keeps its rows, distributed::global_batch_noise)
    tch::manual_seed(args.seed);

    // simple augmentation
    let input_size = u32::try_from(args.input_size).context("--input_size")?;
    let dataset_train = build_dataset(true, &args.dataset, &args.data_path)?
        .first(args.train_subset)
        .dataset;
    // transform_train (crop_rand) as data: the loader decodes only each box's part of a JPEG
    let data_loader_train = DataLoader {
        dataset: dataset_train,
        transform: args.pretrain_aug.transform(input_size),
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
        decoder_override: (args.decoder_embed_dim, args.decoder_depth),
        encoder_mask_token: args.encoder_mask_token,
        ..MaeConfig::default()
    };
    let mut model = models_mae::build(&args.model, &vs.root(), cfg)?;
    model.mask_sampling = args.mask_sampling;
    if let Some(blk) = model.decoder_blocks.first() {
        let (width, heads) = (model.mask_token.size()[2], blk.attn.num_heads);
        if width % heads != 0 {
            bail!("--decoder_embed_dim {width}: must be a multiple of the decoder's {heads} heads");
        }
    }
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
    // Not in the official: the cost the paper's Table 1(c) and Table 2 compare
    let (encoder, decoder) = model.flops(args.mask_ratio);
    println!(
        "Forward GFLOPs per image (matmuls and attention, multiply-add = 2): encoder {:.4}, decoder {:.4}, total {:.4}",
        encoder / 1e9,
        decoder / 1e9,
        (encoder + decoder) / 1e9
    );
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
    let mut optimizer = AdamW::new(param_groups, lr, (0.9, 0.95))
        .with_implementation(AdamImpl::for_device(device, args.fused_optimizer));
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
    let engine_args = engine_pretrain::Args {
        accum_iter: args.accum_iter,
        mask_ratio: args.mask_ratio,
        precision,
        lr: args.lr_args(),
    };
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
            &engine_args,
        )?;
        let save = !args.output_dir.is_empty() && misc::is_main_process(); // save_on_master
        if save && (epoch % args.save_freq == 0 || epoch + 1 == args.epochs) {
            misc::save_model(
                &output_dir,
                args.to_value()?,
                epoch,
                &vs,
                &optimizer,
                &loss_scaler,
            )?;
        }

        if save {
            let mut log_stats = train_stats.log_items("train_");
            log_stats.push(("epoch".into(), Stat::Int(epoch)));
            cli::append(
                &output_dir.join("log.txt"),
                &(json_dumps(&log_stats) + "\n"),
            )?;
            let steps: String = train_stats
                .steps
                .iter()
                .map(|Step { epoch, loss, lr }| format!("{epoch},{loss},{lr}\n"))
                .collect();
            cli::append(&output_dir.join("train_steps.csv"), &steps)?;
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
