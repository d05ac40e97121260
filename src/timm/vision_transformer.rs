//! Port of the timm 0.3.2 timm/models/vision_transformer.py modules MAE builds on:
//! `PatchEmbed`, `Attention`, `Mlp`, `Block`. Dropout rates are left out: MAE never sets them.

use anyhow::{ensure, Result};
use tch::{nn, nn::Module, nn::ModuleT, Tensor};

use super::{layer_norm, linear, DropPath, LinearInit};

/// Image to Patch Embedding: a conv with kernel = stride = patch, flattened to tokens.
#[derive(Debug)]
pub struct PatchEmbed {
    pub img_size: i64,
    pub patch_size: i64,
    pub num_patches: i64,
    pub proj: nn::Conv2D,
}

impl PatchEmbed {
    /// `proj` keeps PyTorch's Conv2d default init (uniform ±1/sqrt(fan_in) for weight and bias);
    /// models_mae.py re-initialises the weight, timm 0.3.2 leaves it.
    pub fn new(
        vs: nn::Path,
        img_size: i64,
        patch_size: i64,
        in_chans: i64,
        embed_dim: i64,
    ) -> Self {
        let bound = 1. / ((in_chans * patch_size * patch_size) as f64).sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let cfg = nn::ConvConfig {
            stride: patch_size,
            ws_init: init,
            bs_init: init,
            ..Default::default()
        };
        let proj = nn::conv2d(vs / "proj", in_chans, embed_dim, patch_size, cfg);
        let num_patches = (img_size / patch_size) * (img_size / patch_size);
        PatchEmbed {
            img_size,
            patch_size,
            num_patches,
            proj,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.size4()?;
        ensure!(
            h == self.img_size && w == self.img_size,
            "Input image size ({h}*{w}) doesn't match model ({}*{}).",
            self.img_size,
            self.img_size
        );
        Ok(x.apply(&self.proj).flatten(2, -1).transpose(1, 2)) // [B, L, D]
    }
}

/// Which kernel computes softmax(q·kᵀ·scale)·v. Both give the same result to float rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionImpl {
    /// The timm 0.3.2 formula written out: matmul, softmax, matmul.
    Math,
    /// libtorch's fused `scaled_dot_product_attention` (flash attention on CPU).
    Sdpa,
}

impl Default for AttentionImpl {
    /// The faster of the two on CPU (examples/bench_vit.rs measures it).
    fn default() -> Self {
        AttentionImpl::Sdpa
    }
}

#[derive(Debug)]
pub struct Attention {
    pub num_heads: i64,
    pub scale: f64,
    pub qkv: nn::Linear,
    pub proj: nn::Linear,
    pub attn_impl: AttentionImpl,
}

impl Attention {
    pub fn new(vs: nn::Path, dim: i64, num_heads: i64, init: LinearInit) -> Self {
        let head_dim = dim / num_heads;
        Attention {
            num_heads,
            scale: (head_dim as f64).powf(-0.5),
            qkv: linear(&vs / "qkv", dim, dim * 3, init),
            proj: linear(&vs / "proj", dim, dim, init),
            attn_impl: AttentionImpl::default(),
        }
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, c) = x.size3().unwrap();
        let qkv = x
            .apply(&self.qkv)
            .reshape([b, n, 3, self.num_heads, c / self.num_heads]); // [B, N, 3, heads, C/heads]

        // timm: `.permute(2, 0, 3, 1, 4).unbind(0)`. Unbinding dim 2 and transposing each part
        // gives the same three views (same strides, same values), but a cheaper backward: the
        // gradients of q, k and v arrive in [B, N, heads, C/heads] memory, so unbind's backward
        // stacks them straight into a contiguous [B, N, 3, heads, C/heads] and the reshape back to
        // [B, N, 3C] is a view; timm's stacks into [3, B, heads, N, C/heads] and then copies the
        // whole qkv gradient once more to undo the permute. (Unbind, not three selects: each
        // select's backward would zero-fill its own qkv-sized tensor, and the three be summed.)
        let qkv = qkv.unbind(2);
        let (q, k, v) = (
            &qkv[0].transpose(1, 2),
            &qkv[1].transpose(1, 2),
            &qkv[2].transpose(1, 2),
        ); // [B, heads, N, C/heads] each
        let x = match self.attn_impl {
            AttentionImpl::Math => {
                let attn = q.matmul(&k.transpose(-2, -1)) * self.scale;
                attn.softmax(-1, q.kind()).matmul(v)
            }
            AttentionImpl::Sdpa => Tensor::scaled_dot_product_attention(
                q,
                k,
                v,
                None::<Tensor>,
                0.,
                false,
                self.scale,
                false,
            ),
        };
        x.transpose(1, 2).reshape([b, n, c]).apply(&self.proj) // [B, N, C]
    }
}

#[derive(Debug)]
pub struct Mlp {
    pub fc1: nn::Linear,
    pub fc2: nn::Linear,
}

impl Mlp {
    pub fn new(vs: nn::Path, in_features: i64, hidden_features: i64, init: LinearInit) -> Self {
        Mlp {
            fc1: linear(&vs / "fc1", in_features, hidden_features, init),
            fc2: linear(&vs / "fc2", hidden_features, in_features, init),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.apply(&self.fc1).gelu("none").apply(&self.fc2) // nn.GELU: exact erf form
    }
}

#[derive(Debug)]
pub struct Block {
    pub norm1: nn::LayerNorm,
    pub attn: Attention,
    pub drop_path: DropPath,
    pub norm2: nn::LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    /// `Block(dim, num_heads, mlp_ratio, qkv_bias=True, qk_scale=None, drop_path, norm_layer)`.
    pub fn new(
        vs: nn::Path,
        dim: i64,
        num_heads: i64,
        mlp_ratio: f64,
        drop_path: f64,
        init: LinearInit,
    ) -> Self {
        Block {
            norm1: layer_norm(&vs / "norm1", dim),
            attn: Attention::new(&vs / "attn", dim, num_heads, init),
            drop_path: DropPath::new(drop_path),
            norm2: layer_norm(&vs / "norm2", dim),
            mlp: Mlp::new(&vs / "mlp", dim, (dim as f64 * mlp_ratio) as i64, init),
        }
    }
}

impl ModuleT for Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let x = x + x
            .apply(&self.norm1)
            .apply(&self.attn)
            .apply_t(&self.drop_path, train);
        &x + x
            .apply(&self.norm2)
            .apply(&self.mlp)
            .apply_t(&self.drop_path, train)
    }
}
