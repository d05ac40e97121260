//! Port of models_mae.py: the Masked Autoencoder with a VisionTransformer backbone, its
//! `initialize_weights`, and the factory functions picked by `--model`.

use anyhow::{bail, ensure, Result};
use tch::{nn, nn::Module, nn::ModuleT, IndexOp, Kind, Tensor};

use crate::timm::{
    layer_norm, linear, xavier_uniform_, AttentionImpl, Block, LinearInit, PatchEmbed,
};
use crate::torch::state_dict::{adopt_state_dict, LoadReport};
use crate::util::pos_embed::{get_2d_sincos_pos_embed, interpolate_pos_embed};

/// `MaskedAutoencoderViT.__init__` keyword arguments, with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MaeConfig {
    pub img_size: i64,          // 224
    pub patch_size: i64,        // 16
    pub in_chans: i64,          // 3
    pub embed_dim: i64,         // 1024
    pub depth: i64,             // 24
    pub num_heads: i64,         // 16
    pub decoder_embed_dim: i64, // 512
    pub decoder_depth: i64,     // 8
    pub decoder_num_heads: i64, // 16
    pub mlp_ratio: f64,         // 4.
    pub norm_pix_loss: bool,    // false: predict raw pixels; true: per-patch normalised pixels
    pub init: bool, // true; false (not in the reference): no initialize_weights, a full checkpoint follows
}

impl Default for MaeConfig {
    fn default() -> Self {
        MaeConfig {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            decoder_embed_dim: 512,
            decoder_depth: 8,
            decoder_num_heads: 16,
            mlp_ratio: 4.,
            norm_pix_loss: false,
            init: true,
        }
    }
}

/// Masked Autoencoder with VisionTransformer backbone.
#[derive(Debug)]
pub struct MaskedAutoencoderViT {
    // MAE encoder specifics
    pub patch_embed: PatchEmbed,
    pub cls_token: Tensor,
    pub pos_embed: Tensor, // fixed sin-cos embedding, in the VarStore but not trainable
    pub blocks: Vec<Block>,
    pub norm: nn::LayerNorm,
    // MAE decoder specifics
    pub decoder_embed: nn::Linear,
    pub mask_token: Tensor,
    pub decoder_pos_embed: Tensor, // fixed sin-cos embedding
    pub decoder_blocks: Vec<Block>,
    pub decoder_norm: nn::LayerNorm,
    pub decoder_pred: nn::Linear, // decoder to patch
    pub norm_pix_loss: bool,
    pub in_chans: i64,
}

impl MaskedAutoencoderViT {
    pub fn new(vs: &nn::Path, cfg: &MaeConfig) -> Self {
        // self.apply(self._init_weights): xavier_uniform Linear, zero bias; LayerNorm 1 / 0
        // (skipped with `init: false`: the strict checkpoint loads overwrite every parameter)
        let init = match cfg.init {
            true => LinearInit::XavierUniform,
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
        let blocks = (0..cfg.depth)
            .map(|i| {
                Block::new(
                    vs / "blocks" / i,
                    cfg.embed_dim,
                    cfg.num_heads,
                    cfg.mlp_ratio,
                    0.,
                    init,
                )
            })
            .collect();
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|i| {
                let p = vs / "decoder_blocks" / i;
                Block::new(
                    p,
                    cfg.decoder_embed_dim,
                    cfg.decoder_num_heads,
                    cfg.mlp_ratio,
                    0.,
                    init,
                )
            })
            .collect();
        let mut model = MaskedAutoencoderViT {
            patch_embed,
            cls_token: vs.zeros("cls_token", &[1, 1, cfg.embed_dim]),
            pos_embed: vs.zeros_no_train("pos_embed", &[1, num_patches + 1, cfg.embed_dim]),
            blocks,
            norm: layer_norm(vs / "norm", cfg.embed_dim),
            decoder_embed: linear(
                vs / "decoder_embed",
                cfg.embed_dim,
                cfg.decoder_embed_dim,
                init,
            ),
            mask_token: vs.zeros("mask_token", &[1, 1, cfg.decoder_embed_dim]),
            decoder_pos_embed: vs.zeros_no_train(
                "decoder_pos_embed",
                &[1, num_patches + 1, cfg.decoder_embed_dim],
            ),
            decoder_blocks,
            decoder_norm: layer_norm(vs / "decoder_norm", cfg.decoder_embed_dim),
            decoder_pred: linear(
                vs / "decoder_pred",
                cfg.decoder_embed_dim,
                cfg.patch_size * cfg.patch_size * cfg.in_chans,
                init,
            ),
            norm_pix_loss: cfg.norm_pix_loss,
            in_chans: cfg.in_chans,
        };
        if cfg.init {
            model.initialize_weights();
        }
        model
    }

