//! Every numeric flag of every subcommand, fed a value that makes no sense, stops `mae` before
//! any data or model is built with one line naming the flag, the value and the accepted range;
//! never a panic.
use crate::common::{self, argv};

/// (subcommand and flags, the error line expected on stderr)
const CASES: &[(&str, &str)] = &[
    // pretrain
    ("pretrain --mask_ratio 1.5", "--mask_ratio 1.5: must be in [0, 1)"),
    ("pretrain --mask_ratio 1", "--mask_ratio 1: must be in [0, 1)"),
    ("pretrain --mask_ratio=-0.1", "--mask_ratio -0.1: must be in [0, 1)"),
    ("pretrain --mask_ratio nan", "--mask_ratio NaN: must be in [0, 1)"),
    ("pretrain --batch_size 0", "--batch_size 0: must be at least 1"),
    ("pretrain --accum_iter 0", "--accum_iter 0: must be at least 1"),
    ("pretrain --epochs 0", "--epochs 0: must be at least 1"),
    ("pretrain --input_size 0", "--input_size 0: must be at least 1"),
    (
        "pretrain --input_size 225",
        "--input_size 225: must be a multiple of 16, the patch size of --model mae_vit_large_patch16",
    ),
    (
        "pretrain --model mae_vit_tiny_patch4 --input_size 30",
        "--input_size 30: must be a multiple of 4, the patch size of --model mae_vit_tiny_patch4",
    ),
    ("pretrain --lr=-0.001", "--lr -0.001: must be at least 0"),
    ("pretrain --blr=-1", "--blr -1: must be at least 0"),
    ("pretrain --min_lr=-1e-6", "--min_lr -0.000001: must be at least 0"),
    ("pretrain --weight_decay=-0.05", "--weight_decay -0.05: must be at least 0"),
    ("pretrain --warmup_epochs=-1", "--warmup_epochs -1: must be at least 0"),
    ("pretrain --start_epoch=-1", "--start_epoch -1: must be at least 0"),
    ("pretrain --train_subset 0", "--train_subset 0: must be at least 1"),
    ("pretrain --save_freq 0", "--save_freq 0: must be at least 1"),
    ("pretrain --world_size 0", "--world_size 0: must be at least 1"),
    ("pretrain --dist_timeout 0", "--dist_timeout 0: must be a positive number of seconds"),
    // finetune
    ("finetune --batch_size 0", "--batch_size 0: must be at least 1"),
    ("finetune --epochs 0", "--epochs 0: must be at least 1"),
    ("finetune --accum_iter 0", "--accum_iter 0: must be at least 1"),
    (
        "finetune --model vit_base_patch16 --input_size 100",
        "--input_size 100: must be a multiple of 16, the patch size of --model vit_base_patch16",
    ),
    ("finetune --drop_path 1", "--drop_path 1: must be in [0, 1)"),
    ("finetune --drop_path=-0.1", "--drop_path -0.1: must be in [0, 1)"),
    ("finetune --clip_grad 0", "--clip_grad 0: must be greater than 0"),
    ("finetune --layer_decay 0", "--layer_decay 0: must be in (0, 1]"),
    ("finetune --layer_decay 1.5", "--layer_decay 1.5: must be in (0, 1]"),
    ("finetune --blr=-1", "--blr -1: must be at least 0"),
    ("finetune --min_lr=-1", "--min_lr -1: must be at least 0"),
    ("finetune --warmup_epochs=-5", "--warmup_epochs -5: must be at least 0"),
    ("finetune --color_jitter=-0.4", "--color_jitter -0.4: must be at least 0"),
    ("finetune --smoothing 1", "--smoothing 1: must be in [0, 1)"),
    ("finetune --reprob 1.5", "--reprob 1.5: must be in [0, 1]"),
    ("finetune --recount 0", "--recount 0: must be at least 1"),
    ("finetune --mixup=-1", "--mixup -1: must be at least 0"),
    ("finetune --cutmix=-1", "--cutmix -1: must be at least 0"),
    (
        "finetune --cutmix_minmax 0.8 0.2",
        "--cutmix_minmax 0.8 0.2: must be two numbers MIN MAX with 0 < MIN <= MAX <= 1",
    ),
    ("finetune --mixup_prob 2", "--mixup_prob 2: must be in [0, 1]"),
    ("finetune --mixup_switch_prob=-0.5", "--mixup_switch_prob -0.5: must be in [0, 1]"),
    ("finetune --nb_classes 0", "--nb_classes 0: must be at least 1"),
    ("finetune --train_subset 0", "--train_subset 0: must be at least 1"),
    // eval (main_finetune.py --eval)
    ("eval --batch_size 0", "--batch_size 0: must be at least 1"),
    ("eval --input_size 0", "--input_size 0: must be at least 1"),
    (
        "eval --model vit_tiny_patch4 --input_size 30",
        "--input_size 30: must be a multiple of 4, the patch size of --model vit_tiny_patch4",
    ),
    ("eval --nb_classes=-3", "--nb_classes -3: must be at least 1"),
    // linprobe
    ("linprobe --batch_size 0", "--batch_size 0: must be at least 1"),
    ("linprobe --epochs 0", "--epochs 0: must be at least 1"),
    ("linprobe --accum_iter 0", "--accum_iter 0: must be at least 1"),
    ("linprobe --blr=-0.1", "--blr -0.1: must be at least 0"),
    ("linprobe --weight_decay=-1", "--weight_decay -1: must be at least 0"),
    ("linprobe --nb_classes 0", "--nb_classes 0: must be at least 1"),
    (
        "linprobe --input_size 230",
        "--input_size 230: must be a multiple of 16, the patch size of --model vit_large_patch16",
    ),
    ("linprobe --start_epoch=-2", "--start_epoch -2: must be at least 0"),
    // visualize
    ("visualize --mask_ratio 1.5", "--mask_ratio 1.5: must be in [0, 1)"),
    ("visualize --mask_ratio=-0.25", "--mask_ratio -0.25: must be in [0, 1)"),
];

/// `mae LINE` with a data folder (visualize: a checkpoint) that does not exist, so that a check
/// coming after the data would be seen naming it instead: the exit code and stderr.
fn mae(line: &str) -> (i32, String) {
    let mut args = argv!(line);
    args.extend(match args[0].as_str() {
        "visualize" => argv!("--checkpoint /nonexistent/arg_ranges.pth"),
        _ => argv!("--data_path /nonexistent/arg_ranges"),
    });
    let out = common::mae_command(&args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn every_bad_value_is_one_line_naming_flag_value_and_range() {
    let mut failures = vec![];
    for (args, want) in CASES {
        let (code, stderr) = mae(args);
        let line = format!("error: {want}");
        if code != 1 || stderr.trim() != line || stderr.contains("panicked") {
            failures.push(format!(
                "mae {args}: exit {code}, stderr {stderr:?}, wanted {line:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The official defaults pass the checks: with no bad flag the run gets as far as the data.
#[test]
fn defaults_pass_the_checks() {
    for sub in ["pretrain", "finetune", "eval", "linprobe"] {
        let (code, stderr) = mae(&format!("{sub} --device cpu"));
        assert_eq!(code, 1, "mae {sub}: {stderr}");
        assert!(!stderr.contains("must be"), "mae {sub}: {stderr}");
        assert!(!stderr.contains("panicked"), "mae {sub}: {stderr}");
    }
}
