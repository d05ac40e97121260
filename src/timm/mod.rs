//! The parts of timm 0.3.2 that MAE imports: `PatchEmbed`, `Attention`, `Mlp`, `Block`
//! (timm/models/vision_transformer.py), `DropPath` (timm/models/layers/drop.py) and
//! `trunc_normal_` (timm/models/layers/weight_init.py); and for fine-tuning the criteria
//! (timm/loss), `Mixup` (timm/data/mixup.py), `RandAugment` (timm/data/auto_augment.py) and
//! `RandomErasing` (timm/data/random_erasing.py).

pub mod auto_augment;
mod drop;
pub mod loss;
pub mod mixup;
pub mod random_erasing;
mod vision_transformer;
mod weight_init;

pub use drop::DropPath;
pub use vision_transformer::{Attention, AttentionImpl, Block, Mlp, PatchEmbed};
pub use weight_init::{trunc_normal_, xavier_uniform_};

use tch::{nn, Tensor};

/// `partial(nn.LayerNorm, eps=1e-6)`, the `norm_layer` of every MAE model (tch's default is 1e-5).
pub fn layer_norm(vs: nn::Path, dim: i64) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig {
        eps: 1e-6,
        ..Default::default()
    };
    nn::layer_norm(vs, vec![dim], cfg)
}

/// How the owning model's `_init_weights` initialises every `nn.Linear` (biases are zeroed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinearInit {
    /// models_mae.py: `xavier_uniform_` "following official JAX ViT".
    XavierUniform,
    /// timm 0.3.2 VisionTransformer: `trunc_normal_(std=.02)`.
    TruncNormal(f64),
    /// Not in the reference: the weight is allocated but not written (nor zeroed), for a model
    /// that a full checkpoint overwrites next (the `init: false` of the model configs).
    None,
}

/// An `nn.Linear(in_dim, out_dim)` initialised as `init` says, with a zero bias.
pub fn linear(vs: nn::Path, in_dim: i64, out_dim: i64, init: LinearInit) -> nn::Linear {
    if init == LinearInit::None {
        // as nn::linear does, bias first: the VarStore keeps the same order
        let bs = vs.zeros("bias", &[out_dim]);
        let ws = Tensor::empty([out_dim, in_dim], (vs.kind(), vs.device()));
        return nn::Linear {
            ws: vs.add("weight", ws, true),
            bs: Some(bs),
        };
    }
    // zeros cost nothing to allocate; `init` is the one random pass
    let cfg = nn::LinearConfig {
        ws_init: nn::Init::Const(0.),
        bs_init: Some(nn::Init::Const(0.)),
        bias: true,
    };
    let mut fc = nn::linear(vs, in_dim, out_dim, cfg);
    tch::no_grad(|| match init {
        LinearInit::XavierUniform => xavier_uniform_(&mut fc.ws),
        LinearInit::TruncNormal(std) => trunc_normal_(&mut fc.ws, std),
        LinearInit::None => {}
    });
    fc
}
