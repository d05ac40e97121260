//! Range checks of numeric flags, run by each entry point's `Args::validate` before any data or
//! model is built: a value that makes no sense is one line naming the flag, the value and what
//! is accepted (`--mask_ratio 1.5: must be in [0, 1)`), not a libtorch error deep in training.
//! argparse checks none of these; the official scripts fail later (or train on nonsense).
use anyhow::{bail, Result};
use std::fmt::Display;

/// `flag >= min` (also refuses NaN).
pub fn at_least<T: PartialOrd + Display>(flag: &str, v: T, min: T) -> Result<()> {
    match v.partial_cmp(&min) {
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal) => Ok(()),
        _ => bail!("--{flag} {v}: must be at least {min}"),
    }
}

/// An optional flag: checked when given.
pub fn opt_at_least<T: PartialOrd + Display + Copy>(
    flag: &str,
    v: Option<T>,
    min: T,
) -> Result<()> {
    v.map_or(Ok(()), |v| at_least(flag, v, min))
}

/// `0 < flag <= hi` (`(0, hi]`); refuses NaN.
pub fn positive_up_to(flag: &str, v: f64, hi: f64) -> Result<()> {
    if !(v > 0. && v <= hi) {
        match hi.is_finite() {
            true => bail!("--{flag} {v}: must be in (0, {hi}]"),
            false => bail!("--{flag} {v}: must be greater than 0"),
        }
    }
    Ok(())
}

/// `lo <= flag < hi` (`[lo, hi)`), or `lo <= flag <= hi` with `closed`; refuses NaN.
pub fn in_range(flag: &str, v: f64, lo: f64, hi: f64, closed: bool) -> Result<()> {
    let ok = v >= lo && if closed { v <= hi } else { v < hi };
    if !ok {
        let end = if closed { ']' } else { ')' };
        bail!("--{flag} {v}: must be in [{lo}, {hi}{end}");
    }
    Ok(())
}

/// The patch size of a model name (`mae_vit_base_patch16_dec512d8b` → 16), if it names one.
pub fn patch_size_of(model: &str) -> Option<i64> {
    let rest = &model[model.find("patch")? + 5..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().filter(|&p| p > 0)
}

/// `--input_size` at least one patch and a multiple of the patch size of `--model`.
pub fn input_size(v: i64, model: Option<&str>) -> Result<()> {
    at_least("input_size", v, 1)?;
    if let Some((m, p)) = model.and_then(|m| Some((m, patch_size_of(m)?))) {
        if v % p != 0 {
            bail!("--input_size {v}: must be a multiple of {p}, the patch size of --model {m}");
        }
    }
    Ok(())
}

/// Learning-rate flags shared by the three training entry points: rates and decay at least 0,
/// warmup and start epochs at least 0, epochs, batch size and accumulation at least 1.
pub struct Schedule {
    pub batch_size: usize,
    pub epochs: i64,
    pub accum_iter: usize,
    pub lr: Option<f64>,
    pub blr: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub warmup_epochs: i64,
    pub start_epoch: i64,
    pub train_subset: Option<usize>,
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        at_least("batch_size", self.batch_size, 1)?;
        at_least("epochs", self.epochs, 1)?;
        at_least("accum_iter", self.accum_iter, 1)?;
        opt_at_least("lr", self.lr, 0.)?;
        at_least("blr", self.blr, 0.)?;
        at_least("min_lr", self.min_lr, 0.)?;
        at_least("weight_decay", self.weight_decay, 0.)?;
        at_least("warmup_epochs", self.warmup_epochs, 0)?;
        at_least("start_epoch", self.start_epoch, 0)?;
        opt_at_least("train_subset", self.train_subset, 1)
    }
}

/// The distributed flags: `--world_size` at least 1, `--dist_timeout` a positive number of seconds.
pub fn dist(d: &crate::torch::distributed::DistArgs) -> Result<()> {
    at_least("world_size", d.world_size, 1)?;
    at_least("local_rank", d.local_rank, -1)?;
    if !(d.dist_timeout > 0. && d.dist_timeout.is_finite()) {
        bail!(
            "--dist_timeout {}: must be a positive number of seconds",
            d.dist_timeout
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_flag_value_and_range() {
        let e = in_range("mask_ratio", 1.5, 0., 1., false).unwrap_err();
        assert_eq!(e.to_string(), "--mask_ratio 1.5: must be in [0, 1)");
        let e = in_range("reprob", f64::NAN, 0., 1., true).unwrap_err();
        assert_eq!(e.to_string(), "--reprob NaN: must be in [0, 1]");
        assert_eq!(
            at_least("batch_size", 0, 1).unwrap_err().to_string(),
            "--batch_size 0: must be at least 1"
        );
        assert!(in_range("mask_ratio", 0., 0., 1., false).is_ok());
        assert!(in_range("mask_ratio", 1., 0., 1., false).is_err());
    }

    #[test]
    fn patch_size_from_model_names() {
        assert_eq!(patch_size_of("mae_vit_base_patch16_dec512d8b"), Some(16));
        assert_eq!(patch_size_of("vit_huge_patch14"), Some(14));
        assert_eq!(patch_size_of("mae_vit_tiny_patch4"), Some(4));
        assert_eq!(patch_size_of("resnet50"), None);
        let e = input_size(30, Some("mae_vit_tiny_patch4")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--input_size 30: must be a multiple of 4, the patch size of --model mae_vit_tiny_patch4"
        );
    }
}