    /// The parts `_init_weights` does not reach; Linear and LayerNorm are initialised when built.
    pub fn initialize_weights(&mut self) {
        let grid_size = (self.patch_embed.num_patches as f64).sqrt() as i64;
        tch::no_grad(|| {
            // initialize (and freeze) pos_embed by sin-cos embedding
            let d = self.pos_embed.size()[2];
            self.pos_embed
                .copy_(&get_2d_sincos_pos_embed(d, grid_size, true).unsqueeze(0));
            let d = self.decoder_pos_embed.size()[2];
            self.decoder_pos_embed
                .copy_(&get_2d_sincos_pos_embed(d, grid_size, true).unsqueeze(0));

            // initialize patch_embed like nn.Linear (instead of nn.Conv2d)
            let w = &self.patch_embed.proj.ws;
            xavier_uniform_(&mut w.view([w.size()[0], -1]));

            // timm's trunc_normal_(std=.02) is effectively normal_(std=0.02) as cutoff is too big (2.)
            let _ = self.cls_token.normal_(0., 0.02);
            let _ = self.mask_token.normal_(0., 0.02);
        });
    }

    /// Selects the attention kernel of every encoder and decoder block.
    pub fn set_attention_impl(&mut self, attn_impl: AttentionImpl) {
        for blk in self.blocks.iter_mut().chain(self.decoder_blocks.iter_mut()) {
            blk.attn.attn_impl = attn_impl;
        }
    }

    /// imgs: (N, 3, H, W) -> x: (N, L, patch_size**2 *3)
    pub fn patchify(&self, imgs: &Tensor) -> Result<Tensor> {
        let p = self.patch_embed.patch_size;
        let (n, c, h, w) = imgs.size4()?;
        ensure!(
            h == w && h % p == 0 && c == self.in_chans,
            "images must be [N, {}, H, H] with H a multiple of the patch size {p}, got {:?}",
            self.in_chans,
            imgs.size()
        );
        let h = h / p;
        let x = imgs.reshape([n, c, h, p, h, p]);
        let x = x.permute([0, 2, 4, 3, 5, 1]); // nchpwq->nhwpqc
        Ok(x.reshape([n, h * h, p * p * c]))
    }

    /// x: (N, L, patch_size**2 *3) -> imgs: (N, 3, H, W)
    pub fn unpatchify(&self, x: &Tensor) -> Result<Tensor> {
        let (p, c) = (self.patch_embed.patch_size, self.in_chans);
        let (n, l, d) = x.size3()?;
        let h = (l as f64).sqrt() as i64;
        ensure!(
            h * h == l && d == p * p * c,
            "patches must be [N, h*h, {}], got {:?}",
            p * p * c,
            x.size()
        );
        let x = x.reshape([n, h, h, p, p, c]);
        let x = x.permute([0, 5, 1, 3, 2, 4]); // nhwpqc->nchpwq
        Ok(x.reshape([n, c, h * p, h * p]))
    }

