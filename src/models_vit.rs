//! Port of models_vit.py: timm 0.3.2's VisionTransformer with MAE's global average pooling
//! (`fc_norm` on the mean of the patch tokens instead of `norm` on the class token).

use anyhow::{bail, ensure, Result};
use tch::{nn, nn::ModuleT, IndexOp, Kind, Tensor};

use crate::timm::{
    layer_norm, linear, trunc_normal_, AttentionImpl, Block, LinearInit, PatchEmbed,
};
use crate::torch::state_dict::{adopt_state_dict, load_state_dict, LoadReport};
use crate::util::pos_embed::interpolate_pos_embed;

/// The keyword arguments of timm 0.3.2 `VisionTransformer.__init__` that MAE uses, with the
/// defaults of `main_finetune.py` where it passes them. `drop_rate` / `attn_drop_rate` are left
/// out: MAE never sets them (0), and timm 0.3.2 has no dropout before the head.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub img_size: i64,       // 224
    pub patch_size: i64,     // 16
    pub in_chans: i64,       // 3
    pub num_classes: i64,    // 1000; 0 makes `head` the identity
    pub embed_dim: i64,      // 768
    pub depth: i64,          // 12
    pub num_heads: i64,      // 12
    pub mlp_ratio: f64,      // 4.
    pub drop_path_rate: f64, // 0.1 (main_finetune --drop_path)
    pub global_pool: bool,   // true (main_finetune --global_pool); false: cls token
    pub init: bool, // true; false (not in the reference): no random init, a full checkpoint follows
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            num_classes: 1000,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.,
            drop_path_rate: 0.1,
            global_pool: true,
            init: true,
        }
    }
}

/// Vision Transformer with support for global average pooling.
#[derive(Debug)]
pub struct VisionTransformer {
    pub patch_embed: PatchEmbed,
    pub cls_token: Tensor,
    pub pos_embed: Tensor,
    pub blocks: Vec<Block>,
    pub pool: Pool,
    pub head: Option<nn::Linear>, // None is nn.Identity (num_classes == 0)
}

/// How the features the head sees are pooled and normalised: `norm` on the class token, or
/// with `global_pool` `fc_norm` on the mean of the patch tokens (models_vit.py then deletes
/// `norm`, so a model holds one of the two).
#[derive(Debug)]
pub enum Pool {
    Cls { norm: nn::LayerNorm },
    Global { fc_norm: nn::LayerNorm },
}

impl VisionTransformer {
    pub fn new(vs: &nn::Path, cfg: &VitConfig) -> Self {
        // self.apply(self._init_weights): trunc_normal_(std=.02) Linear, zero bias; LayerNorm 1 / 0
        // (skipped with `init: false`: the strict checkpoint loads overwrite every parameter)
        let init = match cfg.init {
            true => LinearInit::TruncNormal(0.02),
            false => LinearInit::None,
        };
        let patch_embed = PatchEmbed::new(
            vs / "patch_embed",
            cfg.img_size,
            cfg.patch_size,
            cfg.in_chans,
            cfg.embed_dim,
        );
        let num_patches = patch_embed.num_patches;
        let mut cls_token = vs.zeros("cls_token", &[1, 1, cfg.embed_dim]);
        let mut pos_embed = vs.zeros("pos_embed", &[1, num_patches + 1, cfg.embed_dim]);
        if cfg.init {
            trunc_normal_(&mut pos_embed, 0.02);
            trunc_normal_(&mut cls_token, 0.02);
        }
        let dpr = linspace_f32(0., cfg.drop_path_rate, cfg.depth); // stochastic depth decay rule
        let blocks = (0..cfg.depth)
            .map(|i| {
                Block::new(
                    vs / "blocks" / i,
                    cfg.embed_dim,
                    cfg.num_heads,
                    cfg.mlp_ratio,
                    dpr[i as usize],
                    init,
                )
            })
            .collect();
        let pool = match cfg.global_pool {
            true => Pool::Global {
                fc_norm: layer_norm(vs / "fc_norm", cfg.embed_dim),
            },
            false => Pool::Cls {
                norm: layer_norm(vs / "norm", cfg.embed_dim),
            },
        };
        let head = (cfg.num_classes > 0)
            .then(|| linear(vs / "head", cfg.embed_dim, cfg.num_classes, init));
        VisionTransformer {
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            pool,
            head,
        }
    }

