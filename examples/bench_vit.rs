//! CPU forward time of vit_base_patch16 (batch 8, 224², eval, no_grad) with each attention
//! kernel (tools/bench/bench_models.py times the forward against timm's).
//! Usage: cargo run --release --example bench_vit [batch] [iters]
use std::time::Instant;

use mae::models_vit::{vit_base_patch16, VitConfig};
use mae::timm::AttentionImpl;
use tch::{nn, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<i64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer"))
        .collect();
    let (batch, iters) = (
        args.first().copied().unwrap_or(8),
        args.get(1).copied().unwrap_or(5),
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = vit_base_patch16(&vs.root(), VitConfig::default());
    let x = Tensor::randn([batch, 3, 224, 224], (Kind::Float, Device::Cpu));
    println!("threads: {}", tch::get_num_threads());
    for attn_impl in [
        AttentionImpl::Math,
        AttentionImpl::Sdpa,
        AttentionImpl::Math,
        AttentionImpl::Sdpa,
    ] {
        model.set_attention_impl(attn_impl);
        let mut times = Vec::new();
        tch::no_grad(|| -> anyhow::Result<()> {
            let _ = model.forward_t(&x, false)?; // warm-up
            for _ in 0..iters {
                let t = Instant::now();
                let _ = model.forward_t(&x, false)?;
                times.push(t.elapsed().as_secs_f64());
            }
            Ok(())
        })?;
        times.sort_by(f64::total_cmp);
        println!(
            "rust {attn_impl:?}: median {:.3} s, min {:.3} s (batch {batch}, {iters} runs)",
            times[times.len() / 2],
            times[0]
        );
    }
    Ok(())
}
