//! CPU pre-training step time (forward + backward + AdamW step, as `train_one_epoch` does) of an
//! MAE model on random images. tools/pretrain_bench.py times the PyTorch reference (HF ViTMAE +
//! torch.optim.AdamW) and runs this in the same process tree for a side-by-side.
//! Usage: cargo run --release --example bench_pretrain MODEL BATCH ITERS [PRECISION]
//! PRECISION (fp32, bf16) is `--precision`'s autocast of the forward. MAE_ZERO_GRAD=zeros zeroes
//! the gradients (tch's `zero_grad`, what the port did before) instead of setting them to None.
use std::time::Instant;

use clap::ValueEnum;
use mae::models_mae::{self, MaeConfig};
use mae::util::amp::{self, Precision};
use mae::util::optim::{add_weight_decay, named_parameters, AdamW};
use tch::{nn, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("mae_vit_base_patch16", String::as_str);
    let batch: i64 = args.get(1).map_or(Ok(8), |a| a.parse())?;
    let iters: usize = args.get(2).map_or(Ok(3), |a| a.parse())?;
    let precision = match args.get(3) {
        Some(p) => Precision::from_str(p, true).map_err(anyhow::Error::msg)?,
        None => Precision::Fp32,
    };
    let zeros = std::env::var("MAE_ZERO_GRAD").is_ok_and(|v| v == "zeros");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models_mae::build(name, &vs.root(), MaeConfig::default())?;
    let size = model.patch_embed.img_size;
    let mut optimizer = AdamW::new(
        add_weight_decay(named_parameters(&vs), 0.05, &[]),
        1e-4,
        (0.9, 0.95),
    );
    let x = Tensor::randn([batch, 3, size, size], (Kind::Float, Device::Cpu));
    let (mut times, mut parts) = (Vec::new(), [0f64; 3]);
    for i in 0..=iters {
        let t = Instant::now();
        let (loss, _, _) = {
            let _amp = amp::autocast(Device::Cpu, precision);
            model.forward(&x, 0.75)?
        };
        let t_fwd = t.elapsed().as_secs_f64();
        loss.backward();
        let t_bwd = t.elapsed().as_secs_f64();
        optimizer.step();
        if zeros {
            for p in optimizer
                .param_groups
                .iter_mut()
                .flat_map(|g| &mut g.params)
            {
                p.zero_grad();
            }
        } else {
            optimizer.zero_grad();
        }
        if i > 0 {
            let total = t.elapsed().as_secs_f64(); // the first step is a warm-up
            times.push(total);
            for (p, v) in parts.iter_mut().zip([t_fwd, t_bwd - t_fwd, total - t_bwd]) {
                *p += v / iters as f64;
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "rust {name} batch {batch} {precision:?}{}: median {median:.4} s/step, {:.1} img/s ({iters} steps, {} threads; mean forward {:.3} s, backward {:.3} s, AdamW {:.3} s)",
        if zeros { " zeroed grads" } else { "" },
        batch as f64 / median,
        tch::get_num_threads(),
        parts[0],
        parts[1],
        parts[2]
    );
    Ok(())
}