    /// Perform per-sample random masking by per-sample shuffling.
    /// Per-sample shuffling is done by argsort random noise.
    /// x: [N, L, D], sequence. `noise` ([N, L] in [0, 1]) defaults to `torch.rand(N, L)`, drawn
    /// here as the reference does, so a `tch::manual_seed` masks the same patches as PyTorch.
    pub fn random_masking(
        &self,
        x: &Tensor,
        mask_ratio: f64,
        noise: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, l, d) = x.size3()?; // batch, length, dim
        let len_keep = (l as f64 * (1. - mask_ratio)) as i64;
        let noise = match noise {
            Some(t) => {
                ensure!(
                    t.size() == [n, l],
                    "noise must be [{n}, {l}], got {:?}",
                    t.size()
                );
                t.to_device(x.device())
            }
            None => Tensor::rand([n, l], (Kind::Float, x.device())), // noise in [0, 1]
        };

        // sort noise for each sample
        let ids_shuffle = noise.argsort(1, false); // ascend: small is keep, large is remove
        let ids_restore = ids_shuffle.argsort(1, false);

        // keep the first subset
        let ids_keep = ids_shuffle.i((.., ..len_keep));
        let x_masked = x.gather(1, &ids_keep.unsqueeze(-1).repeat([1, 1, d]), false);

        // generate the binary mask: 0 is keep, 1 is remove
        let mask = Tensor::ones([n, l], (Kind::Float, x.device()));
        let _ = mask.i((.., ..len_keep)).fill_(0.);
        // unshuffle to get the binary mask
        let mask = mask.gather(1, &ids_restore, false);

        Ok((x_masked, mask, ids_restore))
    }

    /// Returns (latent [N, 1 + len_keep, D], mask [N, L], ids_restore [N, L]).
    pub fn forward_encoder(
        &self,
        x: &Tensor,
        mask_ratio: f64,
        noise: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        // embed patches
        let x = self.patch_embed.forward(x)?;

        // add pos embed w/o cls token
        let x = x + self.pos_embed.i((.., 1.., ..));

        // masking: length -> length * mask_ratio
        let (x, mask, ids_restore) = self.random_masking(&x, mask_ratio, noise)?;

        // append cls token
        let cls_token = &self.cls_token + self.pos_embed.i((.., ..1, ..));
        let cls_tokens = cls_token.expand([x.size()[0], -1, -1], false);
        let mut x = Tensor::cat(&[cls_tokens, x], 1);

        // apply Transformer blocks
        for blk in &self.blocks {
            x = blk.forward_t(&x, false);
        }
        Ok((x.apply(&self.norm), mask, ids_restore))
    }

    /// x: latent [N, 1 + len_keep, D] -> pred [N, L, p*p*3]
    pub fn forward_decoder(&self, x: &Tensor, ids_restore: &Tensor) -> Result<Tensor> {
        // embed tokens
        let x = x.apply(&self.decoder_embed);
        let (n, t, d) = x.size3()?;

        // append mask tokens to sequence
        let mask_tokens = self
            .mask_token
            .repeat([n, ids_restore.size()[1] + 1 - t, 1]);
        let x_ = Tensor::cat(&[x.i((.., 1.., ..)), mask_tokens], 1); // no cls token
        let x_ = x_.gather(1, &ids_restore.unsqueeze(-1).repeat([1, 1, d]), false); // unshuffle
        let x = Tensor::cat(&[x.i((.., ..1, ..)), x_], 1); // append cls token

        // add pos embed
        let mut x = x + &self.decoder_pos_embed;

        // apply Transformer blocks
        for blk in &self.decoder_blocks {
            x = blk.forward_t(&x, false);
        }
        let x = x.apply(&self.decoder_norm);

        // predictor projection
        let x = self.decoder_pred.forward(&x);

        // remove cls token
        Ok(x.i((.., 1.., ..)))
    }

    /// imgs: [N, 3, H, W], pred: [N, L, p*p*3], mask: [N, L], 0 is keep, 1 is remove
    pub fn forward_loss(&self, imgs: &Tensor, pred: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut target = self.patchify(imgs)?;
        if self.norm_pix_loss {
            let mean = target.mean_dim(-1, true, None::<Kind>);
            let var = target.var_dim(-1, true, true);
            target = (target - mean) / (var + 1.0e-6).sqrt();
        }
        let loss = (pred - target).square();
        let loss = loss.mean_dim(-1, false, None::<Kind>); // [N, L], mean loss per patch
        Ok((loss * mask).sum(None::<Kind>) / mask.sum(None::<Kind>)) // mean loss on removed patches
    }

    /// `forward(imgs, mask_ratio=0.75) -> (loss, pred, mask)` with fresh masking noise.
    pub fn forward(&self, imgs: &Tensor, mask_ratio: f64) -> Result<(Tensor, Tensor, Tensor)> {
        self.forward_with_noise(imgs, mask_ratio, None)
    }

    /// [`Self::forward`] with explicit masking noise [N, L] (as HF's `ViTMAEForPreTraining(noise=)`).
    pub fn forward_with_noise(
        &self,
        imgs: &Tensor,
        mask_ratio: f64,
        noise: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (latent, mask, ids_restore) = self.forward_encoder(imgs, mask_ratio, noise)?;
        let pred = self.forward_decoder(&latent, &ids_restore)?; // [N, L, p*p*3]
        let loss = self.forward_loss(imgs, &pred, &mask)?;
        Ok((loss, pred, mask))
    }
}

