//! Port of main_linprobe.py: `mae linprobe`, linear probing of a pre-trained encoder: the head
//! becomes BatchNorm1d(affine=False, eps=1e-6) + Linear (keys `head.0.*`, `head.1.*`), everything
//! else is frozen, LARS (util/lars.py) on the head.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use tch::{nn, nn::ModuleT, Kind, Tensor};

use crate::cli::arg_check::{self, Schedule};
use crate::engine_finetune::{evaluate, train_one_epoch};
use crate::models_vit::{self, VisionTransformer, VitConfig};
use crate::timm::loss::Criterion;
use crate::timm::{linear, trunc_normal_, LinearInit};
use crate::torch::amp::Precision;
use crate::torchvision::pil::PassOrder;

use crate::cli::pyfmt::{json_dumps, py_e2, timedelta, Stat};
use crate::cli::{self, device};
use crate::interop::hub;
use crate::torch::data_loader::{
    labelled_batches, DataLoader, DataLoaderVal, EpochOptions, ResizedCrop, Transform,
};
use crate::torch::distributed::{self, DistArgs};
use crate::torch::serialization::pickle::Value;
use crate::torch::tensorboard;
use crate::util::datasets::{build_dataset, DEFAULT_DATA_PATH};
use crate::util::lars::Lars;
use crate::util::lr_sched::LrArgs;
use crate::util::misc;
use crate::util::misc::NativeScalerWithGradNormCount;

/// MAE linear probing for image classification
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
#[command(rename_all = "snake_case")]
pub struct Args {
    /// Batch size per GPU (effective batch size is batch_size * accum_iter * # gpus
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 90)]
    pub epochs: i64,
    /// Accumulate gradient iterations (for increasing the effective batch size under memory constraints)
    #[arg(long, default_value_t = 1)]
    pub accum_iter: usize,

    // Model parameters
    /// Name of model to train
    #[arg(long, default_value = "vit_large_patch16")]
    pub model: String,

    // Optimizer parameters
    /// weight decay (default: 0 for linear probe following MoCo v1)
    #[arg(long, default_value_t = 0.)]
    pub weight_decay: f64,
    /// learning rate (absolute lr)
    #[arg(long)]
    pub lr: Option<f64>,
    /// base learning rate: absolute_lr = base_lr * total_batch_size / 256
    #[arg(long, default_value_t = 0.1)]
    pub blr: f64,
    /// lower lr bound for cyclic schedulers that hit 0
    #[arg(long, default_value_t = 0.)]
    pub min_lr: f64,
    /// epochs to warmup LR
    #[arg(long, default_value_t = 10)]
    pub warmup_epochs: i64,

    // * Finetuning params
    /// finetune from checkpoint
    #[arg(long, default_value = "")]
    pub finetune: String,
    /// Pool the patch tokens (fc_norm) instead of the class token
    #[arg(long)]
    pub global_pool: bool,
    /// Use class token instead of global pool for classification (the default)
    #[arg(long, conflicts_with = "global_pool")]
    pub cls_token: bool,

    // Dataset parameters
    /// dataset path
    #[arg(long, default_value = DEFAULT_DATA_PATH)]
    pub data_path: PathBuf,
    /// Not in the official script: `imagefolder` or `fashion_mnist` (train / test split)
    #[arg(long, default_value = "imagefolder")]
    pub dataset: String,
    /// Not in the official script: train on the first N training images only
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Not in the official script: autocast dtype of the forward, fp32, bf16 or fp16 (CUDA only,
    /// with dynamic loss scaling); weights, gradients and LARS state stay float32 [default: fp32
    /// on the CPU, fp16 on CUDA, as the official torch.cuda.amp + GradScaler]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Not in the official script (which crops 224): images input size
    #[arg(long, default_value_t = 224)]
    pub input_size: i64,
    /// number of the classification types
    #[arg(long, default_value_t = 1000)]
    pub nb_classes: i64,
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
    /// Perform evaluation only
    #[arg(long)]
    pub eval: bool,
    /// Enabling distributed evaluation
    #[arg(long)]
    pub dist_eval: bool,
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
        arg_check::at_least("nb_classes", self.nb_classes, 1)?;
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

    /// `args` as saved in checkpoints (cli::args_value).
    pub fn to_value(&self) -> Result<Value> {
        cli::args_value(self, vec![])
    }
}

/// The linear-probing model: the encoder (its `head` is Identity) and
/// `head = Sequential(BatchNorm1d(D, affine=False, eps=1e-6), Linear(D, nb_classes))`.
pub struct LinProbe {
    pub vit: VisionTransformer,
    pub bn: nn::BatchNorm,
    pub num_batches_tracked: Tensor,
    pub head: nn::Linear,
}

impl LinProbe {
    pub fn new(vs: &nn::Path, model: &str, cfg: VitConfig) -> Result<Self> {
        let nb_classes = cfg.num_classes;
        let vit = models_vit::build(
            model,
            vs,
            VitConfig {
                num_classes: 0,
                ..cfg
            },
        )?;
        let dim = vit.cls_token.size()[2];
        let head0 = vs / "head" / "0";
        let bn_cfg = nn::BatchNormConfig {
            eps: 1e-6,
            affine: false,
            ..Default::default()
        };
        let bn = nn::batch_norm1d(&head0, dim, bn_cfg);
        let num_batches_tracked = head0.add(
            "num_batches_tracked",
            Tensor::zeros([], (Kind::Int64, vs.device())),
            false,
        );
        let head = linear(
            vs / "head" / "1",
            dim,
            nb_classes,
            LinearInit::TruncNormal(0.02),
        );
        Ok(LinProbe {
            vit,
            bn,
            num_batches_tracked,
            head,
        })
    }

