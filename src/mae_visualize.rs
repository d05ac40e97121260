//! Port of demo/mae_visualize.ipynb: an MAE checkpoint reconstructs images from 25% of their
//! patches; each image becomes a row of four panels ("original", "masked", "reconstruction",
//! "reconstruction + visible") in one PNG, computed with the demo's arithmetic.

use crate::cli::font;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use image::{Rgb, RgbImage};
use tch::{nn, Device, Kind, Tensor};

use crate::cli::device;
use crate::interop::detect::{self, detect_model};
use crate::interop::hub;
use crate::models_mae::{self, MaeConfig, MaskSampling, MaskedAutoencoderViT};
use crate::torch::amp::{self, Precision};
use crate::torch::serialization;
use crate::torchvision::datasets::{pil_loader, FashionMNIST, FASHION_MNIST_ROOT};
use crate::torchvision::pil::{self, Filter, PassOrder};

/// Where `mae visualize --image …` looks when no `--checkpoint` is given (relative to the working
/// directory, then to this repository).
pub const DEFAULT_CHECKPOINT: &str = "weights/mae_visualize_vit_large.pth";
/// With no `--image`: the MAE pre-trained here on Fashion-MNIST (weights/README.md) shows its
/// reconstructions of Fashion-MNIST *test* images, which it never saw in training.
pub const FASHION_MNIST_CHECKPOINT: &str = "weights/mae_pretrain_fmnist_mini_patch4.pth";
/// How many Fashion-MNIST test images (the first ones, in file order) the default run shows.
const FASHION_MNIST_IMAGES: usize = 6;
const DEFAULT_URL: &str =
    "https://dl.fbaipublicfiles.com/mae/visualize/mae_visualize_vit_large.pth";

#[derive(clap::Args, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub struct Args {
    /// MAE checkpoint with its decoder, e.g. mae_visualize_vit_large.pth [default: weights/mae_visualize_vit_large.pth]
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// MAE model name (mae_vit_large_patch16, ...) [default: detected from the checkpoint]
    #[arg(long)]
    pub model: Option<String>,
    /// Image to reconstruct (repeat the flag or list several): one row each [default: the first
    /// Fashion-MNIST test images, with weights/mae_pretrain_fmnist_mini_patch4.pth]
    #[arg(long = "image", num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// torch.manual_seed before the forward passes: picks the masked patches (the demo uses 2)
    #[arg(long, default_value_t = 2)]
    pub seed: i64,
    /// Fraction of patches removed
    #[arg(long, default_value_t = 0.75)]
    pub mask_ratio: f64,
    /// Output PNG
    #[arg(long, default_value = "mae_visualize.png")]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N [default: cuda when available]; the masks are drawn on the CPU either way
    #[arg(long)]
    pub device: Option<String>,
    /// Also write the model inputs (imgs), masks (mask [N, L]), predictions (pred [N, L, p*p*3]) and
    /// reconstructions (reconstruction [N, 3, H, W]) to this safetensors file
    #[arg(long)]
    pub save_tensors: Option<PathBuf>,
    /// Resize as Pillow 12 (horizontal pass first) or 13
    #[arg(long, default_value = "12")]
    pub pillow: PassOrder,
    /// Autocast dtype of the forward: fp32, bf16 or fp16 (CUDA only) [default: fp32 on the CPU,
    /// fp16 on CUDA, as the official torch.cuda.amp]
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Not in the demo: which patches are masked (random, block or grid; as `mae pretrain`)
    #[arg(long, value_enum, default_value_t = MaskSampling::Random)]
    pub mask_sampling: MaskSampling,
}

/// The demo's `imagenet_mean` / `imagenet_std` (float64 numpy arrays).
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

pub const TITLES: [&str; 4] = [
    "original",
    "masked",
    "reconstruction",
    "reconstruction + visible",
];

impl Args {
    /// `--mask_ratio` in [0, 1), before anything is loaded.
    pub fn validate(&self) -> Result<()> {
        crate::cli::arg_check::in_range("mask_ratio", self.mask_ratio, 0., 1., false)
    }
}

