//! timm/loss/cross_entropy.py: the criteria main_finetune.py picks from.

use tch::{Kind, Tensor};

/// The `criterion` of main_finetune.py: `SoftTargetCrossEntropy` with mixup/cutmix,
/// `LabelSmoothingCrossEntropy(smoothing)` with only smoothing, `CrossEntropyLoss` otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Criterion {
    SoftTargetCrossEntropy,
    LabelSmoothingCrossEntropy { smoothing: f64 },
    CrossEntropyLoss,
}

impl Criterion {
    /// x: logits [B, C]; target: class indices [B], or soft targets [B, C] for
    /// `SoftTargetCrossEntropy`. Returns the mean loss (0-d).
    pub fn forward(&self, x: &Tensor, target: &Tensor) -> Tensor {
        match *self {
            Criterion::SoftTargetCrossEntropy => {
                let loss = (-target * x.log_softmax(-1, Kind::Float)).sum_dim_intlist(
                    -1,
                    false,
                    Kind::Float,
                );
                loss.mean(Kind::Float)
            }
            Criterion::LabelSmoothingCrossEntropy { smoothing } => {
                assert!(smoothing < 1.0);
                let confidence = 1. - smoothing;
                let logprobs = x.log_softmax(-1, Kind::Float);
                let nll_loss = -logprobs.gather(-1, &target.unsqueeze(1), false);
                let nll_loss = nll_loss.squeeze_dim(1);
                let smooth_loss = -logprobs.mean_dim(-1, false, Kind::Float);
                let loss = confidence * nll_loss + smoothing * smooth_loss;
                loss.mean(Kind::Float)
            }
            Criterion::CrossEntropyLoss => x.cross_entropy_for_logits(target),
        }
    }
}

impl std::fmt::Display for Criterion {
    /// `print("criterion = %s" % str(criterion))`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Criterion::SoftTargetCrossEntropy => write!(f, "SoftTargetCrossEntropy()"),
            Criterion::LabelSmoothingCrossEntropy { .. } => {
                write!(f, "LabelSmoothingCrossEntropy()")
            }
            Criterion::CrossEntropyLoss => write!(f, "CrossEntropyLoss()"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_zero_is_cross_entropy() {
        let x = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 0.5, 0.1, -0.2]).view([2, 3]);
        let t = Tensor::from_slice(&[2i64, 0]);
        let a = Criterion::LabelSmoothingCrossEntropy { smoothing: 0. }.forward(&x, &t);
        let b = Criterion::CrossEntropyLoss.forward(&x, &t);
        let one_hot = Tensor::from_slice(&[0f32, 0., 1., 1., 0., 0.]).view([2, 3]);
        let c = Criterion::SoftTargetCrossEntropy.forward(&x, &one_hot);
        assert!((a.double_value(&[]) - b.double_value(&[])).abs() < 1e-6);
        assert!((c.double_value(&[]) - b.double_value(&[])).abs() < 1e-6);
    }
}
