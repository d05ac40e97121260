//! Port of main_finetune.py: its argument parser (official flag spellings and defaults),
//! fine-tuning (`mae finetune`: layer-wise lr decay, AdamW, mixup/cutmix, evaluation every epoch,
//! checkpoints, `--resume`) and the `--eval` path (`mae eval`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::cli::arg_check::{self, Schedule};
use crate::cli::pyfmt::{json_dumps, py_e2, timedelta, Stat};
use crate::cli::{self, device};
use crate::engine_finetune::{evaluate, train_one_epoch};
use crate::eval::class_subset::{self, ClassSubset};
use crate::eval::{imagenet_c, Classifier};
use crate::interop::detect;
use crate::interop::hub;
use crate::models_vit::{self, VitConfig};
use crate::timm::loss::Criterion;
use crate::timm::mixup::Mixup;
use crate::timm::trunc_normal_;
use crate::torch::amp::Precision;
use crate::torch::data_loader::{
    labelled_batches, DataLoader, DataLoaderVal, EpochOptions, Transform,
};
use crate::torch::distributed::{self, DistArgs};
use crate::torch::optim::{named_parameters, AdamImpl, AdamW};
use crate::torch::serialization;
use crate::torch::serialization::pickle::Value;
use crate::torch::tensorboard;
use crate::torchvision::datasets::ImageFolder;
use crate::torchvision::pil::PassOrder;
use crate::util::datasets::{build_dataset, Split, TrainTransform, DEFAULT_DATA_PATH};
use crate::util::lr_decay::param_groups_lrd;
use crate::util::lr_sched::LrArgs;
use crate::util::misc;
use crate::util::misc::NativeScalerWithGradNormCount as NativeScaler;

