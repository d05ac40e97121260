//! Loads a checkpoint with `mae::torch::serialization::load` and prints its outline and the load
//! time; `--resave OUT` writes it back (`.safetensors` by extension, else torch zip).
use anyhow::Result;
use mae::torch::serialization;
use std::path::Path;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: load_checkpoint PATH [--resave OUT]"))?;
    let t0 = Instant::now();
    let value = serialization::load(Path::new(path))?;
    let secs = t0.elapsed().as_secs_f64();
    println!("{}", value.summary(6));
    println!("loaded {path} in {secs:.3} s");
    if let (Some("--resave"), Some(out)) = (args.get(2).map(String::as_str), args.get(3)) {
        let out = Path::new(out);
        if out.extension().is_some_and(|e| e == "safetensors") {
            serialization::save_safetensors(out, &serialization::state_dict(value)?)?;
        } else {
            serialization::save(out, &value)?;
        }
    }
    Ok(())
}
