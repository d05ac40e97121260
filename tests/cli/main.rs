//! The `mae` command line: official flags and defaults, argument checks, first-run warnings,
//! `mae eval` and `mae visualize` against their Python references, the benchmark driver, and a
//! repository that needs nothing beside it.
//!
//! - official_flags: every flag of main_pretrain.py / main_finetune.py / main_linprobe.py
//! - arg_ranges: a bad numeric value stops `mae` with one line naming flag, value and range
//! - first_run_warnings: bf16 on a CPU without bf16 hardware; an official file name with
//!   another md5
//! - eval: `mae eval` against the official eval pipeline (torchvision, timm)
//! - eval_robustness: `mae eval --class_subset / --imagenet_c` and `mae predict` against the same
//!   protocols in PyTorch
//! - visualize: `mae visualize` against the demo's `run_one_image`
//! - bench: `tools/bench/bench.sh --quick` runs end to end
//! - self_contained: no tracked file refers to a path outside the checkout
//! - layout: src/ as docs/ARCHITECTURE.md describes it (util/ = util/*.py, no import cycle, the
//!   library folders below the models and entry points)
#[path = "../common/mod.rs"]
mod common;

mod arg_ranges;
mod bench;
mod eval;
mod eval_robustness;
mod first_run_warnings;
mod layout;
mod official_flags;
mod self_contained;
mod visualize;
