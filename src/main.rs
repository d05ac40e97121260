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
    /// Print the structure, tensors and detected official model of a checkpoint (.pth, .safetensors, Hugging Face folder).
    Inspect(mae::interop::inspect::Args),
    /// Write a checkpoint (.pth, .safetensors, Hugging Face folder) as the official .pth, a Hugging Face folder, timm safetensors or safetensors.
    Convert(mae::interop::convert::Args),
    /// Evaluate a fine-tuned classifier on DATA_PATH/val (main_finetune.py --eval): Acc@1, Acc@5, loss; --class_subset, --imagenet_c for the robustness benchmarks.
    Eval(mae::main_finetune::Args),
    /// Classify images with a fine-tuned classifier: the top-k classes, probabilities and names.
    Predict(mae::eval::predict::Args),
    /// Fine-tune a ViT for classification (main_finetune.py): layer-wise lr decay, mixup, evaluation per epoch.
    Finetune(mae::main_finetune::Args),
    /// Linear probing of a pre-trained encoder (main_linprobe.py): BatchNorm + Linear head, LARS.
    Linprobe(mae::main_linprobe::Args),
    /// Show MAE reconstructions of images (demo/mae_visualize.ipynb) in one PNG.
    Visualize(mae::mae_visualize::Args),
    /// Pre-train an MAE (main_pretrain.py): AdamW, warmup + cosine lr, checkpoints, --resume.
    Pretrain(mae::main_pretrain::Args),
}

fn main() {
    mae::torch::malloc::retain_freed_memory(); // before libtorch allocates
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => mae::interop::inspect::main(args),
        Command::Convert(args) => mae::interop::convert::main(args),
        Command::Eval(args) => {
            mae::main_finetune::main(mae::main_finetune::Args { eval: true, ..args })
        }
        Command::Predict(args) => mae::eval::predict::main(args),
        Command::Finetune(args) => mae::main_finetune::main(args),
        Command::Linprobe(args) => mae::main_linprobe::main(args),
        Command::Visualize(args) => mae::mae_visualize::main(args),
        Command::Pretrain(args) => mae::main_pretrain::main(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
