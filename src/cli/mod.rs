//! Not in the reference: what the `mae` commands share beyond the official scripts. Flag checks
//! (`arg_check`), Python's number formatting for identical printed lines (`pyfmt`), the loss
//! curve PNG (`plot`) and the bitmap font of every PNG (`font`); here, what the official
//! `main_*.py` write inline: `torch.device(args.device)`, appending to `log.txt`, and `args` as
//! saved in checkpoints.

pub mod arg_check;
pub mod font;
pub mod plot;
pub mod pyfmt;

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Device;

use crate::torch::serialization::pickle::Value;

/// `torch.device(args.device)`: `cpu`, `cuda` or `cuda:N`; no flag means CUDA when available,
/// else the CPU. A CUDA device that is not there is an error, not a silent fallback.
pub fn device(arg: Option<&str>) -> Result<Device> {
    let dev = match arg {
        None => return Ok(Device::cuda_if_available()),
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(s) => match s.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("--device {s}: expected cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(i) = dev {
        let n = tch::Cuda::device_count() as usize;
        if i >= n {
            bail!("--device cuda:{i}: {n} CUDA device(s) available");
        }
    }
    Ok(dev)
}

/// `with open(path, mode="a") as f: f.write(text)`.
pub fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// `args` as saved in checkpoints: the flags by their names (the official pickles the
/// `argparse.Namespace`; a plain dict lets `torch.load(weights_only=True)` read the file), then
/// `set`, the values `main` derives (`world_size`, `distributed`, ...), replacing or appended.
pub fn args_value(args: &impl serde::Serialize, set: Vec<(&str, Value)>) -> Result<Value> {
    fn value(v: serde_json::Value) -> Value {
        use serde_json::Value as J;
        match v {
            J::Null => Value::None,
            J::Bool(b) => Value::Bool(b),
            J::Number(n) => n
                .as_i64()
                .map_or(Value::Float(n.as_f64().unwrap_or(f64::NAN)), Value::Int),
            J::String(s) => Value::Str(s),
            J::Array(a) => Value::List(a.into_iter().map(value).collect()),
            J::Object(o) => Value::Dict(
                o.into_iter()
                    .map(|(k, v)| (Value::Str(k), value(v)))
                    .collect(),
            ),
        }
    }
    let json = serde_json::to_value(args).context("args as a dict")?;
    let Value::Dict(mut items) = value(json) else {
        bail!("args are not a struct");
    };
    for (k, v) in set {
        match items.iter_mut().find(|(key, _)| key.as_str() == Some(k)) {
            Some(item) => item.1 = v,
            None => items.push((Value::Str(k.into()), v)),
        }
    }
    Ok(Value::Dict(items))
}