/// MAE fine-tuning for image classification (`get_args_parser`).
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
#[command(rename_all = "snake_case")]
pub struct Args {
    /// Batch size per GPU (effective batch size is batch_size * accum_iter * # gpus
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 50)]
    pub epochs: i64,
    /// Accumulate gradient iterations (for increasing the effective batch size under memory constraints)
    #[arg(long, default_value_t = 1)]
    pub accum_iter: usize,

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

    // Optimizer parameters
    /// Clip gradient norm (default: None, no clipping)
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// weight decay (default: 0.05)
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// learning rate (absolute lr)
    #[arg(long)]
    pub lr: Option<f64>,
    /// base learning rate: absolute_lr = base_lr * total_batch_size / 256
    #[arg(long, default_value_t = 1e-3)]
    pub blr: f64,
    /// layer-wise lr decay from ELECTRA/BEiT
    #[arg(long, default_value_t = 0.75)]
    pub layer_decay: f64,
    /// lower lr bound for cyclic schedulers that hit 0
    #[arg(long, default_value_t = 1e-6)]
    pub min_lr: f64,
    /// epochs to warmup LR
    #[arg(long, default_value_t = 5)]
    pub warmup_epochs: i64,

    // Augmentation parameters
    /// Color jitter factor (enabled only when not using Auto/RandAug)
    #[arg(long)]
    pub color_jitter: Option<f64>,
    /// Use AutoAugment policy. "v0" or "original". (RandAugment policies `rand-…-inc1` and none are ported)
    #[arg(long, default_value = "rand-m9-mstd0.5-inc1")]
    pub aa: String,
    /// Label smoothing (default: 0.1)
    #[arg(long, default_value_t = 0.1)]
    pub smoothing: f64,

    // * Random Erase params
    /// Random erase prob (default: 0.25)
    #[arg(long, default_value_t = 0.25)]
    pub reprob: f64,
    /// Random erase mode (default: "pixel")
    #[arg(long, default_value = "pixel")]
    pub remode: String,
    /// Random erase count (default: 1)
    #[arg(long, default_value_t = 1)]
    pub recount: i64,
    /// Do not random erase first (clean) augmentation split (accepted; one split here)
    #[arg(long)]
    pub resplit: bool,

    // * Mixup params
    /// mixup alpha, mixup enabled if > 0.
    #[arg(long, default_value_t = 0.)]
    pub mixup: f64,
    /// cutmix alpha, cutmix enabled if > 0.
    #[arg(long, default_value_t = 0.)]
    pub cutmix: f64,
    /// cutmix min/max ratio, overrides alpha and enables cutmix if set (default: None)
    #[arg(long, num_args = 2)]
    pub cutmix_minmax: Option<Vec<f64>>,
    /// Probability of performing mixup or cutmix when either/both is enabled
    #[arg(long, default_value_t = 1.0)]
    pub mixup_prob: f64,
    /// Probability of switching to cutmix when both mixup and cutmix enabled
    #[arg(long, default_value_t = 0.5)]
    pub mixup_switch_prob: f64,
    /// How to apply mixup/cutmix params. Per "batch", "pair", or "elem"
    #[arg(long, default_value = "batch")]
    pub mixup_mode: String,

    // * Finetuning params
    /// finetune from checkpoint
    #[arg(long, default_value = "")]
    pub finetune: String,

    /// Global average pooling of the patch tokens (the official default) [default: as the checkpoint]
    #[arg(long)]
    pub global_pool: bool,
    /// Use class token instead of global pool for classification
    #[arg(long, conflicts_with = "global_pool")]
    pub cls_token: bool,

    // Dataset parameters
    /// dataset path (DATA_PATH/train and DATA_PATH/val, one folder per class)
    #[arg(long, default_value = DEFAULT_DATA_PATH)]
    pub data_path: PathBuf,
    /// Not in the official script: `imagefolder` or `fashion_mnist` (train / test split)
    #[arg(long, default_value = "imagefolder")]
    pub dataset: String,
    /// Not in the official script: train on the first N training images only
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// number of the classification types [default: the checkpoint's head when evaluating, 10 for fashion_mnist, else 1000]
    #[arg(long)]
    pub nb_classes: Option<i64>,

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

    /// Perform evaluation only (implied by `mae eval`)
    #[arg(long)]
    pub eval: bool,
    /// Enabling distributed evaluation (recommended during training for faster monitor)
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

    // distributed training parameters
    #[command(flatten)]
    pub dist: DistArgs,

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
    /// Autocast dtype of the training and evaluation forwards: fp32, bf16 or fp16 (CUDA only, with
    /// dynamic loss scaling when training); weights, gradients and AdamW state stay float32
    /// [default: fp32 on the CPU, fp16 on CUDA, as the official torch.cuda.amp + GradScaler]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// AdamW through torch's `fused=True` kernel (one kernel per step) instead of torch's default
    /// (foreach on CUDA, single-tensor on the CPU)
    #[arg(long)]
    pub fused_optimizer: bool,
    /// Partial fine-tuning (the paper's Figure 9): train only the last K blocks, the final norm
    /// and the head, the rest frozen; 0 trains the norm and the head
    #[arg(long)]
    pub partial_blocks: Option<usize>,
    /// Evaluation: number the class folders of DATA_PATH/val by their WordNet ids, as the 1000
    /// ImageNet classes (imagenet-1k: ImageNet-Sketch, a partial val) or scored on the 200 of
    /// ImageNet-A / -R (the logits at their indices; docs/EVALUATION.md) [default: ImageFolder's
    /// numbering, as the official]
    #[arg(long, value_enum)]
    pub class_subset: Option<ClassSubset>,
    /// Evaluation on ImageNet-C, DIR/<corruption>/<severity 1-5>/<wnid>/images: top-1 error of
    /// every set, their means and the mCE (docs/EVALUATION.md)
    #[arg(long, value_name = "DIR", conflicts_with_all = ["class_subset", "output_json", "save_logits"])]
    pub imagenet_c: Option<PathBuf>,
    /// With --imagenet_c: write the table to FILE, with every set as it finishes; a run restarted
    /// with the same FILE skips the sets it records
    #[arg(long, value_name = "FILE", requires = "imagenet_c")]
    pub json: Option<PathBuf>,
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
        arg_check::input_size(self.input_size, self.model.as_deref())?;
        arg_check::in_range("drop_path", self.drop_path, 0., 1., false)?;
        if let Some(c) = self.clip_grad {
            arg_check::positive_up_to("clip_grad", c, f64::INFINITY)?;
        }
        arg_check::positive_up_to("layer_decay", self.layer_decay, 1.)?;
        arg_check::opt_at_least("color_jitter", self.color_jitter, 0.)?;
        arg_check::in_range("smoothing", self.smoothing, 0., 1., false)?;
        arg_check::in_range("reprob", self.reprob, 0., 1., true)?;
        arg_check::at_least("recount", self.recount, 1)?;
        arg_check::at_least("mixup", self.mixup, 0.)?;
        arg_check::at_least("cutmix", self.cutmix, 0.)?;
        if let Some(mm) = &self.cutmix_minmax {
            let ok = mm.len() == 2 && 0. < mm[0] && mm[0] <= mm[1] && mm[1] <= 1.;
            if !ok {
                bail!(
                    "--cutmix_minmax {}: must be two numbers MIN MAX with 0 < MIN <= MAX <= 1",
                    mm.iter().map(f64::to_string).collect::<Vec<_>>().join(" ")
                );
            }
        }
        arg_check::in_range("mixup_prob", self.mixup_prob, 0., 1., true)?;
        arg_check::in_range("mixup_switch_prob", self.mixup_switch_prob, 0., 1., true)?;
        arg_check::opt_at_least("nb_classes", self.nb_classes, 1)?;
        if !self.eval && (self.class_subset.is_some() || self.imagenet_c.is_some()) {
            bail!("--class_subset and --imagenet_c evaluate a checkpoint: use mae eval");
        }
        arg_check::dist(&self.dist)
    }
}