    /// Selects the attention kernel of every block.
    pub fn set_attention_impl(&mut self, attn_impl: AttentionImpl) {
        for blk in &mut self.blocks {
            blk.attn.attn_impl = attn_impl;
        }
    }

    /// x: [B, 3, H, W] -> the pooled features [B, D] the head sees.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let b = x.size()[0];
        let x = self.patch_embed.forward(x)?;

        let cls_tokens = self.cls_token.expand([b, -1, -1], false); // stole cls_tokens impl from Phil Wang, thanks
        let mut x = Tensor::cat(&[cls_tokens, x], 1) + &self.pos_embed;

        for blk in &self.blocks {
            x = blk.forward_t(&x, train);
        }

        Ok(match &self.pool {
            Pool::Global { fc_norm } => {
                let x = x.i((.., 1.., ..)).mean_dim(1, false, None::<Kind>); // global pool without cls token
                x.apply(fc_norm)
            }
            Pool::Cls { norm } => x.apply(norm).select(1, 0),
        })
    }

    /// x: [B, 3, H, W] -> logits [B, num_classes] (features [B, D] when the head is Identity).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.forward_features(x, train)?;
        Ok(match &self.head {
            Some(head) => x.apply(head),
            None => x,
        })
    }
}

/// `[x.item() for x in torch.linspace(start, end, steps)]`, computed in f32 as torch does.
fn linspace_f32(start: f64, end: f64, steps: i64) -> Vec<f64> {
    Vec::<f64>::try_from(
        Tensor::linspace(start, end, steps, (Kind::Float, tch::Device::Cpu)).to_kind(Kind::Double),
    )
    .expect("linspace")
}

impl VisionTransformer {
    /// `sd`'s `pos_embed` resized to this model's patch grid (`interpolate_pos_embed`).
    fn interpolate_pos_embed(&self, sd: &mut [(String, Tensor)]) -> Result<()> {
        let n = self.patch_embed.num_patches;
        interpolate_pos_embed(sd, "pos_embed", n, self.pos_embed.size()[1] - n)
    }

    /// Not in the reference (`misc.load_model` of main_finetune.py `--resume` / `--eval`,
    /// strict): a fine-tuned checkpoint into this model; its tensors become the parameters
    /// ([`adopt_state_dict`]), `pos_embed` interpolated when the checkpoint's resolution differs.
    pub fn load_checkpoint(
        &self,
        vs: &mut nn::VarStore,
        mut sd: Vec<(String, Tensor)>,
    ) -> Result<LoadReport> {
        self.interpolate_pos_embed(&mut sd)?;
        adopt_state_dict(vs, sd)
    }

