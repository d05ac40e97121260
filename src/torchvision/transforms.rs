//! The torchvision transforms MAE composes (`Resize`, `CenterCrop`, `ToTensor`, `Normalize`),
//! on PIL-exact RGB images, giving the same float32 tensors as torchvision.
use super::pil::{self, Filter, PassOrder};
use image::RgbImage;
use tch::Tensor;

/// timm.data.constants.IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD.
pub const IMAGENET_DEFAULT_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_DEFAULT_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Python's `round()` (half to even), as torchvision's crop arithmetic uses it.
pub fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        (r - x.signum()) as i64
    } else {
        r as i64
    }
}

/// `transforms.Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`; unchanged when already that size.
pub fn resize(img: &RgbImage, size: u32, filter: Filter) -> RgbImage {
    resize_with(img, size, filter, PassOrder::Pillow12)
}

/// [`resize`] with the resampling of the Pillow `order` names.
pub fn resize_with(img: &RgbImage, size: u32, filter: Filter, order: PassOrder) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    let (nw, nh) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    if (nw, nh) == (w, h) {
        return img.clone();
    }
    pil::resize_with(img, nw, nh, filter, order)
}

/// `PIL.Image.crop((left, top, left + width, top + height))`; areas outside the image are black.
pub fn crop(img: &RgbImage, left: i64, top: i64, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = (left + x as i64, top + y as i64);
        if sx >= 0 && sy >= 0 && (sx as u32) < img.width() && (sy as u32) < img.height() {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// `transforms.CenterCrop(size)`: offsets rounded as torchvision does (`int(round(...))`);
/// an image smaller than the crop is zero-padded around, like torchvision.
pub fn center_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    if w < width as i64 || h < height as i64 {
        // torchvision pads (left/right = (cw - w) // 2, ...) then crops at the centre again.
        let (pl, pt) = (
            ((width as i64 - w).max(0)) / 2,
            ((height as i64 - h).max(0)) / 2,
        );
        let (pr, pb) = (
            (width as i64 - w + 1).max(0) / 2,
            (height as i64 - h + 1).max(0) / 2,
        );
        let padded = crop(img, -pl, -pt, (w + pl + pr) as u32, (h + pt + pb) as u32);
        return center_crop(&padded, width, height);
    }
    let top = round_half_even((h - height as i64) as f64 / 2.0);
    let left = round_half_even((w - width as i64) as f64 / 2.0);
    crop(img, left, top, width, height)
}

/// `transforms.RandomHorizontalFlip` once it decided to flip.
pub fn hflip(img: &RgbImage) -> RgbImage {
    image::imageops::flip_horizontal(img)
}

/// `ToTensor()` then `Normalize(mean, std)`: `[3, H, W]` float32, computed in float32 as
/// torchvision does (`x / 255`, then `(x - mean) / std`).
pub fn to_tensor_normalize(img: &RgbImage, mean: [f64; 3], std: [f64; 3]) -> Tensor {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    to_tensor_normalize_into(img.as_raw(), w, false, mean, std, &mut out);
    Tensor::from_slice(&out).view([3, h as i64, w as i64])
}

/// [`to_tensor_normalize`] of RGB rows `width` pixels wide, mirrored first when `flip`
/// (`RandomHorizontalFlip`), written into `out` (`[3, H, W]`). The same float32 operations,
/// looked up per byte value.
pub fn to_tensor_normalize_into(
    rgb: &[u8],
    width: usize,
    flip: bool,
    mean: [f64; 3],
    std: [f64; 3],
    out: &mut [f32],
) {
    let plane = rgb.len() / 3;
    assert_eq!(out.len(), 3 * plane, "output of 3 x {plane} floats");
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        let (m, s) = (mean[c] as f32, std[c] as f32);
        std::array::from_fn(|v| (v as f32 / 255.0 - m) / s)
    });
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let rows = rgb
        .chunks_exact(width * 3)
        .zip(r.chunks_exact_mut(width))
        .zip(g.chunks_exact_mut(width).zip(b.chunks_exact_mut(width)));
    for ((src, r), (g, b)) in rows {
        let dst = r.iter_mut().zip(g.iter_mut().zip(b.iter_mut()));
        let put = |(r, (g, b)): (&mut f32, (&mut f32, &mut f32)), p: &[u8]| {
            *r = lut[0][p[0] as usize];
            *g = lut[1][p[1] as usize];
            *b = lut[2][p[2] as usize];
        };
        if flip {
            dst.zip(src.chunks_exact(3).rev())
                .for_each(|(d, p)| put(d, p));
        } else {
            dst.zip(src.chunks_exact(3)).for_each(|(d, p)| put(d, p));
        }
    }
}

/// MAE's `util/datasets.build_transform(is_train=False)`: Resize(int(input_size / crop_pct),
/// bicubic) with crop_pct 224/256 up to 224 (1.0 above), CenterCrop(input_size), ToTensor,
/// Normalize(ImageNet mean/std).
pub fn eval_transform(img: &RgbImage, input_size: u32) -> Tensor {
    eval_transform_with(img, input_size, PassOrder::Pillow12)
}