    /// `model(x)`: the encoder is frozen (run without a graph); BatchNorm uses batch statistics
    /// and updates its running ones in train mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let features = tch::no_grad(|| self.vit.forward_features(x, train))?;
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        Ok(self.bn.forward_t(&features, train).apply(&self.head))
    }
}

pub fn main(mut args: Args) -> Result<()> {
    args.validate()?;
    println!("{}", format!("{args:?}").replace(", ", ",\n"));
    let dist = misc::init_distributed_mode(&args.dist, device(args.device.as_deref())?)?;
    distributed::set_dist_eval(args.dist_eval);
    let device = dist.device(device(args.device.as_deref())?);
    let precision = Precision::for_device(args.precision, device)?;
    tch::manual_seed(args.seed);

    // linear probe: weak augmentation
    let input_size = u32::try_from(args.input_size).context("--input_size")?;
    let dataset_train =
        build_dataset(true, &args.dataset, &args.data_path)?.first(args.train_subset);
    let dataset_val = build_dataset(false, &args.dataset, &args.data_path)?;
    // transform_train as data: the loader decodes only each box's part of a JPEG
    let data_loader_train = DataLoader {
        dataset: dataset_train.dataset.clone(),
        transform: Transform::Crop(ResizedCrop::linprobe(input_size)),
        batch_size: args.batch_size,
        num_workers: args.num_workers,
        seed: args.seed as u64,
        prefetch: 2,
    };
    ensure!(
        !data_loader_train.is_empty(),
        "{} images make no full batch of {}",
        dataset_train.dataset.len(),
        args.batch_size
    );
    // transform_val: resize and center crop (torchvision::transforms::eval_transform), Pillow 12
    let data_loader_val = DataLoaderVal::new(
        dataset_val.dataset.clone(),
        dataset_val.targets.clone(),
        args.batch_size,
        args.num_workers,
        args.input_size,
        PassOrder::Pillow12,
    )?;

    let mut vs = nn::VarStore::new(device);
    let cfg = VitConfig {
        img_size: args.input_size,
        num_classes: args.nb_classes,
        drop_path_rate: 0.,
        global_pool: args.global_pool,
        ..VitConfig::default()
    };
    let mut model = LinProbe::new(&vs.root(), &args.model, cfg)?;
    if !args.finetune.is_empty() && !args.eval {
        let path = Path::new(&args.finetune);
        let checkpoint_model = hub::load(path, false)?.sd;
        println!("Load pre-trained checkpoint from: {}", path.display());
        model
            .vit
            .load_pretrained(&mut vs, checkpoint_model, "head.1")
            .with_context(|| format!("--finetune {} into {}", path.display(), args.model))?;

        // manually initialize fc layer: following MoCo v3
        trunc_normal_(&mut model.head.ws, 0.01);
    }

    // freeze all but the head
    for (name, p) in vs.variables() {
        let _ = p.set_requires_grad(name.starts_with("head.1."));
    }
    let n_parameters: usize = vs
        .variables()
        .values()
        .filter(|p| p.requires_grad())
        .map(Tensor::numel)
        .sum();
    println!("Model = {}", args.model);
    distributed::distributed_data_parallel(&vs)?; // plain BatchNorm, as the official DDP
    println!("number of params (M): {:.2}", n_parameters as f64 / 1.0e6);

    let eff_batch_size = args.batch_size * args.accum_iter * misc::get_world_size();
    let lr = *args
        .lr
        .get_or_insert(args.blr * eff_batch_size as f64 / 256.);
    println!("base lr: {}", py_e2(lr * 256. / eff_batch_size as f64));
    println!("actual lr: {}", py_e2(lr));
    println!("accumulate grad iterations: {}", args.accum_iter);
    println!("effective batch size: {eff_batch_size}");

    let head_params = vec![
        ("head.1.weight".to_string(), model.head.ws.shallow_clone()),
        (
            "head.1.bias".to_string(),
            model.head.bs.as_ref().expect("head bias").shallow_clone(),
        ),
    ];
    let mut optimizer = Lars::new(head_params, lr, args.weight_decay);
    println!("{optimizer}");
    let mut loss_scaler = NativeScalerWithGradNormCount::new(precision == Precision::Fp16);
    let criterion = Criterion::CrossEntropyLoss;
    println!("criterion = {criterion}");

    if !args.resume.is_empty() {
        let resume = PathBuf::from(&args.resume);
        if let Some(start) = misc::load_model(&resume, &mut vs, &mut optimizer, &mut loss_scaler)? {
            args.start_epoch = start;
        }
    }
    let forward_eval = |x: &Tensor| model.forward_t(x, false);
    if args.eval {
        let (test_stats, _) = evaluate(&data_loader_val, &forward_eval, device, precision, false)?;
        println!(
            "Accuracy of the network on the {} test images: {:.1}%",
            test_stats.images, test_stats.acc1
        );
        return Ok(());
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
            None,
            None,
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
            log_stats.push(("n_parameters".into(), Stat::Int(n_parameters as i64)));
            cli::append(
                &output_dir.join("log.txt"),
                &(json_dumps(&log_stats) + "\n"),
            )?;
        }
        if let Some(w) = log_writer.as_mut() {
            w.flush()?;
        }
    }
    println!(
        "Training time {}",
        timedelta(start_time.elapsed().as_secs_f64())
    );
    Ok(())
}
