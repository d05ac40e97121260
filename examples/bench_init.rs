//! Times building (and initialising) each official model on CPU.
use mae::{models_mae, models_vit};
use std::time::Instant;
use tch::{nn, Device};

fn main() {
    for name in ["mae_vit_base_patch16", "mae_vit_huge_patch14"] {
        let t = Instant::now();
        let vs = nn::VarStore::new(Device::Cpu);
        models_mae::build(name, &vs.root(), Default::default()).unwrap();
        println!("{name}: {:.2} s", t.elapsed().as_secs_f64());
    }
    for name in ["vit_base_patch16", "vit_huge_patch14"] {
        let t = Instant::now();
        let vs = nn::VarStore::new(Device::Cpu);
        models_vit::build(name, &vs.root(), Default::default()).unwrap();
        println!("{name}: {:.2} s", t.elapsed().as_secs_f64());
    }
}