/// [`eval_transform`] with the resampling of the Pillow `order` names.
pub fn eval_transform_with(img: &RgbImage, input_size: u32, order: PassOrder) -> Tensor {
    let crop_pct = if input_size <= 224 {
        224.0 / 256.0
    } else {
        1.0
    };
    let size = (input_size as f64 / crop_pct) as u32;
    let img = resize_with(img, size, Filter::Bicubic, order);
    let img = center_crop(&img, input_size, input_size);
    to_tensor_normalize(&img, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
}

/// Not in the reference (its pre-training uses none; the paper's Table 1(e) "crop + color jit"):
/// torchvision's `ColorJitter(brightness, contrast, saturation)` with hue 0 on a PIL image. The
/// three adjustments run in a random order (`torch.randperm(4)`, hue skipped), each with a
/// factor uniform in [max(0, 1 − v), 1 + v], by Pillow's `ImageEnhance` arithmetic: a blend of
/// the image with black (brightness), with its mean grey (contrast) or with its greyscale
/// (saturation), in float32, truncated and clipped to 0–255.
pub fn color_jitter(
    img: &RgbImage,
    (brightness, contrast, saturation): (f32, f32, f32),
    rng: &mut SampleRng,
) -> RgbImage {
    let mut order = [0usize, 1, 2, 3];
    for i in (1..4).rev() {
        order.swap(i, rng.randint(0, i as i64 + 1) as usize);
    }
    let mut factor = |v: f32| rng.uniform((1. - v).max(0.), 1. + v);
    let factors = [factor(brightness), factor(contrast), factor(saturation)];
    // ITU-R 601-2 luma as Pillow's convert("L")
    let luma = |p: &[u8]| {
        ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
    };
    let blend = |degenerate: u8, x: u8, alpha: f32| {
        let v = degenerate as f32 + alpha * (x as f32 - degenerate as f32);
        v.clamp(0., 255.) as u8
    };
    let mut out = img.clone();
    for op in order {
        match op {
            0 => out.iter_mut().for_each(|x| *x = blend(0, *x, factors[0])),
            1 => {
                let n = (out.width() * out.height()) as f64;
                let sum: f64 = out.as_raw().chunks_exact(3).map(|p| luma(p) as f64).sum();
                let mean = (sum / n + 0.5) as u8; // int(ImageStat mean + 0.5)
                out.iter_mut()
                    .for_each(|x| *x = blend(mean, *x, factors[1]));
            }
            2 => out.as_mut().chunks_exact_mut(3).for_each(|p| {
                let grey = luma(p);
                p.iter_mut().for_each(|x| *x = blend(grey, *x, factors[2]));
            }),
            _ => {} // hue: 0, not adjusted
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn color_jitter_blends_as_pillow() {
        let img = RgbImage::from_fn(4, 3, |x, y| {
            image::Rgb([(x * 60) as u8, (y * 100) as u8, 200])
        });
        // factors of 1 change nothing; the order and factors come from the generator
        assert!(color_jitter(&img, (0., 0., 0.), &mut SampleRng::new(0, 0, 0)) == img);
        let mut rng = SampleRng::new(1, 2, 3);
        let a = color_jitter(&img, (0.4, 0.4, 0.4), &mut rng);
        let b = color_jitter(&img, (0.4, 0.4, 0.4), &mut SampleRng::new(1, 2, 3));
        assert!(a == b && a != img);
        // a grey image keeps its saturation; brightness alone scales and truncates
        let grey = RgbImage::from_pixel(2, 2, image::Rgb([100, 100, 100]));
        let g = color_jitter(&grey, (0., 0., 0.9), &mut SampleRng::new(5, 0, 0));
        assert!(g == grey);
        let mut rng = SampleRng::new(7, 0, 0);
        let b = color_jitter(&grey, (0.5, 0., 0.), &mut rng);
        let mut rng = SampleRng::new(7, 0, 0);
        let mut order = [0usize, 1, 2, 3];
        for i in (1..4).rev() {
            order.swap(i, rng.randint(0, i as i64 + 1) as usize);
        }
        let f = rng.uniform(0.5, 1.5);
        assert_eq!(b.get_pixel(0, 0)[0], (100. * f).clamp(0., 255.) as u8);
    }

    #[test]
    fn python_round() {
        assert_eq!(
            [0.5, 1.5, 2.5, -0.5, 3.2, 3.7].map(round_half_even),
            [0, 2, 2, 0, 3, 4]
        );
    }

    #[test]
    fn resize_keeps_aspect_like_torchvision() {
        let img = RgbImage::new(451, 300);
        let out = resize(&img, 256, Filter::Bicubic);
        // int(256 * 451 / 300) = 384
        assert_eq!((out.width(), out.height()), (384, 256));
    }

    #[test]
    fn center_crop_offsets() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = center_crop(&img, 2, 2);
        // left = round(1.5) = 2, top = round(1.0) = 1
        assert_eq!(c.get_pixel(0, 0).0, [2, 1, 0]);
    }
}

// --------------------------------------------------------
// Random augmentation of MAE pre-training: RandomResizedCrop, RandomHorizontalFlip.

/// A small counter-based generator (splitmix64) giving each sample its own stream, seeded from
/// (seed, epoch, index): the augmentation of a sample does not depend on which thread draws it.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    pub fn new(seed: u64, epoch: u64, index: u64) -> Self {
        let mut r = SampleRng(seed);
        for v in [epoch, index] {
            r.0 = r.next_u64() ^ v;
        }
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `torch.empty(1).uniform_(lo, hi)` (float32).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        lo + (hi - lo) * u
    }

    /// `torch.randint(lo, hi, (1,))`: uniform in [lo, hi).
    pub fn randint(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }
}

