//! timm/data/auto_augment.py (timm 0.3.2, as pinned by MAE): `RandAugment` with the config
//! `rand-m9-mstd0.5-inc1` (two ops drawn uniformly from the increasing-severity set, each
//! applied with probability 0.5 at magnitude N(9, 0.5) clipped to [0, 10]), on Pillow-exact
//! re-implementations of the PIL operations (ImageOps, ImageEnhance, affine transforms with
//! bicubic resampling and the ImageNet mean as fill colour).

use anyhow::{bail, Result};
use image::RgbImage;

use crate::torchvision::transforms::SampleRng;

const MAX_LEVEL: f64 = 10.;

/// `_RAND_INCREASING_TRANSFORMS`.
pub const RAND_INCREASING_TRANSFORMS: [&str; 15] = [
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
];

/// `random.random()`.
fn random(rng: &mut SampleRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `random.gauss(mu, sigma)` (Box-Muller).
fn gauss(rng: &mut SampleRng, mu: f64, sigma: f64) -> f64 {
    let (u1, u2) = (1. - random(rng), random(rng));
    mu + sigma * (-2. * u1.ln()).sqrt() * (2. * std::f64::consts::PI * u2).cos()
}

/// With 50% prob, negate the value.
fn randomly_negate(v: f64, rng: &mut SampleRng) -> f64 {
    if random(rng) > 0.5 {
        -v
    } else {
        v
    }
}

/// `LEVEL_TO_ARG[name](magnitude, hparams)`: the op's argument at `magnitude` (signed ops draw
/// their sign from `rng`). `None` for the ops without an argument.
pub fn level_to_arg(name: &str, level: f64, rng: &mut SampleRng) -> Option<f64> {
    let l = level / MAX_LEVEL;
    Some(match name {
        "AutoContrast" | "Equalize" | "Invert" => return None,
        "Rotate" => randomly_negate(l * 30., rng),
        "PosterizeIncreasing" => 4. - (l * 4.).trunc(),
        "SolarizeIncreasing" => 256. - (l * 256.).trunc(),
        "SolarizeAdd" => (l * 110.).trunc(),
        "ColorIncreasing"
        | "ContrastIncreasing"
        | "BrightnessIncreasing"
        | "SharpnessIncreasing" => 1.0 + randomly_negate(l * 0.9, rng),
        "ShearX" | "ShearY" => randomly_negate(l * 0.3, rng),
        "TranslateXRel" | "TranslateYRel" => randomly_negate(l * 0.45, rng),
        _ => unreachable!("unknown op {name}"),
    })
}

/// `NAME_TO_OP[name](img, *level_args, fillcolor=fill, resample=BICUBIC)`.
pub fn apply_op(img: &RgbImage, name: &str, arg: Option<f64>, fill: [u8; 3]) -> RgbImage {
    let a = arg.unwrap_or(0.);
    let (w, h) = (img.width() as f64, img.height() as f64);
    match name {
        "AutoContrast" => autocontrast(img),
        "Equalize" => equalize(img),
        "Invert" => point(img, |v| 255 - v),
        "Rotate" => rotate(img, a, fill),
        "PosterizeIncreasing" => {
            let bits = a as u32;
            if bits >= 8 {
                return img.clone();
            }
            let mask = !((1u32 << (8 - bits)) - 1) as u8;
            point(img, |v| v & mask)
        }
        "SolarizeIncreasing" => point(img, |v| if (v as f64) < a { v } else { 255 - v }),
        "SolarizeAdd" => point(img, |v| {
            if v < 128 {
                (v as f64 + a).min(255.) as u8
            } else {
                v
            }
        }),
        "ColorIncreasing" => blend(&grey(img), img, a),
        "ContrastIncreasing" => {
            let g = grey(img);
            let n = (img.width() * img.height()) as f64;
            let mean = g.pixels().map(|p| p.0[0] as f64).sum::<f64>() / n;
            let m = (mean + 0.5) as u8;
            blend(
                &RgbImage::from_pixel(img.width(), img.height(), image::Rgb([m; 3])),
                img,
                a,
            )
        }
        "BrightnessIncreasing" => blend(&RgbImage::new(img.width(), img.height()), img, a),
        "SharpnessIncreasing" => blend(&smooth(img), img, a),
        "ShearX" => affine(img, [1., a, 0., 0., 1., 0.], fill),
        "ShearY" => affine(img, [1., 0., 0., a, 1., 0.], fill),
        "TranslateXRel" => affine(img, [1., 0., a * w, 0., 1., 0.], fill),
        "TranslateYRel" => affine(img, [1., 0., 0., 0., 1., a * h], fill),
        _ => unreachable!("unknown op {name}"),
    }
}

/// `img.point(lut)` with the same table for the three bands.
fn point(img: &RgbImage, f: impl Fn(u8) -> u8) -> RgbImage {
    let lut: Vec<u8> = (0..=255u8).map(f).collect();
    let mut out = img.clone();
    out.iter_mut().for_each(|v| *v = lut[*v as usize]);
    out
}

/// Per-band lookup tables.
fn point_bands(img: &RgbImage, luts: &[Vec<u8>; 3]) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for b in 0..3 {
            p.0[b] = luts[b][p.0[b] as usize];
        }
    }
    out
}

fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for p in img.pixels() {
        for b in 0..3 {
            h[b][p.0[b] as usize] += 1;
        }
    }
    h
}

/// `ImageOps.autocontrast(img)` (cutoff 0): each band stretched to 0..255.
fn autocontrast(img: &RgbImage) -> RgbImage {
    let luts = histograms(img).map(|h| {
        let lo = h.iter().position(|&c| c > 0).unwrap_or(0);
        let hi = h.iter().rposition(|&c| c > 0).unwrap_or(255);
        if hi <= lo {
            return (0..=255u8).collect();
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        (0..256)
            .map(|ix| ((ix as f64 * scale + offset) as i64).clamp(0, 255) as u8)
            .collect()
    });
    point_bands(img, &luts)
}

/// `ImageOps.equalize(img)`.
fn equalize(img: &RgbImage) -> RgbImage {
    let luts = histograms(img).map(|h| {
        let histo: Vec<u64> = h.iter().copied().filter(|&c| c > 0).collect();
        if histo.len() <= 1 {
            return (0..=255u8).collect();
        }
        // Pillow >= 9.1 divides by 255 (older Pillow by 256)
        let step = (histo.iter().sum::<u64>() - histo[histo.len() - 1]) / 255;
        if step == 0 {
            return (0..=255u8).collect();
        }
        let mut n = step / 2;
        (0..256)
            .map(|i| {
                let v = (n / step).min(255) as u8;
                n += h[i];
                v
            })
            .collect()
    });
    point_bands(img, &luts)
}

/// `img.convert("L").convert("RGB")`: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
fn grey(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let [r, g, b] = p.0.map(u32::from);
        let l = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8;
        p.0 = [l; 3];
    }
    out
}

/// `Image.blend(im1, im2, alpha)`: im1 + alpha (im2 - im1) in float32, truncated (clipped when
/// extrapolating) — the `degenerate` / `image` blend of ImageEnhance.
fn blend(im1: &RgbImage, im2: &RgbImage, alpha: f64) -> RgbImage {
    let alpha = alpha as f32;
    let mut out = im1.clone();
    for (o, &b) in out.iter_mut().zip(im2.iter()) {
        let t = *o as f32 + alpha * (b as f32 - *o as f32);
        *o = if (0.0..=1.0).contains(&alpha) {
            t as u8
        } else if t <= 0. {
            0
        } else if t >= 255. {
            255
        } else {
            t as u8
        };
    }
    out
}

/// `img.filter(ImageFilter.SMOOTH)`: 3×3 kernel [1 1 1; 1 5 1; 1 1 1] / 13, border pixels kept.
fn smooth(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut out = img.clone();
    if w < 3 || h < 3 {
        return out;
    }
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for b in 0..3 {
                let mut s = 0f32;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let k = if dx == 0 && dy == 0 { 5. } else { 1. };
                        s += k * img.get_pixel((x + dx) as u32, (y + dy) as u32).0[b] as f32;
                    }
                }
                let v = s / 13. + 0.5;
                out.get_pixel_mut(x as u32, y as u32).0[b] = v.clamp(0., 255.) as u8;
            }
        }
    }
    out
}

/// `img.rotate(degrees, resample=BICUBIC, fillcolor=fill)` about the centre, same size.
fn rotate(img: &RgbImage, degrees: f64, fill: [u8; 3]) -> RgbImage {
    let angle = degrees.rem_euclid(360.0);
    if angle == 0. {
        return img.clone();
    }
    let (cx, cy) = (img.width() as f64 / 2., img.height() as f64 / 2.);
    let t = -angle.to_radians();
    let r15 = |v: f64| (v * 1e15).round() / 1e15;
    let (c, s) = (r15(t.cos()), r15(t.sin()));
    let mut m = [c, s, 0., -s, c, 0.];
    m[2] = m[0] * -cx + m[1] * -cy + cx;
    m[5] = m[3] * -cx + m[4] * -cy + cy;
    affine(img, m, fill)
}