    /// `--finetune` of main_finetune.py and main_linprobe.py: a pre-training checkpoint into this
    /// freshly built encoder, whose new classifier's Linear is `head` (`"head"`, or `"head.1"`
    /// behind linear probing's BatchNorm). Drops the checkpoint's `head.*` that the model does
    /// not hold with that shape, interpolates `pos_embed`, loads non-strictly (the decoder keys
    /// come back unexpected) and requires the missing parameters to be exactly the new head's
    /// (and `fc_norm`'s with global pool). Initializing the head is left to the caller, as each
    /// script does it by hand.
    pub fn load_pretrained(
        &self,
        vs: &mut nn::VarStore,
        mut checkpoint_model: Vec<(String, Tensor)>,
        head: &str,
    ) -> Result<LoadReport> {
        let state_dict = vs.variables();
        checkpoint_model.retain(|(k, t)| {
            let remove = (k == "head.weight" || k == "head.bias")
                && state_dict.get(k).is_none_or(|v| v.size() != t.size());
            if remove {
                println!("Removing key {k} from pretrained checkpoint");
            }
            !remove
        });

        // interpolate position embedding
        self.interpolate_pos_embed(&mut checkpoint_model)?;

        // load pre-trained model
        let msg = load_state_dict(vs, checkpoint_model, false)?;
        println!("{msg}");
        ensure!(
            msg.mismatched_keys.is_empty(),
            "pre-trained checkpoint does not fit the model: {msg}"
        );
        let mut want = vec![format!("{head}.bias"), format!("{head}.weight")];
        if let Pool::Global { .. } = self.pool {
            want.extend(["fc_norm.bias".into(), "fc_norm.weight".into()]);
        }
        want.sort();
        // the buffers of a layer in front of the head (linear probing's BatchNorm) start fresh
        let mut missing: Vec<String> = msg
            .missing_keys
            .iter()
            .filter(|k| !k.starts_with("head.") || want.contains(k))
            .cloned()
            .collect();
        missing.sort();
        ensure!(
            missing == want,
            "pre-trained checkpoint: missing keys {missing:?}, expected exactly {want:?}"
        );
        Ok(msg)
    }
}

/// A preset: `VisionTransformer(patch_size, embed_dim, depth, num_heads, mlp_ratio=4,
/// qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)`.
fn vit(
    vs: &nn::Path,
    cfg: VitConfig,
    [patch_size, embed_dim, depth, num_heads]: [i64; 4],
) -> VisionTransformer {
    let cfg = VitConfig {
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_ratio: 4.,
        ..cfg
    };
    VisionTransformer::new(vs, &cfg)
}

pub fn vit_base_patch16(vs: &nn::Path, cfg: VitConfig) -> VisionTransformer {
    vit(vs, cfg, [16, 768, 12, 12])
}

pub fn vit_large_patch16(vs: &nn::Path, cfg: VitConfig) -> VisionTransformer {
    vit(vs, cfg, [16, 1024, 24, 16])
}

pub fn vit_huge_patch14(vs: &nn::Path, cfg: VitConfig) -> VisionTransformer {
    vit(vs, cfg, [14, 1280, 32, 16])
}

/// Not in the reference: the encoder of `mae_vit_tiny_patch4`, for tests (pass `img_size: 32`).
pub fn vit_tiny_patch4(vs: &nn::Path, cfg: VitConfig) -> VisionTransformer {
    vit(vs, cfg, [4, 64, 2, 4])
}

/// Not in the reference: the encoder of `mae_vit_mini_patch4` (Fashion-MNIST, `img_size: 32`).
pub fn vit_mini_patch4(vs: &nn::Path, cfg: VitConfig) -> VisionTransformer {
    vit(vs, cfg, [4, 128, 6, 4])
}

/// A `--model` name and the function it builds.
pub type Preset = (&'static str, fn(&nn::Path, VitConfig) -> VisionTransformer);

/// `models_vit.__dict__`: every name `--model` accepts.
pub const MODELS: [Preset; 5] = [
    ("vit_base_patch16", vit_base_patch16),
    ("vit_large_patch16", vit_large_patch16),
    ("vit_huge_patch14", vit_huge_patch14),
    ("vit_tiny_patch4", vit_tiny_patch4),
    ("vit_mini_patch4", vit_mini_patch4),
];

/// `models_vit.__dict__[args.model](num_classes=.., drop_path_rate=.., global_pool=..)`: the
/// model named `name`; `cfg` carries the keyword arguments (and `img_size`).
pub fn build(name: &str, vs: &nn::Path, cfg: VitConfig) -> Result<VisionTransformer> {
    match MODELS.iter().find(|(n, _)| *n == name) {
        Some((_, model)) => Ok(model(vs, cfg)),
        None => bail!(
            "unknown model {name:?}; valid names: {}",
            MODELS.map(|(n, _)| n).join(", ")
        ),
    }
}