/// `RandomResizedCrop.get_params(img, scale, ratio)` -> (top, left, height, width): ten attempts
/// at a box of a random area fraction in `scale` and log-uniform aspect ratio in `ratio` that
/// fits the image, else the central crop with the ratio clamped to `ratio`.
pub fn random_resized_crop_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SampleRng,
) -> (i64, i64, i64, i64) {
    let (width, height) = (width as i64, height as i64);
    let area = (height * width) as f64;
    let log_ratio = ((ratio.0 as f32).ln(), (ratio.1 as f32).ln());
    for _ in 0..10 {
        let target_area = area * rng.uniform(scale.0 as f32, scale.1 as f32) as f64;
        let aspect_ratio = rng.uniform(log_ratio.0, log_ratio.1).exp() as f64;
        let w = round_half_even((target_area * aspect_ratio).sqrt());
        let h = round_half_even((target_area / aspect_ratio).sqrt());
        if 0 < w && w <= width && 0 < h && h <= height {
            let i = rng.randint(0, height - h + 1);
            let j = rng.randint(0, width - w + 1);
            return (i, j, h, w);
        }
    }
    // Fallback to central crop
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0.min(ratio.1) {
        (width, round_half_even(width as f64 / ratio.0.min(ratio.1)))
    } else if in_ratio > ratio.0.max(ratio.1) {
        (
            round_half_even(height as f64 * ratio.0.max(ratio.1)),
            height,
        )
    } else {
        (width, height) // whole image
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// `F.resized_crop(img, top, left, height, width, [size, size], interpolation)` on a PIL image:
/// `img.crop(box)` then `resize((size, size))`.
pub fn resized_crop(
    img: &RgbImage,
    top: i64,
    left: i64,
    height: i64,
    width: i64,
    size: u32,
    filter: Filter,
) -> RgbImage {
    let inside = top >= 0
        && left >= 0
        && top + height <= img.height() as i64
        && left + width <= img.width() as i64;
    let data = if inside {
        let b = (left as usize, top as usize, width as usize, height as usize);
        pil::resize_box(
            img,
            b,
            size as usize,
            size as usize,
            filter,
            PassOrder::Pillow12,
        )
    } else {
        let c = crop(img, left, top, width as u32, height as u32);
        return pil::resize(&c, size, size, filter);
    };
    RgbImage::from_raw(size, size, data).expect("size*size*3 bytes")
}

/// main_pretrain.py's `transform_train`: RandomResizedCrop(input_size, scale=(0.2, 1.0),
/// interpolation=3 (bicubic)), RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet).
pub fn pretrain_transform(img: &RgbImage, input_size: u32, rng: &mut SampleRng) -> Tensor {
    let (i, j, h, w) = pretrain_crop_params(img.width(), img.height(), rng);
    crop_flip_normalize(img, (i, j, h, w), input_size, rng)
}

/// The box of main_pretrain.py's RandomResizedCrop: scale (0.2, 1.0), ratio (3/4, 4/3).
pub fn pretrain_crop_params(width: u32, height: u32, rng: &mut SampleRng) -> (i64, i64, i64, i64) {
    random_resized_crop_params(width, height, (0.2, 1.0), (3. / 4., 4. / 3.), rng)
}

/// The tail of the RandomResizedCrop training transforms (pre-training and linear probing): the
/// box (top, left, height, width) resized to `size` (bicubic), RandomHorizontalFlip(),
/// ToTensor(), Normalize(ImageNet).
pub fn crop_flip_normalize(
    img: &RgbImage,
    bx: (i64, i64, i64, i64),
    size: u32,
    rng: &mut SampleRng,
) -> Tensor {
    let s = size as usize;
    let mut out = vec![0f32; 3 * s * s];
    crop_flip_normalize_into(img, bx, size, rng, &mut out);
    Tensor::from_slice(&out).view([3, s as i64, s as i64])
}

/// [`crop_flip_normalize`] written into `out` (`[3, size, size]`, e.g. a slice of the batch).
pub fn crop_flip_normalize_into(
    img: &RgbImage,
    (i, j, h, w): (i64, i64, i64, i64),
    size: u32,
    rng: &mut SampleRng,
    out: &mut [f32],
) {
    let resized = resized_crop(img, i, j, h, w, size, Filter::Bicubic);
    let flip = rng.uniform(0., 1.) < 0.5;
    let (mean, std) = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD);
    to_tensor_normalize_into(resized.as_raw(), size as usize, flip, mean, std, out);
}