/// `main(args)` of main_finetune.py: fine-tune `--model` (from `--finetune` when given) with
/// layer-wise lr decay, evaluating on the validation split after every epoch; with `--eval`,
/// evaluate `--resume` and stop.
pub fn main(mut args: Args) -> Result<()> {
    args.validate()?;
    misc::init_distributed_mode(&args.dist, device(args.device.as_deref())?)?;
    distributed::set_dist_eval(args.dist_eval);

    println!("{}", format!("{args:?}").replace(", ", ",\n"));
    let device = distributed::info().device(device(args.device.as_deref())?);
    // --precision checked before the data and the model are built
    let precision = Precision::for_device(args.precision, device)?;

    // fix the seed for reproducibility
    tch::manual_seed(args.seed);

    // Not in the official: --eval takes the model, its classes and its pooling from the
    // --resume checkpoint (given --model, the official flags), and reads no training split
    let run = match args.eval {
        true => Run::Eval(eval_checkpoint(&args)?),
        false => {
            let split =
                build_dataset(true, &args.dataset, &args.data_path)?.first(args.train_subset);
            let input_size = u32::try_from(args.input_size).context("--input_size")?;
            let transform = TrainTransform::new(
                input_size,
                &args.aa,
                args.color_jitter,
                args.reprob,
                &args.remode,
                args.recount,
            )?;
            let loader = DataLoader {
                dataset: split.dataset.clone(),
                transform: Transform::new(move |img, rng| transform.apply(img, rng)),
                batch_size: args.batch_size,
                num_workers: args.num_workers,
                seed: args.seed as u64,
                prefetch: 2,
            };
            if loader.is_empty() {
                bail!(
                    "{} images make no full batch of {}",
                    split.dataset.len(),
                    args.batch_size
                );
            }
            Run::Train(split, loader)
        }
    };
    // Not in the official: --imagenet_c evaluates the checkpoint on the sets of its folder, not
    // on DATA_PATH/val (eval::imagenet_c)
    let run = match (run, &args.imagenet_c) {
        (Run::Eval(r), Some(dir)) => {
            return imagenet_c::main(r.imagenet_c_args(&args, dir, device, precision))
        }
        (run, _) => run,
    };
    let mut dataset_val = build_dataset(false, &args.dataset, &args.data_path)?;
    // Not in the official: --class_subset numbers the class folders by WordNet id
    if let Some(subset) = args.class_subset {
        let folder = dataset_val.folder.as_deref();
        dataset_val =
            subset.split(folder.context("--class_subset needs --dataset imagefolder")?)?;
    }
    let data_loader_val = DataLoaderVal::new(
        dataset_val.dataset.clone(),
        dataset_val.targets.clone(),
        args.batch_size,
        args.num_workers,
        args.input_size,
        args.pillow,
    )?;

    let nb_classes = match &run {
        Run::Eval(r) => r.nb_classes,
        Run::Train(..) => args.nb_classes.unwrap_or(match args.dataset.as_str() {
            "fashion_mnist" => 10,
            _ => 1000,
        }),
    };
    let cutmix_minmax = args.cutmix_minmax.as_ref().map(|v| (v[0], v[1]));
    let mixup_active = args.mixup > 0. || args.cutmix > 0. || cutmix_minmax.is_some();
    let mixup_fn = if mixup_active && !args.eval {
        if !args.batch_size.is_multiple_of(2) {
            bail!(
                "--batch_size {} with mixup/cutmix: timm's Mixup mixes sample i with sample B-1-i and needs an even batch size",
                args.batch_size
            );
        }
        println!("Mixup is activated!");
        Some(Mixup::new(
            args.mixup,
            args.cutmix,
            cutmix_minmax,
            args.mixup_prob,
            args.mixup_switch_prob,
            &args.mixup_mode,
            args.smoothing,
            nb_classes,
        )?)
    } else {
        None
    };

    let model_name = match &run {
        Run::Eval(r) => r.model.clone(),
        Run::Train(..) => args
            .model
            .clone()
            .unwrap_or_else(|| "vit_large_patch16".into()),
    };
    let mut vs = nn::VarStore::new(device);
    let cfg = VitConfig {
        img_size: args.input_size,
        num_classes: nb_classes,
        drop_path_rate: args.drop_path,
        global_pool: match &run {
            Run::Eval(r) => r.global_pool,
            Run::Train(..) => !args.cls_token,
        },
        // --eval: no random init, load_checkpoint (strict) overwrites every parameter
        init: !args.eval,
        ..VitConfig::default()
    };
    let mut model = models_vit::build(&model_name, &vs.root(), cfg)?;

    if !args.finetune.is_empty() && !args.eval {
        let path = Path::new(&args.finetune);
        let sd = hub::load(path, false)?.sd;
        println!("Load pre-trained checkpoint from: {}", path.display());
        model
            .load_pretrained(&mut vs, sd, "head")
            .with_context(|| format!("--finetune {} into {model_name}", path.display()))?;

        // manually initialize fc layer
        if let Some(head) = &mut model.head {
            trunc_normal_(&mut head.ws, 2e-5);
        }
    }

    // --class_subset imagenet-a / -r: the logits of the subset's classes
    let subset_logits = args.class_subset.and_then(|s| s.logit_indices(device));
    let forward_eval = |x: &Tensor| {
        Ok(class_subset::restrict(
            &model.forward_t(x, false)?,
            subset_logits.as_ref(),
        ))
    };
    let (dataset_train, data_loader_train) = match run {
        Run::Train(split, loader) => (split, loader),
        Run::Eval(resumed) => {
            // the official's misc.load_model(args, ...) with --resume, then evaluate and exit
            let resume = Path::new(&args.resume);
            model
                .load_checkpoint(&mut vs, resumed.sd)
                .with_context(|| format!("loading {} into {model_name}", resume.display()))?;
            println!("Resume checkpoint {}", resume.display());
            let keep_logits = args.output_json.is_some() || args.save_logits.is_some();
            let (test_stats, logits) = evaluate(
                &data_loader_val,
                &forward_eval,
                device,
                precision,
                keep_logits,
            )?;
            println!(
                "Accuracy of the network on the {} test images: {:.1}%",
                data_loader_val.num_images(),
                test_stats.acc1
            );
            if let Some(logits) = logits {
                if let Some(path) = &args.save_logits {
                    let t = Tensor::from_slice(&dataset_val.targets);
                    serialization::save_safetensors(
                        path,
                        &[
                            ("logits".into(), logits.shallow_clone()),
                            ("targets".into(), t),
                        ],
                    )?;
                }
                if let (Some(path), Some(folder)) = (&args.output_json, &dataset_val.folder) {
                    write_top5(path, folder, &logits)?;
                }
            }
            return Ok(());
        }
    };
    // Not in the official (the paper's Figure 9): partial fine-tuning
    if let Some(k) = args.partial_blocks {
        freeze_but_last_blocks(&vs, model.blocks.len(), k)
            .with_context(|| format!("--partial_blocks {k} of {model_name}"))?;
    }

    let n_parameters: i64 = vs
        .variables()
        .values()
        .filter(|p| p.requires_grad())
        .map(Tensor::numel)
        .sum::<usize>() as i64;
    println!("Model = {model_name}");
    distributed::distributed_data_parallel(&vs)?;
    println!("number of params (M): {:.2}", n_parameters as f64 / 1.0e6);

    let eff_batch_size = args.batch_size * args.accum_iter * misc::get_world_size();
    let lr = *args
        .lr
        .get_or_insert(args.blr * eff_batch_size as f64 / 256.);
    println!("base lr: {}", py_e2(lr * 256. / eff_batch_size as f64));
    println!("actual lr: {}", py_e2(lr));
    println!("accumulate grad iterations: {}", args.accum_iter);
    println!("effective batch size: {eff_batch_size}");

    // build optimizer with layer-wise lr decay (lrd)
    let (param_groups, _) = param_groups_lrd(
        named_parameters(&vs),
        model.blocks.len(),
        args.weight_decay,
        &["pos_embed", "cls_token", "dist_token"], // model.no_weight_decay()
        args.layer_decay,
    );
    let mut optimizer = AdamW::new(param_groups, lr, (0.9, 0.999))
        .with_implementation(AdamImpl::for_device(device, args.fused_optimizer));
    let mut loss_scaler = NativeScaler::new(precision == Precision::Fp16);

    let criterion = if mixup_fn.is_some() {
        // smoothing is handled with mixup label transform
        Criterion::SoftTargetCrossEntropy
    } else if args.smoothing > 0. {
        Criterion::LabelSmoothingCrossEntropy {
            smoothing: args.smoothing,
        }
    } else {
        Criterion::CrossEntropyLoss
    };
    println!("criterion = {criterion}");

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
    let forward_train = |x: &Tensor| model.forward_t(x, true);
    let mut log_writer = tensorboard::main_process_writer(&args.log_dir)?;
    println!("Start training for {} epochs", args.epochs);
    let start_time = std::time::Instant::now();
    let mut max_accuracy = 0.0f64;
    for epoch in args.start_epoch..args.epochs {
        // Not in the official: drop path and mixup draw from torch's generator seeded with
        // seed + epoch (epoch 0 continues after the model init), so a resumed run is identical.
        if epoch > 0 {
            tch::manual_seed(args.seed + epoch);
        }
        // pin_memory=True: on CUDA the batches arrive on the device (non_blocking copy)
        let opts = EpochOptions {
            device: Some(device),
            ..Default::default()
        };
        let batches = labelled_batches(
            &data_loader_train,
            dataset_train.targets.clone(),
            epoch as u64,
            &opts,
        )?;
        let train_stats = train_one_epoch(
            &forward_train,
            criterion,
            batches,
            &mut optimizer,
            device,
            precision,
            epoch,
            &mut loss_scaler,
            args.clip_grad,
            mixup_fn.as_ref(),
            log_writer.as_mut(),
            args.accum_iter,
            &args.lr_args(),
        )?;
        let save = !args.output_dir.is_empty() && misc::is_main_process(); // save_on_master
        if save {
            misc::save_model(
                &output_dir,
                args.to_value()?,
                epoch,
                &vs,
                &optimizer,
                &loss_scaler,
            )?;
        }

        let (test_stats, _) = evaluate(&data_loader_val, &forward_eval, device, precision, false)?;
        println!(
            "Accuracy of the network on the {} test images: {:.1}%",
            test_stats.images, test_stats.acc1
        );
        max_accuracy = max_accuracy.max(test_stats.acc1);
        println!("Max accuracy: {max_accuracy:.2}%");
        if let Some(w) = log_writer.as_mut() {
            w.add_scalar("perf/test_acc1", test_stats.acc1, epoch)?;
            w.add_scalar("perf/test_acc5", test_stats.acc5, epoch)?;
            w.add_scalar("perf/test_loss", test_stats.loss, epoch)?;
        }

        if save {
            let mut log_stats = train_stats.log_items("train_");
            log_stats.extend(test_stats.log_items("test_"));
            log_stats.push(("epoch".into(), Stat::Int(epoch)));
            log_stats.push(("n_parameters".into(), Stat::Int(n_parameters)));
            cli::append(
                &output_dir.join("log.txt"),
                &(json_dumps(&log_stats) + "\n"),
            )?;
        }
        if let Some(w) = log_writer.as_mut() {
            w.flush()?;
        }
    }
    let total_time = start_time.elapsed().as_secs_f64();
    println!("Training time {}", timedelta(total_time));
    Ok(())
}

