//! Port of util/lr_sched.py: the per-iteration learning rate, linear warmup then half-cycle cosine.

use crate::torch::optim::ParamGroup;

/// The `args` fields `adjust_learning_rate` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrArgs {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: i64,
    pub epochs: i64,
}

/// The learning rate at the fractional `epoch` (`data_iter_step / len(data_loader) + epoch`).
pub fn lr_at(epoch: f64, args: &LrArgs) -> f64 {
    let (warmup, epochs) = (args.warmup_epochs as f64, args.epochs as f64);
    if epoch < warmup {
        args.lr * epoch / warmup
    } else {
        // same operation order as the Python expression, for bit-equal values
        args.min_lr
            + (args.lr - args.min_lr)
                * 0.5
                * (1. + (std::f64::consts::PI * (epoch - warmup) / (epochs - warmup)).cos())
    }
}

/// Decay the learning rate with half-cycle cosine after warmup; a group with an `lr_scale`
/// (layer-wise decay when fine-tuning) gets `lr * lr_scale`. Returns the unscaled lr.
pub fn adjust_learning_rate(param_groups: &mut [ParamGroup], epoch: f64, args: &LrArgs) -> f64 {
    let lr = lr_at(epoch, args);
    for param_group in param_groups {
        param_group.lr = match param_group.lr_scale {
            Some(scale) => lr * scale,
            None => lr,
        };
    }
    lr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let args = LrArgs {
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_epochs: 2,
            epochs: 10,
        };
        assert_eq!(lr_at(0., &args), 0.);
        assert_eq!(lr_at(1., &args), 5e-4);
        assert_eq!(lr_at(2., &args), 1e-3);
        assert!((lr_at(6., &args) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-18);
        assert!((lr_at(10., &args) - 1e-5).abs() < 1e-18);
    }
}
