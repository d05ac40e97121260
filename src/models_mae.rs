//! Port of models_mae.py: the Masked Autoencoder with a VisionTransformer backbone, its
//! `initialize_weights`, and the factory functions picked by `--model`.

use anyhow::{bail, ensure, Result};
use tch::{nn, nn::Module, nn::ModuleT, IndexOp, Kind, Tensor};

use crate::timm::{
    layer_norm, linear, xavier_uniform_, AttentionImpl, Block, LinearInit, PatchEmbed,
};
use crate::torch::state_dict::{adopt_state_dict, LoadReport};
use crate::torchvision::transforms::{round_half_even, SampleRng};
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
    // Not in the reference: the paper's ablations (Table 1), each off by default
    /// `--decoder_embed_dim` / `--decoder_depth`: replace the preset's decoder width and depth
    pub decoder_override: (Option<i64>, Option<i64>),
    /// `--encoder_mask_token` ("encoder w/ [M]"): the encoder sees every patch, the masked ones
    /// replaced by a learned `encoder_mask_token`
    pub encoder_mask_token: bool,
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
            decoder_override: (None, None),
            encoder_mask_token: false,
        }
    }
}

impl MaeConfig {
    /// The configuration built: the preset's with `decoder_override` applied.
    pub fn resolved(&self) -> MaeConfig {
        let (dim, depth) = self.decoder_override;
        MaeConfig {
            decoder_embed_dim: dim.unwrap_or(self.decoder_embed_dim),
            decoder_depth: depth.unwrap_or(self.decoder_depth),
            decoder_override: (None, None),
            ..self.clone()
        }
    }
}

/// Not in the reference (the paper's Figure 6 and Table 1(f)): which patches are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskSampling {
    /// Per-sample random patches (the official `random_masking`).
    #[default]
    Random,
    /// BEiT's block-wise masking: random rectangles until the ratio is reached.
    Block,
    /// One patch kept of every 2×2 (its top-left), the same for every image: 75 %.
    Grid,
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
    // Not in the reference: the ablations of `MaeConfig` and `MaskSampling`
    pub encoder_mask_token: Option<Tensor>,
    pub mask_sampling: MaskSampling,
}

