//! CPU eval forward of vit_base_patch16 (224², no_grad) in float32 and under bf16 autocast
//! (src/util/amp.rs), against PyTorch's timm model in fp32 and under
//! `torch.autocast('cpu', dtype=torch.bfloat16)` (tools/bench_amp.py), in the same run: each
//! round times Rust and PyTorch one forward at a time, alternating who goes first; medians.
//! Usage: cargo run --release --example bench_amp [batch] [rounds]
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use mae::models_vit::{vit_base_patch16, VitConfig};
use mae::util::amp::{self, Precision};
use tch::{nn, Device, Kind, Tensor};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("integer"))
        .collect();
    let (batch, rounds) = (
        args.first().copied().unwrap_or(8),
        args.get(1).copied().unwrap_or(7),
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut py = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("tools/bench_amp.py"))
        .arg(batch.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting tools/bench_amp.py (the .venv of tools/setup.sh)")?;
    let mut py_in = py.stdin.take().unwrap();
    let mut py_out = BufReader::new(py.stdout.take().unwrap()).lines();

    let vs = nn::VarStore::new(Device::Cpu);
    let model = vit_base_patch16(&vs.root(), VitConfig::default());
    let x = Tensor::randn([batch as i64, 3, 224, 224], (Kind::Float, Device::Cpu));
    let rust = |p: Precision| -> Result<f64> {
        tch::no_grad(|| {
            let _amp = amp::autocast(Device::Cpu, p);
            let t = Instant::now();
            let _ = model.forward_t(&x, false)?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    let precisions = [(Precision::Fp32, "fp32"), (Precision::Bf16, "bf16")];
    for (p, _) in precisions {
        rust(p)?; // warm-up
    }
    let ready = py_out.next().context("bench_amp.py ended")??;
    println!(
        "vit_base_patch16, batch {batch}, 224², eval no_grad, {rounds} rounds; rust threads {}, torch {}",
        tch::get_num_threads(),
        ready.trim_start_matches("ready threads ")
    );
    let mut torch = |p: &str| -> Result<f64> {
        writeln!(py_in, "{p}")?;
        let line = py_out.next().context("bench_amp.py ended")??;
        Ok(line.trim().parse()?)
    };

    let mut times = [[vec![], vec![]], [vec![], vec![]]]; // [precision][rust, torch]
    for round in 0..rounds {
        for (i, (p, name)) in precisions.iter().enumerate() {
            if round % 2 == 0 {
                times[i][0].push(rust(*p)?);
                times[i][1].push(torch(name)?);
            } else {
                times[i][1].push(torch(name)?);
                times[i][0].push(rust(*p)?);
            }
        }
    }
    drop(py_in); // EOF ends bench_amp.py
    py.wait()?;

    // Ratios within a round are less exposed to the machine's load drifting between rounds.
    let per_round = |f: &dyn Fn(usize) -> f64| median(&mut (0..rounds).map(f).collect::<Vec<_>>());
    let ratio = |i: usize| per_round(&|r| times[i][0][r] / times[i][1][r]);
    let speedup = |side: usize| per_round(&|r| times[0][side][r] / times[1][side][r]);
    let (ratios, speedups) = ([ratio(0), ratio(1)], [speedup(0), speedup(1)]);
    println!("| precision | rust (s) | pytorch (s) | rust / pytorch time (median of rounds) |");
    println!("|---|---|---|---|");
    for (i, (_, name)) in precisions.iter().enumerate() {
        let (r, t) = (
            median(&mut times[i][0].clone()),
            median(&mut times[i][1].clone()),
        );
        println!("| {name} | {r:.3} | {t:.3} | {:.2} |", ratios[i]);
    }
    println!(
        "bf16 speed-up over fp32 (median of rounds): rust {:.2}x, pytorch {:.2}x",
        speedups[0], speedups[1]
    );
    Ok(())
}
