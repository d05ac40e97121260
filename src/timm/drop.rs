//! Port of timm 0.3.2 timm/models/layers/drop.py `drop_path` / `DropPath` (stochastic depth).

use tch::{nn, Tensor};

/// Drop paths (Stochastic Depth) per sample, when applied in the main path of residual blocks.
#[derive(Debug, Clone, Copy)]
pub struct DropPath {
    pub drop_prob: f64,
}

impl DropPath {
    pub fn new(drop_prob: f64) -> Self {
        DropPath { drop_prob }
    }
}

impl nn::ModuleT for DropPath {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if self.drop_prob == 0. || !train {
            return x.shallow_clone();
        }
        let keep_prob = 1. - self.drop_prob;
        // work with diff dim tensors, not just 2D ConvNets
        let mut shape = vec![x.size()[0]];
        shape.resize(x.dim(), 1);
        let random_tensor = (Tensor::rand(&shape, (x.kind(), x.device())) + keep_prob).floor(); // binarize

        // timm 0.3.2 writes x.div(keep_prob) * random_tensor; the scale goes on the [B, 1, ...]
        // mask instead, as later timm does: one pass over x (and over its gradient) instead of
        // two, the same values up to the rounding of one multiplication
        x * random_tensor.g_div_scalar(keep_prob)
    }
}
