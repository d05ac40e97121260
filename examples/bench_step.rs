//! The Rust side of tools/bench/bench_models.py (driven by tools/bench/bench.sh and
//! tools/bench/gpu_bench.sh): one model, one measurement, timed one step at a time on request so
//! that the Python driver can alternate with its PyTorch reference in the same run.
//!
//! - `--task forward`: models_vit eval forward (`no_grad`, `forward_t(x, false)`), as `mae eval`;
//! - `--task pretrain`: one step of engine_pretrain's loop on random images: models_mae forward
//!   under `torch::amp::autocast`, backward, AdamW step (`torch::optim`, the groups of
//!   main_pretrain), `zero_grad`; fp16 goes through `NativeScalerWithGradNormCount` enabled
//!   (GradScaler semantics: scaled backward, unscale, inf check, step);
//! - `--task finetune`: one step of engine_finetune's loop on random images and labels: models_vit
//!   train forward (drop path 0.1) under autocast, LabelSmoothingCrossEntropy(0.1) on float32
//!   logits, backward, AdamW (0.9, 0.999) over util/lr_decay's groups (layer decay 0.75),
//!   zero_grad;
//! - `--task adamw`: the AdamW step alone over the models_vit parameters, gradients fixed.
//!
//! `--adamw single|foreach|fused` picks the optimizer's kernels (default: torch's choice for the
//! device, `AdamImpl::for_device`).
//!
//! Timing: prints `ready threads N params P` after two warm-up steps, then for every stdin line
//! `step` runs one step and prints its seconds (CUDA is synchronised before the clock is read);
//! EOF ends it. Parity: `--weights W --inputs I --dump OUT` loads official-key weights and `x`
//! (and `noise` for MAE) from safetensors, runs one eval forward under the precision and writes
//! the float32 outputs (`out`; MAE: `loss`, `pred`, `mask`) to OUT, then exits.
//!
//! Usage: bench_step --task forward|pretrain|finetune|adamw --model NAME --batch B
//!        --precision fp32|bf16|fp16 --device cpu|cuda [--adamw single|foreach|fused]
//!        [--weights W --inputs I --dump OUT] [--cudnn false]
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use mae::models_mae::{self, MaeConfig, MaskedAutoencoderViT};
use mae::models_vit::{self, VisionTransformer, VitConfig};
use mae::timm::loss::Criterion;
use mae::torch::amp::{self, Precision};
use mae::torch::optim::{add_weight_decay, named_parameters, AdamImpl, AdamW, ParamGroup};
use mae::torch::serialization;
use mae::torch::state_dict::load_state_dict;
use mae::util::lr_decay::param_groups_lrd;
use mae::util::misc::NativeScalerWithGradNormCount;
use tch::{nn, Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Task {
    Forward,
    Pretrain,
    Finetune,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kernels {
    Single,
    Foreach,
    Fused,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    task: Task,
    /// models_vit name (forward) or models_mae name (pretrain)
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 8)]
    batch: i64,
    #[arg(long, value_enum, default_value = "fp32")]
    precision: Precision,
    /// cpu or cuda (cuda:N for another card)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// AdamW's kernels [default: torch's choice, foreach on CUDA, single-tensor elsewhere]
    #[arg(long, value_enum)]
    adamw: Option<Kernels>,
    /// input resolution (default: the model's, 224 or 32 for the *_patch4 test models)
    #[arg(long)]
    img_size: Option<i64>,
    /// parity: official-key weights (safetensors or .pth)
    #[arg(long, requires_all = ["inputs", "dump"])]
    weights: Option<PathBuf>,
    /// parity: `x` [N, 3, H, W] (and `noise` [N, L] for MAE)
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// parity: where to write the float32 outputs (safetensors)
    #[arg(long)]
    dump: Option<PathBuf>,
    /// cuDNN on/off: parity runs turn it off, since libtorch's `cudnn.allow_tf32` defaults to
    /// true (the patch-embedding convolution would run in TF32) and tch cannot set it
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cudnn: bool,
}