/// Not in the reference (the paper's Figure 9, partial fine-tuning): only the last `k` of the
/// `depth` blocks, the final norm (`norm`, or `fc_norm` with global pool) and the head keep
/// training; every other parameter is frozen, so that no optimizer group holds it.
pub fn freeze_but_last_blocks(vs: &nn::VarStore, depth: usize, k: usize) -> Result<()> {
    if k > depth {
        bail!("the model has {depth} blocks");
    }
    for (name, p) in vs.variables() {
        let block = name
            .strip_prefix("blocks.")
            .and_then(|rest| rest.split('.').next()?.parse::<usize>().ok());
        let trained = match block {
            Some(i) => i >= depth - k,
            None => ["head.", "norm.", "fc_norm."]
                .iter()
                .any(|prefix| name.starts_with(prefix)),
        };
        if !trained {
            let _ = p.set_requires_grad(false);
        }
    }
    println!("partial fine-tuning: the last {k} of {depth} blocks, the norm and the head");
    Ok(())
}

/// What `main` runs: the evaluation of a checkpoint (`--eval`), or training on a split with
/// its loader.
enum Run {
    Eval(Resumed),
    Train(Split, DataLoader),
}

/// The `--resume` checkpoint of `--eval` and the model it holds.
struct Resumed {
    model: String,
    nb_classes: i64,
    global_pool: bool,
    sd: Vec<(String, Tensor)>,
}

