//! One measurement of tools/bench/bench_load.sh, in a fresh process: the time of one checkpoint load
//! and the peak RSS above the process baseline (VmRSS once libtorch is up, before the load).
//!
//! usage: bench_load CKPT [load | mapped | model]
//!   load    `serialization::load` (owned tensors, CRC-checked), like torch.load(weights_only=True)
//!   mapped  `serialization::load_mapped` (copy-on-write views of the file, CRC-checked), the
//!           counterpart of torch.load(mmap=True) (which checks nothing and reads nothing)
//!   model   what `mae eval` does: load_state_dict_mapped, build the detected ViT without
//!           random init (`init: false`), adopt the tensors (`load_vit_checkpoint`, strict)
//! prints `rust-<mode> load_s=… base_mb=… peak_above_mb=… file_mb=…`
use anyhow::{bail, Context, Result};
use mae::interop::detect::{self, Kind as Det};
use mae::models_vit::{self, VitConfig};
use mae::torch::serialization;
use std::path::Path;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// `VmRSS` / `VmHWM` of /proc/self/status, in MiB.
fn status_mb(field: &str) -> Result<f64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kb: f64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), mode) = (args.get(1), args.get(2).map_or("load", String::as_str)) else {
        bail!("usage: bench_load CKPT [load | mapped | model]");
    };
    let path = Path::new(path);
    let file_mb = std::fs::metadata(path)?.len() as f64 / (1 << 20) as f64;
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu)).sum(Kind::Float); // runtime up
    let base = status_mb("VmRSS:")?;
    let t0 = Instant::now();
    match mode {
        "load" => drop(serialization::load(path)?),
        "mapped" => drop(serialization::load_mapped(path)?),
        "model" => {
            let sd = serialization::load_state_dict_mapped(path)?;
            let shapes: Vec<(&str, Vec<i64>)> =
                sd.iter().map(|(k, t)| (k.as_str(), t.size())).collect();
            let det = detect::detect(shapes.iter().map(|(k, s)| (*k, s.as_slice())))?;
            let Det::Finetuned {
                global_pool,
                num_classes,
            } = det.kind
            else {
                bail!("{}: not a fine-tuned ViT", path.display());
            };
            drop(shapes);
            let mut vs = nn::VarStore::new(Device::Cpu);
            let cfg = VitConfig {
                img_size: det.img_size,
                num_classes,
                global_pool,
                init: false,
                ..VitConfig::default()
            };
            let model = models_vit::build(&det.model_name(), &vs.root(), cfg)?;
            model.load_checkpoint(&mut vs, sd)?;
        }
        _ => bail!("unknown mode {mode:?}: load, mapped or model"),
    }
    let secs = t0.elapsed().as_secs_f64();
    let peak = status_mb("VmHWM:")?;
    println!(
        "rust-{mode} load_s={secs:.4} base_mb={base:.0} peak_above_mb={:.0} file_mb={file_mb:.0}",
        peak - base
    );
    Ok(())
}
