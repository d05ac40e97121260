//! The `mae` command: dispatches subcommands, as the official repo's `main_*.py` entry points.
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mae",
    version,
    about = "Masked Autoencoders on libtorch (port of facebookresearch/mae)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the structure, tensors and detected official model of a checkpoint (.pth or .safetensors).
    Inspect(mae::inspect::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => mae::inspect::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
