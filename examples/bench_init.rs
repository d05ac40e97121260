//! Times building each official model on CPU, with the random init (training from scratch)
//! and without it (`init: false`, for a full checkpoint: what `mae eval` builds).
use mae::models_mae::{self, MaeConfig};
use mae::models_vit::{self, VitConfig};
use std::time::Instant;
use tch::{nn, Device};

fn main() -> anyhow::Result<()> {
    for init in [true, false] {
        for name in ["mae_vit_base_patch16", "mae_vit_huge_patch14"] {
            let t = Instant::now();
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = MaeConfig {
                init,
                ..MaeConfig::default()
            };
            models_mae::build(name, &vs.root(), cfg)?;
            println!("{name} init={init}: {:.3} s", t.elapsed().as_secs_f64());
        }
        for name in ["vit_base_patch16", "vit_huge_patch14"] {
            let t = Instant::now();
            let vs = nn::VarStore::new(Device::Cpu);
            let cfg = VitConfig {
                init,
                ..VitConfig::default()
            };
            models_vit::build(name, &vs.root(), cfg)?;
            println!("{name} init={init}: {:.3} s", t.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