impl MaskedAutoencoderViT {
    /// Not in the reference (`misc.load_model` / the demo's `prepare_model`, strict): a
    /// pre-training checkpoint (`checkpoint['model']`) into this model; its tensors become the
    /// parameters ([`adopt_state_dict`]), `pos_embed` / `decoder_pos_embed` interpolated when the
    /// checkpoint's resolution differs.
    pub fn load_checkpoint(
        &self,
        vs: &mut nn::VarStore,
        mut sd: Vec<(String, Tensor)>,
    ) -> Result<LoadReport> {
        let n = self.patch_embed.num_patches;
        let extra = |pos_embed: &Tensor| pos_embed.size()[1] - n; // the cls token
        interpolate_pos_embed(&mut sd, "pos_embed", n, extra(&self.pos_embed))?;
        let decoder_extra = extra(&self.decoder_pos_embed);
        interpolate_pos_embed(&mut sd, "decoder_pos_embed", n, decoder_extra)?;
        adopt_state_dict(vs, sd)
    }
}

/// The decoder of the three official models (`dec512d8b`): 512 dim, 8 blocks, 16 heads; mlp
/// ratio 4 throughout.
fn dec512d8b(cfg: MaeConfig) -> MaeConfig {
    MaeConfig {
        decoder_embed_dim: 512,
        decoder_depth: 8,
        decoder_num_heads: 16,
        mlp_ratio: 4.,
        ..cfg
    }
}

pub fn mae_vit_base_patch16_dec512d8b(vs: &nn::Path, cfg: MaeConfig) -> MaskedAutoencoderViT {
    let cfg = MaeConfig {
        patch_size: 16,
        embed_dim: 768,
        depth: 12,
        num_heads: 12,
        ..dec512d8b(cfg)
    };
    MaskedAutoencoderViT::new(vs, &cfg)
}

pub fn mae_vit_large_patch16_dec512d8b(vs: &nn::Path, cfg: MaeConfig) -> MaskedAutoencoderViT {
    let cfg = MaeConfig {
        patch_size: 16,
        embed_dim: 1024,
        depth: 24,
        num_heads: 16,
        ..dec512d8b(cfg)
    };
    MaskedAutoencoderViT::new(vs, &cfg)
}

pub fn mae_vit_huge_patch14_dec512d8b(vs: &nn::Path, cfg: MaeConfig) -> MaskedAutoencoderViT {
    let cfg = MaeConfig {
        patch_size: 14,
        embed_dim: 1280,
        depth: 32,
        num_heads: 16,
        ..dec512d8b(cfg)
    };
    MaskedAutoencoderViT::new(vs, &cfg)
}