/// `img.transform(img.size, Image.AFFINE, m, resample=BICUBIC, fillcolor=fill)`: output pixel
/// (x, y) samples the input at (m0 (x+½) + m1 (y+½) + m2, m3 (x+½) + m4 (y+½) + m5) with Pillow's
/// transform bicubic (Geometry.c); outside the input it is `fill`.
fn affine(img: &RgbImage, m: [f64; 6], fill: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let mut out = RgbImage::from_pixel(img.width(), img.height(), image::Rgb(fill));
    let px = |x: i64, y: i64, b: usize| img.get_pixel(x as u32, y as u32).0[b] as f64;
    let cubic = |v1: f64, v2: f64, v3: f64, v4: f64, d: f64| {
        let p1 = v2;
        let p2 = -v1 + v3;
        let p3 = 2. * (v1 - v2) + v3 - v4;
        let p4 = -v1 + v2 - v3 + v4;
        p1 + d * (p2 + d * (p3 + d * p4))
    };
    for yo in 0..h {
        for xo in 0..w {
            let (xf, yf) = (xo as f64 + 0.5, yo as f64 + 0.5);
            let mut xin = m[0] * xf + m[1] * yf + m[2];
            let mut yin = m[3] * xf + m[4] * yf + m[5];
            if xin < 0. || xin >= w as f64 || yin < 0. || yin >= h as f64 {
                continue;
            }
            xin -= 0.5;
            yin -= 0.5;
            let (x, y) = (xin.floor() as i64, yin.floor() as i64);
            let (dx, dy) = (xin - x as f64, yin - y as f64);
            let (x, y) = (x - 1, y - 1);
            let xs = [0, 1, 2, 3].map(|k| (x + k).clamp(0, w - 1));
            let p = out.get_pixel_mut(xo as u32, yo as u32);
            for b in 0..3 {
                let row = |yy: i64| {
                    cubic(
                        px(xs[0], yy, b),
                        px(xs[1], yy, b),
                        px(xs[2], yy, b),
                        px(xs[3], yy, b),
                        dx,
                    )
                };
                let v1 = row(y.clamp(0, h - 1));
                let v2 = if (0..h).contains(&(y + 1)) {
                    row(y + 1)
                } else {
                    v1
                };
                let v3 = if (0..h).contains(&(y + 2)) {
                    row(y + 2)
                } else {
                    v2
                };
                let v4 = if (0..h).contains(&(y + 3)) {
                    row(y + 3)
                } else {
                    v3
                };
                let v = cubic(v1, v2, v3, v4, dy);
                p.0[b] = if v <= 0. {
                    0
                } else if v >= 255. {
                    255
                } else {
                    v as u8
                };
            }
        }
    }
    out
}

/// `rand_augment_transform(config_str, hparams)` → `RandAugment(ops, num_layers)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RandAugment {
    pub ops: Vec<&'static str>,
    pub num_layers: usize,
    pub magnitude: f64,
    pub magnitude_std: f64,
    pub prob: f64,
    /// `hparams['img_mean']`: the fill colour of the geometric ops
    pub fill: [u8; 3],
}

impl RandAugment {
    /// Parses `rand-m9-mstd0.5-inc1`-style configs (keys m, n, mstd, inc; no weights `w`).
    pub fn from_config(config_str: &str, mean: [f64; 3]) -> Result<Self> {
        let mut parts = config_str.split('-');
        if parts.next() != Some("rand") {
            bail!("--aa {config_str}: only RandAugment ('rand-…') is ported");
        }
        let (mut magnitude, mut num_layers, mut std, mut inc) = (10., 2usize, 0., false);
        for c in parts {
            let split = c
                .find(|ch: char| ch.is_ascii_digit() || ch == '.')
                .unwrap_or(c.len());
            let (key, val) = c.split_at(split);
            let bad = || anyhow::anyhow!("--aa {config_str}: bad value in '{c}'");
            match key {
                "mstd" => std = val.parse().map_err(|_| bad())?,
                "m" => magnitude = val.parse().map_err(|_| bad())?,
                "n" => num_layers = val.parse().map_err(|_| bad())?,
                "inc" => inc = val.parse::<i64>().map_err(|_| bad())? != 0,
                _ => bail!("--aa {config_str}: unknown RandAugment config section '{c}'"),
            }
        }
        if !inc {
            bail!("--aa {config_str}: only the increasing-severity set (inc1) is ported");
        }
        Ok(RandAugment {
            ops: RAND_INCREASING_TRANSFORMS.to_vec(),
            num_layers,
            magnitude,
            magnitude_std: std,
            prob: 0.5,
            fill: mean.map(|x| (255. * x).round().min(255.) as u8),
        })
    }

    /// `AugmentOp.__call__`: with probability `prob`, the op at a magnitude drawn around
    /// `magnitude` (std `magnitude_std`), clipped to [0, 10].
    pub fn apply_one(&self, img: &RgbImage, name: &str, rng: &mut SampleRng) -> RgbImage {
        if self.prob < 1.0 && random(rng) > self.prob {
            return img.clone();
        }
        let mut magnitude = self.magnitude;
        if self.magnitude_std == f64::INFINITY {
            magnitude *= random(rng);
        } else if self.magnitude_std > 0. {
            magnitude = gauss(rng, magnitude, self.magnitude_std);
        }
        let magnitude = magnitude.clamp(0., MAX_LEVEL);
        let arg = level_to_arg(name, magnitude, rng);
        apply_op(img, name, arg, self.fill)
    }

    /// `np.random.choice(self.ops, self.num_layers, replace=True)`, applied in turn.
    pub fn call(&self, img: &RgbImage, rng: &mut SampleRng) -> RgbImage {
        let mut img = img.clone();
        for _ in 0..self.num_layers {
            let op = self.ops[rng.randint(0, self.ops.len() as i64) as usize];
            img = self.apply_one(&img, op, rng);
        }
        img
    }
}