/// Not in the official: `--eval` reads the model name, the number of classes and the pooling
/// from the `--resume` checkpoint; `--model`, `--nb_classes`, `--global_pool` / `--cls_token`
/// override them.
fn eval_checkpoint(args: &Args) -> Result<Resumed> {
    if args.resume.is_empty() {
        bail!("--resume CHECKPOINT is required to evaluate (a fine-tuned checkpoint such as mae_finetuned_vit_base.pth; see weights/README.md)");
    }
    let resume = Path::new(&args.resume);
    let sd = hub::load(resume, true)?.sd; // the model keeps it: no copy
    let (model, nb_classes, global_pool) = match &args.model {
        Some(m) => (m.clone(), args.nb_classes.unwrap_or(1000), !args.cls_token),
        None => {
            let f = detect::finetuned(&sd, resume)?;
            let global_pool = match args.cls_token || args.global_pool {
                true => !args.cls_token,
                false => f.global_pool,
            };
            (
                f.model,
                args.nb_classes.unwrap_or(f.num_classes),
                global_pool,
            )
        }
    };
    if let Some(subset) = args.class_subset {
        subset.check_head(nb_classes)?;
    }
    // --dataset fashion_mnist evaluates its test split, whose images have no paths
    if let (Some(path), false) = (&args.output_json, args.dataset == "imagefolder") {
        bail!(
            "--output_json {} lists image paths: it needs --dataset imagefolder",
            path.display()
        );
    }
    Ok(Resumed {
        model,
        nb_classes,
        global_pool,
        sd,
    })
}

impl Resumed {
    /// What `--imagenet_c DIR` evaluates.
    fn imagenet_c_args<'a>(
        self,
        args: &'a Args,
        dir: &'a Path,
        device: Device,
        precision: Precision,
    ) -> imagenet_c::Args<'a> {
        imagenet_c::Args {
            dir,
            json: args.json.as_deref(),
            classifier: Classifier {
                what: &args.resume,
                name: self.model,
                num_classes: self.nb_classes,
                global_pool: self.global_pool,
                input_size: args.input_size,
                sd: self.sd,
            },
            batch_size: args.batch_size,
            num_workers: args.num_workers,
            pillow: args.pillow,
            device,
            precision,
        }
    }
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

impl Args {
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
        let global_pool = Value::Bool(!self.cls_token);
        cli::args_value(self, vec![("global_pool", global_pool)])
    }
}