fn parse_device(s: &str) -> Result<Device> {
    let device = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("--device {s:?}: expected cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = device {
        ensure!(
            tch::Cuda::is_available() && (i as i64) < tch::Cuda::device_count(),
            "--device {s}: CUDA device {i} is not available ({} visible)",
            tch::Cuda::device_count()
        );
    }
    Ok(device)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

enum Model {
    Vit(Box<VisionTransformer>),
    Mae(Box<MaskedAutoencoderViT>),
}

fn build(args: &Args, vs: &nn::VarStore) -> Result<Model> {
    let small = args.model.ends_with("_patch4");
    let img_size = args.img_size.unwrap_or(if small { 32 } else { 224 });
    Ok(match args.task {
        Task::Forward | Task::Finetune | Task::Adamw => {
            let cfg = VitConfig {
                img_size,
                ..VitConfig::default()
            };
            Model::Vit(Box::new(models_vit::build(&args.model, &vs.root(), cfg)?))
        }
        Task::Pretrain => {
            let cfg = MaeConfig {
                img_size,
                ..MaeConfig::default()
            };
            let model = models_mae::build(&args.model, &vs.root(), cfg)?;
            Model::Mae(Box::new(model))
        }
    })
}

/// Parity: one eval forward on the given weights and inputs; float32 outputs to `--dump`.
fn dump(args: &Args, mut vs: nn::VarStore, model: &Model, device: Device) -> Result<()> {
    let (weights, inputs, out) = match (&args.weights, &args.inputs, &args.dump) {
        (Some(w), Some(i), Some(o)) => (w, i, o),
        _ => bail!("--weights, --inputs and --dump go together"),
    };
    load_state_dict(&mut vs, serialization::load_state_dict(weights)?, true)
        .with_context(|| format!("loading {}", weights.display()))?;
    let io: Vec<(String, Tensor)> = serialization::load_state_dict(inputs)?;
    let get = |k: &str| -> Result<Tensor> {
        let t = io.iter().find(|(n, _)| n == k);
        let t = t.with_context(|| format!("{} has no tensor {k:?}", inputs.display()))?;
        Ok(t.1.to_device(device))
    };
    let x = get("x")?;
    let f32 = |t: Tensor| t.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let outputs = tch::no_grad(|| -> Result<Vec<(String, Tensor)>> {
        let _amp = amp::autocast(device, args.precision);
        Ok(match model {
            Model::Vit(m) => vec![("out".into(), f32(m.forward_t(&x, false)?))],
            Model::Mae(m) => {
                let noise = get("noise")?;
                let (loss, pred, mask) = m.forward_with_noise(&x, 0.75, Some(&noise))?;
                vec![
                    ("loss".into(), f32(loss.reshape([1]))),
                    ("pred".into(), f32(pred)),
                    ("mask".into(), f32(mask)),
                ]
            }
        })
    })?;
    serialization::save_safetensors(out, &outputs)
}

fn main() -> Result<()> {
    mae::torch::malloc::retain_freed_memory(); // as the `mae` binary
    let args = Args::parse();
    let device = parse_device(&args.device)?;
    if !args.cudnn {
        tch::Cuda::set_user_enabled_cudnn(false);
    }
    let vs = nn::VarStore::new(device);
    let model = build(&args, &vs)?;
    if args.dump.is_some() {
        return dump(&args, vs, &model, device);
    }

    let (img, n) = match &model {
        Model::Vit(m) => (m.patch_embed.img_size, args.batch),
        Model::Mae(m) => (m.patch_embed.img_size, args.batch),
    };
    let x = Tensor::randn([n, 3, img, img], (Kind::Float, device));
    let implementation = match args.adamw {
        None => AdamImpl::for_device(device, false),
        Some(Kernels::Single) => AdamImpl::Single,
        Some(Kernels::Foreach) => AdamImpl::Foreach,
        Some(Kernels::Fused) => AdamImpl::Fused,
    };
    let (groups, betas, lr): (Vec<ParamGroup>, _, _) = match (&model, args.task) {
        (Model::Vit(m), Task::Finetune) => {
            let no_weight_decay = ["pos_embed", "cls_token", "dist_token"];
            let depth = m.blocks.len();
            let groups =
                param_groups_lrd(named_parameters(&vs), depth, 0.05, &no_weight_decay, 0.75);
            (groups.0, (0.9, 0.999), 1e-3)
        }
        _ => (
            add_weight_decay(named_parameters(&vs), 0.05, &[]),
            (0.9, 0.95),
            1.5e-4,
        ),
    };
    let mut optimizer = AdamW::new(groups, lr, betas).with_implementation(implementation);
    let mut scaler = NativeScalerWithGradNormCount::new(args.precision == Precision::Fp16);
    let target = Tensor::randint(1000, [n], (Kind::Int64, device));
    let criterion = Criterion::LabelSmoothingCrossEntropy { smoothing: 0.1 };
    if args.task == Task::Adamw {
        // fixed gradients: d/dp sum(p * r) = r
        let loss = vs
            .trainable_variables()
            .iter()
            .map(|p| (p * p.randn_like()).sum(Kind::Float))
            .reduce(|a, b| a + b)
            .context("no trainable parameter")?;
        loss.backward();
    }
    let mut step = || -> Result<f64> {
        sync(device);
        let t = Instant::now();
        match &model {
            Model::Vit(_) if args.task == Task::Adamw => optimizer.step(),
            Model::Vit(m) if args.task == Task::Finetune => {
                let loss = {
                    let _amp = amp::autocast(device, args.precision);
                    criterion.forward(&m.forward_t(&x, true)?.to_kind(Kind::Float), &target)
                };
                scaler.call(&loss, &mut optimizer, true); // backward + step
                optimizer.zero_grad();
            }
            Model::Vit(m) => tch::no_grad(|| -> Result<()> {
                let _amp = amp::autocast(device, args.precision);
                let _ = m.forward_t(&x, false)?;
                Ok(())
            })?,
            Model::Mae(m) => {
                let loss = {
                    let _amp = amp::autocast(device, args.precision);
                    m.forward(&x, 0.75)?.0
                };
                scaler.call(&loss, &mut optimizer, true); // backward + step
                optimizer.zero_grad();
            }
        }
        sync(device);
        Ok(t.elapsed().as_secs_f64())
    };
    step()?; // warm-up: allocator, kernels, AdamW state
    step()?;
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum::<usize>() as i64;
    println!("ready threads {} params {params}", tch::get_num_threads());
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "step" => println!("{:.6}", step()?),
            "" => continue,
            other => bail!("expected `step` on stdin, got {other:?}"),
        }
        std::io::stdout().flush()?;
    }
    Ok(())
}
