//! `mae inspect`: what a checkpoint holds and which official model it matches.
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint file (.pth written by torch.save, or .safetensors).
    pub checkpoint: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("inspect {}: not implemented yet", args.checkpoint.display())
}