pub fn main(args: Args) -> Result<()> {
    args.validate()?;
    let device = device(args.device.as_deref())?;
    let precision = Precision::for_device(args.precision, device)?;
    let fashion_mnist = args.images.is_empty();
    let default = if fashion_mnist {
        FASHION_MNIST_CHECKPOINT
    } else {
        DEFAULT_CHECKPOINT
    };
    let path = match &args.checkpoint {
        Some(p) => p.clone(),
        None => match find_default(default) {
            Some(p) => p,
            None if fashion_mnist => bail!(
                "{FASHION_MNIST_CHECKPOINT} is missing (it ships with this repository): pass \
                 --checkpoint PATH and --image FILE…"
            ),
            None => bail!(
                "no --checkpoint given and {DEFAULT_CHECKPOINT} does not exist: download the demo's \
                 checkpoint {DEFAULT_URL} into weights/ (weights/README.md lists the official \
                 checkpoints) or pass --checkpoint PATH"
            ),
        },
    };
    let (_vs, mut model) = prepare_model(&path, args.model.as_deref(), device)?;
    model.mask_sampling = args.mask_sampling;
    let size = model.patch_embed.img_size;
    let images: Vec<(String, Tensor)> = if fashion_mnist {
        let root = Path::new(FASHION_MNIST_ROOT);
        let test = FashionMNIST::new(root, false)?;
        (0..FASHION_MNIST_IMAGES.min(test.len()))
            .map(|i| {
                let name = format!("Fashion-MNIST test image {i}");
                (name, prepare_image(&test.rgb(i), size, args.pillow))
            })
            .collect()
    } else {
        let load = |p: &PathBuf| Ok((p.display().to_string(), load_image(p, size, args.pillow)?));
        args.images.iter().map(load).collect::<Result<_>>()?
    };

    let mut rows = Vec::new();
    let mut saved: [Vec<Tensor>; 4] = Default::default();
    // as `torch.manual_seed(2)` then `run_one_image(img, model)` for each image
    tch::manual_seed(args.seed);
    for (name, img) in &images {
        let out = run_one_image(img, &model, args.mask_ratio, precision)?;
        println!("{name}: loss {:.4}", out.loss);
        rows.push(out.panels);
        for (v, t) in saved.iter_mut().zip(out.tensors) {
            v.push(t);
        }
    }

    let png = render(&rows, model.patch_embed.img_size as u32);
    png.save(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("saved {}", args.out.display());
    if let Some(path) = &args.save_tensors {
        let names = ["imgs", "mask", "pred", "reconstruction"];
        let tensors: Vec<(String, Tensor)> = names
            .iter()
            .zip(&saved)
            .map(|(n, v)| (n.to_string(), Tensor::cat(v, 0)))
            .collect();
        serialization::save_safetensors(path, &tensors)?;
        println!("saved {}", path.display());
    }
    Ok(())
}

/// `rel` under the working directory, else under this repository (where `weights/` ships).
fn find_default(rel: &str) -> Option<PathBuf> {
    [
        PathBuf::from(rel),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// `prepare_model(chkpt_dir, arch)`: builds the model named `arch` (detected from the checkpoint
/// when not given) and loads the checkpoint. Unlike the demo's `strict=False`, every key must
/// match: a checkpoint without the decoder cannot reconstruct anything.
pub fn prepare_model(
    path: &Path,
    arch: Option<&str>,
    device: Device,
) -> Result<(nn::VarStore, MaskedAutoencoderViT)> {
    let sd = hub::load(path, true)?.sd; // the model keeps it: no copy
    let mut cfg = MaeConfig::default();
    let arch = match (arch, detect_model(&sd)) {
        (Some(a), _) => a.to_string(),
        (None, Ok((det, name))) => {
            ensure!(
                det.kind == detect::Kind::MaePretrain,
                "{}: {}; visualizing needs an MAE checkpoint with its decoder, such as {DEFAULT_URL}",
                path.display(),
                det.describe()
            );
            cfg.img_size = det.img_size;
            name
        }
        (None, Err(e)) => bail!(
            "{}: cannot tell the model ({e:#}); pass --model",
            path.display()
        ),
    };
    // Not in the reference: what `mae pretrain --decoder_depth / --decoder_embed_dim /
    // --encoder_mask_token` built, read off the checkpoint
    if let Ok((det, _)) = detect_model(&sd) {
        cfg.decoder_override = (det.decoder_embed_dim, det.decoder_depth);
    }
    cfg.encoder_mask_token = sd.iter().any(|(k, _)| k == "encoder_mask_token");
    let mut vs = nn::VarStore::new(device);
    cfg.init = false; // no random init: load_checkpoint (strict) overwrites every parameter
    let model = models_mae::build(&arch, &vs.root(), cfg)?;
    model
        .load_checkpoint(&mut vs, sd)
        .with_context(|| format!("loading {} into {arch}", path.display()))?;
    println!("{}: {arch}", path.display());
    Ok((vs, model))
}

/// The demo's "Load an image": `img.resize((224, 224))` (Pillow's default filter, bicubic) at the
/// model's input size, `np.array(img) / 255.`, minus mean, over std, in float64. Returns
/// [1, H, W, 3] float64 (nhwc, as the demo's `img`).
pub fn load_image(path: &Path, size: i64, order: PassOrder) -> Result<Tensor> {
    Ok(prepare_image(&pil_loader(path)?, size, order))
}

/// [`load_image`] on a decoded image.
pub fn prepare_image(img: &RgbImage, size: i64, order: PassOrder) -> Tensor {
    let s = size as u32;
    let img = pil::resize_with(img, s, s, Filter::Bicubic, order);
    let x: Vec<f64> = img
        .as_raw()
        .chunks_exact(3)
        .flat_map(|p| {
            (0..3).map(move |c| (p[c] as f64 / 255. - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        })
        .collect();
    Tensor::from_slice(&x).view([1, size, size, 3])
}

/// What `run_one_image` shows and what `--save_tensors` keeps of one image.
pub struct OneImage {
    pub loss: f64,
    /// the four panels, [H, W, 3] u8 each, in `TITLES` order
    pub panels: [RgbImage; 4],
    /// imgs [1, 3, H, W], mask [1, L], pred [1, L, p*p*3], reconstruction [1, 3, H, W] (CPU)
    pub tensors: [Tensor; 4],
}

/// `run_one_image(img, model)`: the forward draws its masking noise like the official one,
/// `torch.rand(N, L)` on the CPU generator (passed in explicitly when the model is on a GPU).
/// Only the forward runs under `precision`'s autocast; its prediction comes back as float32.
pub fn run_one_image(
    img: &Tensor,
    model: &MaskedAutoencoderViT,
    mask_ratio: f64,
    precision: Precision,
) -> Result<OneImage> {
    let device = model.pos_embed.device();
    let x = img.permute([0, 3, 1, 2]); // nhwc->nchw, float64
    let noise = device.is_cuda().then(|| {
        let l = model.patch_embed.num_patches;
        Tensor::rand([x.size()[0], l], (Kind::Float, Device::Cpu))
    });

    // run MAE
    let xf = x.to_kind(Kind::Float);
    let (loss, pred, mask) = tch::no_grad(|| {
        let _amp = amp::autocast(device, precision);
        model.forward_with_noise(&xf.to_device(device), mask_ratio, noise.as_ref())
    })?;
    let pred = pred.to_kind(Kind::Float).to_device(Device::Cpu);
    let mask = mask.to_device(Device::Cpu);
    let y = model.unpatchify(&pred)?;
    let y_nhwc = y.permute([0, 2, 3, 1]);

    // visualize the mask
    let p = model.patch_embed.patch_size;
    let m = mask.unsqueeze(-1).repeat([1, 1, p * p * 3]); // (N, H*W, p*p*3)
    let m = model.unpatchify(&m)?.permute([0, 2, 3, 1]); // 1 is removing, 0 is keeping

    // masked image (float64, as x)
    let keep = 1. - &m;
    let im_masked = img * &keep;

    // MAE reconstruction pasted with visible patches
    let im_paste = &im_masked + (&y_nhwc * &m).to_kind(Kind::Double);

    let panels = [img, &im_masked, &y_nhwc, &im_paste].map(|t| show_image(&t.get(0)));
    Ok(OneImage {
        loss: loss.double_value(&[]),
        panels,
        tensors: [xf, mask, pred, y],
    })
}

/// `show_image`'s pixels: `torch.clip((image * imagenet_std + imagenet_mean) * 255, 0, 255).int()`
/// in float64 (the demo's mean/std are float64 arrays), truncated toward zero.
fn show_image(image: &Tensor) -> RgbImage {
    let (h, w, c) = image.size3().expect("[H, W, 3]");
    assert_eq!(c, 3, "image is [H, W, 3]");
    let v = Vec::<f64>::try_from(image.to_kind(Kind::Double).contiguous().view([-1]))
        .expect("float64 pixels");
    let px: Vec<u8> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            ((x * IMAGENET_STD[i % 3] + IMAGENET_MEAN[i % 3]) * 255.).clamp(0., 255.) as u8
        })
        .collect();
    RgbImage::from_raw(w as u32, h as u32, px).expect("h*w*3 pixels")
}

/// Where things go in the PNG: one row per image, a title above each of the four panels; small
/// inputs are scaled up (nearest neighbour) to at least 224 pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    pub img_size: u32,
    /// integer up-scaling of the panels
    pub zoom: u32,
    pub font_scale: u32,
    pub col_w: u32,
    pub title_h: u32,
    pub row_h: u32,
}

impl Layout {
    pub fn new(img_size: u32) -> Self {
        let zoom = 224u32.div_ceil(img_size).max(1);
        let font_scale = 2;
        let widest = TITLES
            .iter()
            .map(|t| font::text_width(t, font_scale))
            .max()
            .unwrap_or(0);
        let title_h = font::GLYPH_H * font_scale + 16;
        Layout {
            img_size,
            zoom,
            font_scale,
            col_w: (img_size * zoom).max(widest) + 24,
            title_h,
            row_h: title_h + img_size * zoom + 12,
        }
    }

    /// (width, height) of the PNG for `rows` images.
    pub fn size(&self, rows: u32) -> (u32, u32) {
        (4 * self.col_w, rows * self.row_h)
    }

    /// Top-left pixel of panel `col` of row `row`.
    pub fn panel_origin(&self, row: u32, col: u32) -> (u32, u32) {
        let x = col * self.col_w + (self.col_w - self.img_size * self.zoom) / 2;
        (x, row * self.row_h + self.title_h)
    }
}

/// The demo's figure as one image: `plt.subplot(1, 4, i)` with `plt.title(...)`, per row.
pub fn render(rows: &[[RgbImage; 4]], img_size: u32) -> RgbImage {
    let layout = Layout::new(img_size);
    let (w, h) = layout.size(rows.len() as u32);
    let mut out = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for (r, panels) in rows.iter().enumerate() {
        for (c, panel) in panels.iter().enumerate() {
            let (x0, y0) = layout.panel_origin(r as u32, c as u32);
            let z = layout.zoom;
            for (x, y, px) in panel.enumerate_pixels() {
                for dy in 0..z {
                    for dx in 0..z {
                        out.put_pixel(x0 + x * z + dx, y0 + y * z + dy, *px);
                    }
                }
            }
            let title = TITLES[c];
            let tw = font::text_width(title, layout.font_scale);
            let tx = c as u32 * layout.col_w + (layout.col_w - tw) / 2;
            let ty = r as u32 * layout.row_h + 8;
            font::draw_text(&mut out, title, tx, ty, layout.font_scale, Rgb([0, 0, 0]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_fits_titles_and_panels() {
        for size in [32u32, 224, 448] {
            let l = Layout::new(size);
            assert!(size * l.zoom >= 224);
            let (w, h) = l.size(2);
            let (x, y) = l.panel_origin(1, 3);
            assert!(x + size * l.zoom <= w && y + size * l.zoom <= h);
            assert!(font::text_width(TITLES[3], l.font_scale) < l.col_w);
        }
    }

    #[test]
    fn show_image_unnormalises_and_truncates() {
        // 0 (a masked pixel) is the mean colour: trunc(0.485 * 255) = 123, ...
        let img = Tensor::zeros([1, 1, 3], (Kind::Double, Device::Cpu));
        assert_eq!(show_image(&img).get_pixel(0, 0).0, [123, 116, 103]);
        let img = Tensor::from_slice(&[100f64, -100., 0.]).view([1, 1, 3]);
        assert_eq!(show_image(&img).get_pixel(0, 0).0, [255, 0, 103]);
    }
}