impl MaskedAutoencoderViT {
    pub fn new(vs: &nn::Path, cfg: &MaeConfig) -> Self {
        let cfg = &cfg.resolved();
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
            encoder_mask_token: cfg
                .encoder_mask_token
                .then(|| vs.zeros("encoder_mask_token", &[1, 1, cfg.embed_dim])),
            mask_sampling: MaskSampling::Random,
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
            if let Some(token) = &mut self.encoder_mask_token {
                let _ = token.normal_(0., 0.02); // as mask_token
            }
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
        // Not in the reference: block / grid sampling, as noise whose argsort keeps their patches
        let noise = self.sampling_noise(noise, len_keep)?;

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

    /// Returns (latent [N, 1 + len_keep, D], mask [N, L], ids_restore [N, L]); with the encoder
    /// mask token, latent [N, 1 + L, D] in patch order.
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
        let (x, mask, ids_restore) = match &self.encoder_mask_token {
            None => self.random_masking(&x, mask_ratio, noise)?,
            // Not in the reference (Table 1(c), "encoder w/ [M]"): every patch stays, the masked
            // ones replaced by the encoder's mask token plus their position embedding; the
            // sequence keeps its order, so ids_restore is the identity.
            Some(token) => {
                let (_, mask, _) = self.random_masking(&x, mask_ratio, noise)?;
                let (n, l, _) = x.size3()?;
                let masked = mask.gt(0.5).unsqueeze(-1);
                let x = x.where_self(
                    &masked.logical_not(),
                    &(token + self.pos_embed.i((.., 1.., ..))),
                );
                let ids = Tensor::arange(l, (Kind::Int64, x.device())).expand([n, l], false);
                (x, mask, ids)
            }
        };

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

// --------------------------------------------------------
// Not in the reference: the paper's masking and cost ablations

impl MaskedAutoencoderViT {
    /// `noise` [N, L] as `self.mask_sampling` wants it: unchanged for random sampling; else 0–0.5
    /// on the patches to keep and 1–1.5 on the others (ordered by `noise` within each set), so
    /// that `random_masking` keeps exactly them. Block masks draw from a generator seeded by each
    /// row of `noise`: the same seed gives the same masks, on any number of ranks.
    fn sampling_noise(&self, noise: Tensor, len_keep: i64) -> Result<Tensor> {
        let (n, l) = noise.size2()?;
        let side = (l as f64).sqrt() as i64;
        let masks: Vec<bool> = match self.mask_sampling {
            MaskSampling::Random => return Ok(noise),
            MaskSampling::Grid => {
                ensure!(
                    side * side == l && side % 2 == 0 && len_keep * 4 == l,
                    "--mask_sampling grid keeps one patch of every 2×2: it needs an even patch grid and --mask_ratio 0.75"
                );
                (0..n).flat_map(|_| grid_mask(side)).collect()
            }
            MaskSampling::Block => {
                ensure!(
                    side * side == l,
                    "--mask_sampling block needs a square patch grid"
                );
                let rows = Vec::<f32>::try_from(
                    noise
                        .to_kind(Kind::Float)
                        .to_device(tch::Device::Cpu)
                        .reshape([-1]),
                )?;
                (0..n as usize)
                    .flat_map(|i| {
                        let (a, b) = (
                            rows[i * l as usize].to_bits(),
                            rows[i * l as usize + 1].to_bits(),
                        );
                        let mut rng = SampleRng::new(a as u64, b as u64, i as u64);
                        block_mask(side, side, l - len_keep, &mut rng)
                    })
                    .collect()
            }
        };
        let mask = Tensor::from_slice(&masks)
            .to_kind(Kind::Float)
            .reshape([n, l]);
        Ok(mask.to_device(noise.device()) + noise * 0.5)
    }

    /// Forward FLOPs per image of the encoder and of the decoder (multiply-add = 2 FLOPs): every
    /// matmul (patch embedding, qkv, attention scores and weighted sum, projections, MLP,
    /// decoder embedding and prediction); norms, softmax, GELU and additions are left out. The
    /// encoder sees the 1 + L·(1 − mask_ratio) visible tokens, or all 1 + L with its mask token.
    pub fn flops(&self, mask_ratio: f64) -> (f64, f64) {
        let l = self.patch_embed.num_patches as f64;
        let p = self.patch_embed.patch_size as f64;
        let pixels = p * p * self.in_chans as f64;
        let block =
            |t: f64, d: f64, hidden: f64| 2. * t * d * (3. * d + d + 2. * hidden) + 4. * t * t * d;
        let d = self.cls_token.size()[2] as f64;
        let t = match self.encoder_mask_token {
            Some(_) => 1. + l,
            None => 1. + (l * (1. - mask_ratio)).trunc(),
        };
        let hidden = |b: &Block| b.mlp.fc1.ws.size()[0] as f64;
        let encoder = 2. * l * pixels * d
            + self
                .blocks
                .iter()
                .map(|b| block(t, d, hidden(b)))
                .sum::<f64>();
        let dd = self.mask_token.size()[2] as f64;
        let decoder = 2. * t * d * dd
            + self
                .decoder_blocks
                .iter()
                .map(|b| block(1. + l, dd, hidden(b)))
                .sum::<f64>()
            + 2. * (1. + l) * dd * pixels;
        (encoder, decoder)
    }
}

/// The grid sampling's mask of a side×side patch grid: `true` (masked) except the top-left
/// patch of every 2×2.
pub fn grid_mask(side: i64) -> Vec<bool> {
    (0..side * side)
        .map(|k| !((k / side) % 2 == 0 && (k % side) % 2 == 0))
        .collect()
}

/// BEiT's block-wise masking (unilm beit/masking_generator.py `MaskingGenerator` with its
/// defaults: min_num_patches 4, aspect ratio log-uniform in [0.3, 1/0.3], max_num_patches the
/// number to mask) on an h×w patch grid, row-major, `true` masked. Rectangles are added while
/// they add at least one new patch and no more than are still to mask; BEiT stops when ten
/// attempts in a row add nothing, here the patches still missing are then masked one at a time
/// at random, so that exactly `num_masking` are.
pub fn block_mask(h: i64, w: i64, num_masking: i64, rng: &mut SampleRng) -> Vec<bool> {
    block_mask_rects(h, w, num_masking, rng).0
}

/// A rectangle of patches: (top, left, height, width).
pub type Rect = (i64, i64, i64, i64);

/// [`block_mask`] and the rectangles it placed.
pub fn block_mask_rects(
    h: i64,
    w: i64,
    num_masking: i64,
    rng: &mut SampleRng,
) -> (Vec<bool>, Vec<Rect>) {
    let mut mask = vec![false; (h * w) as usize];
    let mut rects = vec![];
    let (min_patches, log_aspect) = (4f32, (0.3f32.ln(), (1. / 0.3f32).ln()));
    let mut count = 0;
    while count < num_masking {
        let max_patches = num_masking - count;
        let mut delta = 0;
        for _attempt in 0..10 {
            let target_area = rng.uniform(min_patches, max_patches as f32) as f64;
            let aspect = rng.uniform(log_aspect.0, log_aspect.1).exp() as f64;
            let bh = round_half_even((target_area * aspect).sqrt());
            let bw = round_half_even((target_area / aspect).sqrt());
            if bw < w && bh < h {
                let top = rng.randint(0, h - bh + 1);
                let left = rng.randint(0, w - bw + 1);
                let cells = || {
                    (top..top + bh)
                        .flat_map(move |i| (left..left + bw).map(move |j| (i * w + j) as usize))
                };
                let new = cells().filter(|&k| !mask[k]).count() as i64;
                if 0 < new && new <= max_patches {
                    cells().for_each(|k| mask[k] = true);
                    rects.push((top, left, bh, bw));
                    delta = new;
                }
                if delta > 0 {
                    break;
                }
            }
        }
        if delta == 0 {
            // no rectangle fits what is left: the rest one patch at a time
            while count < num_masking {
                let free: Vec<usize> = (0..mask.len()).filter(|&k| !mask[k]).collect();
                mask[free[rng.randint(0, free.len() as i64) as usize]] = true;
                count += 1;
            }
            break;
        }
        count += delta;
    }
    (mask, rects)
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
    MaskedAutoencoderViT::new(vs, &mini(cfg))
}

/// Not in the reference: `mae_vit_mini_patch4` with a 1-block decoder (the decoder-depth ablation
/// of the paper's Table 1(a), docs/REPRODUCTION.md).
pub fn mae_vit_mini_patch4_dec64d1b(vs: &nn::Path, cfg: MaeConfig) -> MaskedAutoencoderViT {
    let cfg = MaeConfig {
        decoder_depth: 1,
        ..mini(cfg)
    };
    MaskedAutoencoderViT::new(vs, &cfg)
}

/// The mini's configuration (`cfg` keeps its keyword arguments), as `dec512d8b` is the official
/// presets' decoder.
fn mini(cfg: MaeConfig) -> MaeConfig {
    MaeConfig {
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
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(sampling: MaskSampling) -> MaskedAutoencoderViT {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut model = mae_vit_tiny_patch4(&vs.root(), MaeConfig::default());
        model.mask_sampling = sampling;
        model
    }

    #[test]
    fn grid_keeps_the_top_left_of_every_2x2() {
        let mask = grid_mask(8);
        assert_eq!(mask.iter().filter(|&&m| !m).count(), 16);
        for (k, &m) in mask.iter().enumerate() {
            let (i, j) = (k / 8, k % 8);
            assert_eq!(m, !(i % 2 == 0 && j % 2 == 0), "patch ({i}, {j})");
        }
        // through the model: every image gets the same pattern, 75 % masked
        let model = tiny(MaskSampling::Grid);
        let x = Tensor::rand([3, 64, 8], (Kind::Float, tch::Device::Cpu));
        let (kept, mask, _) = model.random_masking(&x, 0.75, None).unwrap();
        assert_eq!(kept.size(), [3, 16, 8]);
        let want = Tensor::from_slice(&grid_mask(8)).to_kind(Kind::Float);
        for i in 0..3 {
            assert!(mask.get(i).equal(&want), "image {i}");
        }
        assert!(model.random_masking(&x, 0.5, None).is_err());
    }

    #[test]
    fn block_masks_exactly_the_ratio_with_beit_rectangles() {
        for (k, num) in [(0u64, 48i64), (1, 32), (2, 16), (3, 63), (4, 1)] {
            for n in 0..50 {
                let mut rng = SampleRng::new(k, 0, n);
                let (mask, rects) = block_mask_rects(8, 8, num, &mut rng);
                assert_eq!(
                    mask.iter().filter(|&&m| m).count() as i64,
                    num,
                    "{num} wanted"
                );
                for &(top, left, h, w) in &rects {
                    // BEiT: strictly smaller than the grid, inside it, aspect from [0.3, 1/0.3]
                    // (h and w rounded)
                    assert!(h >= 1 && w >= 1 && h < 8 && w < 8, "{h}x{w}");
                    assert!(top >= 0 && left >= 0 && top + h <= 8 && left + w <= 8);
                    let aspect = h as f64 / w as f64;
                    assert!((0.2..=5.).contains(&aspect), "{h}x{w}");
                    for i in top..top + h {
                        for j in left..left + w {
                            assert!(mask[(i * 8 + j) as usize]);
                        }
                    }
                }
                if (16..=48).contains(&num) {
                    assert!(!rects.is_empty(), "{num} patches, sample {n}: no rectangle");
                }
            }
        }
    }

    #[test]
    fn block_masks_follow_the_noise_and_so_the_seed() {
        let model = tiny(MaskSampling::Block);
        let x = Tensor::rand([4, 64, 8], (Kind::Float, tch::Device::Cpu));
        tch::manual_seed(3);
        let noise = Tensor::rand([4, 64], (Kind::Float, tch::Device::Cpu));
        let (_, a, _) = model.random_masking(&x, 0.75, Some(&noise)).unwrap();
        let (_, b, _) = model.random_masking(&x, 0.75, Some(&noise)).unwrap();
        assert!(a.equal(&b));
        assert_eq!(a.sum(Kind::Float).double_value(&[]), 4. * 48.);
        // the mask is the generator's, seeded by each row of the noise
        let rows = Vec::<f32>::try_from(noise.reshape([-1])).unwrap();
        for i in 0..4 {
            let (s, t) = (rows[i * 64].to_bits(), rows[i * 64 + 1].to_bits());
            let want = block_mask(8, 8, 48, &mut SampleRng::new(s as u64, t as u64, i as u64));
            let want = Tensor::from_slice(&want).to_kind(Kind::Float);
            assert!(a.get(i as i64).equal(&want), "image {i}");
        }
        let other = Tensor::rand([4, 64], (Kind::Float, tch::Device::Cpu));
        let (_, c, _) = model.random_masking(&x, 0.75, Some(&other)).unwrap();
        assert!(!a.equal(&c));
    }

    #[test]
    fn encoder_mask_token_encodes_every_patch_and_flops_count_it() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = MaeConfig {
            encoder_mask_token: true,
            decoder_override: (Some(16), Some(1)),
            ..MaeConfig::default()
        };
        let model = mae_vit_tiny_patch4(&vs.root(), cfg);
        let keys = vs.variables();
        assert_eq!(keys["encoder_mask_token"].size(), [1, 1, 64]);
        assert_eq!(keys["decoder_embed.weight"].size(), [16, 64]);
        assert!(keys.contains_key("decoder_blocks.0.norm1.weight"));
        assert!(!keys.contains_key("decoder_blocks.1.norm1.weight"));
        let imgs = Tensor::rand([2, 3, 32, 32], (Kind::Float, tch::Device::Cpu));
        let (latent, mask, ids) = model.forward_encoder(&imgs, 0.75, None).unwrap();
        assert_eq!(latent.size(), [2, 65, 64]);
        assert_eq!(mask.sum(Kind::Float).double_value(&[]), 2. * 48.);
        assert!(ids
            .get(1)
            .equal(&Tensor::arange(64, (Kind::Int64, tch::Device::Cpu))));
        let (loss, pred, _) = model.forward(&imgs, 0.75).unwrap();
        assert_eq!(pred.size(), [2, 64, 48]);
        assert!(loss.double_value(&[]).is_finite());
        // the encoder with its mask token sees 65 tokens instead of 17
        let (enc_m, dec_m) = model.flops(0.75);
        let plain = mae_vit_tiny_patch4(
            &nn::VarStore::new(tch::Device::Cpu).root(),
            MaeConfig {
                decoder_override: (Some(16), Some(1)),
                ..MaeConfig::default()
            },
        );
        let (enc, dec) = plain.flops(0.75);
        // decoder_embed runs on the encoder's tokens: 65 against 17
        assert_eq!(dec_m - dec, 2. * (65. - 17.) * 64. * 16.);
        let block = |t: f64| 2. * t * 64. * (4. * 64. + 2. * 256.) + 4. * t * t * 64.;
        let embed = 2. * 64. * 48. * 64.;
        assert_eq!(enc, embed + 2. * block(17.));
        assert_eq!(enc_m, embed + 2. * block(65.));
    }
}