/// Not in the reference: a 32×32 model (8×8 patches of 4) small enough for tests and CPU demos.
pub fn mae_vit_tiny_patch4(vs: &nn::Path, cfg: MaeConfig) -> MaskedAutoencoderViT {
    let cfg = MaeConfig {
        img_size: 32,
        patch_size: 4,
        embed_dim: 64,
        depth: 2,
        num_heads: 4,
        decoder_embed_dim: 32,
        decoder_depth: 2,
        decoder_num_heads: 4,
        mlp_ratio: 4.,
        ..cfg
    };
    MaskedAutoencoderViT::new(vs, &cfg)
}

/// Not in the reference: the 32×32 model pre-trained on Fashion-MNIST (28×28 upsampled by the
/// RandomResizedCrop) and shipped in weights/: 8×8 patches of 4, 6 blocks of 128-d, decoder 4×64-d.
pub fn mae_vit_mini_patch4(vs: &nn::Path, cfg: MaeConfig) -> MaskedAutoencoderViT {
    let cfg = MaeConfig {
        img_size: 32,
        patch_size: 4,
        embed_dim: 128,
        depth: 6,
        num_heads: 4,
        decoder_embed_dim: 64,
        decoder_depth: 4,
        decoder_num_heads: 4,
        mlp_ratio: 4.,
        ..cfg
    };
    MaskedAutoencoderViT::new(vs, &cfg)
}

/// Not in the reference: `mae_vit_mini_patch4` with a 1-block decoder (the decoder-depth ablation
/// of the paper's Table 1(a), docs/REPRODUCTION.md).
pub fn mae_vit_mini_patch4_dec64d1b(vs: &nn::Path, cfg: MaeConfig) -> MaskedAutoencoderViT {
    mae_vit_mini_patch4(
        vs,
        MaeConfig {
            decoder_depth: 1,
            ..cfg
        },
    )
}

// set recommended archs
pub use mae_vit_base_patch16_dec512d8b as mae_vit_base_patch16; // decoder: 512 dim, 8 blocks
pub use mae_vit_huge_patch14_dec512d8b as mae_vit_huge_patch14; // decoder: 512 dim, 8 blocks
pub use mae_vit_large_patch16_dec512d8b as mae_vit_large_patch16; // decoder: 512 dim, 8 blocks

/// A `--model` name and the function it builds.
pub type Preset = (
    &'static str,
    fn(&nn::Path, MaeConfig) -> MaskedAutoencoderViT,
);

/// `models_mae.__dict__`: every name `--model` accepts.
pub const MODELS: [Preset; 9] = [
    (
        "mae_vit_base_patch16_dec512d8b",
        mae_vit_base_patch16_dec512d8b,
    ),
    (
        "mae_vit_large_patch16_dec512d8b",
        mae_vit_large_patch16_dec512d8b,
    ),
    (
        "mae_vit_huge_patch14_dec512d8b",
        mae_vit_huge_patch14_dec512d8b,
    ),
    ("mae_vit_base_patch16", mae_vit_base_patch16),
    ("mae_vit_large_patch16", mae_vit_large_patch16),
    ("mae_vit_huge_patch14", mae_vit_huge_patch14),
    ("mae_vit_tiny_patch4", mae_vit_tiny_patch4),
    ("mae_vit_mini_patch4", mae_vit_mini_patch4),
    ("mae_vit_mini_patch4_dec64d1b", mae_vit_mini_patch4_dec64d1b),
];

/// `models_mae.__dict__[args.model](norm_pix_loss=args.norm_pix_loss)`: the model named `name`;
/// `cfg` carries the keyword arguments (`norm_pix_loss`, `img_size`).
pub fn build(name: &str, vs: &nn::Path, cfg: MaeConfig) -> Result<MaskedAutoencoderViT> {
    match MODELS.iter().find(|(n, _)| *n == name) {
        Some((_, model)) => Ok(model(vs, cfg)),
        None => bail!(
            "unknown model {name:?}; valid names: {}",
            MODELS.map(|(n, _)| n).join(", ")
        ),
    }
}
