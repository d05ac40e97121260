//! Pillow's resampling (`Image.resize`), bit-exact for 8-bit RGB images.
//!
//! torchvision's `Resize`/`RandomResizedCrop` on PIL images and the official demo's
//! `img.resize((224, 224))` all end in Pillow's `ImagingResample` (src/libImaging/Resample.c):
//! a separable convolution, horizontal pass then vertical pass (Pillow ≥ 13 sometimes runs the
//! vertical pass first: [`PassOrder`]), whose support widens with the downscale factor
//! (antialiasing), with coefficients rounded to 22-bit fixed point. Ported here step for step so
//! the pixels are identical, not merely close.
use image::RgbImage;

/// Pillow's resampling filters (`Image.Resampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR`: triangle filter, support 1.
    Bilinear,
    /// `Image.BICUBIC`: cubic convolution with a = -0.5, support 2 (Pillow's default for resize).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, number of taps, and fixed-point weights (`ksize` each).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the span [in0, in1) of an axis of
/// `in_size` pixels resampled to `out_size`.
fn precompute_coeffs(
    in_size: usize,
    in0: f64,
    in1: f64,
    out_size: usize,
    filter: Filter,
) -> Coeffs {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero; the clamp to 0 makes the sign moot.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64)
            .min(in_size as i64)
            .max(xmin as i64) as usize
            - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Horizontal pass over rows `first..first + rows` of an RGB buffer `stride` pixels wide, from
/// column `x0` on (`c.bounds` index columns from `x0`).
fn resample_horizontal(
    src: &[u8],
    stride: usize,
    x0: usize,
    first: usize,
    rows: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; rows * out_w * 3];
    // Each row copied as RGBX (Pillow's own layout), zero-padded by a kernel's width: every
    // output pixel then sums `ksize` taps of four lanes (the weights past its `n` taps are 0,
    // and integer sums do not depend on their order, so the pixels are Pillow's).
    let span = c
        .bounds
        .iter()
        .map(|&(xmin, n)| xmin + n)
        .max()
        .unwrap_or(0);
    let mut row4 = vec![0u8; (span + c.ksize) * 4];
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    for (y, dst_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let start = ((first + y) * stride + x0) * 3;
        for (d, p) in row4
            .chunks_exact_mut(4)
            .zip(src[start..start + span * 3].chunks_exact(3))
        {
            d[..3].copy_from_slice(p);
        }
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports AVX2 (checked above).
            unsafe { horizontal_row_avx2(&row4, c, dst_row) };
            continue;
        }
        horizontal_row(&row4, c, dst_row);
    }
    out
}

fn horizontal_row(row4: &[u8], c: &Coeffs, dst_row: &mut [u8]) {
    let k = c.ksize;
    for (xx, (&(xmin, _), dst)) in c.bounds.iter().zip(dst_row.chunks_exact_mut(3)).enumerate() {
        let px = &row4[xmin * 4..(xmin + k) * 4];
        let mut acc = [1i32 << (PRECISION_BITS - 1); 4];
        for (p, &w) in px.chunks_exact(4).zip(&c.weights[xx * k..(xx + 1) * k]) {
            for ch in 0..4 {
                acc[ch] += p[ch] as i32 * w;
            }
        }
        dst.copy_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
    }
}

/// [`horizontal_row`] two taps (eight lanes) at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_row_avx2(row4: &[u8], c: &Coeffs, dst_row: &mut [u8]) {
    use std::arch::x86_64::*;
    let k = c.ksize;
    for (xx, (&(xmin, _), dst)) in c.bounds.iter().zip(dst_row.chunks_exact_mut(3)).enumerate() {
        let w = &c.weights[xx * k..(xx + 1) * k];
        let px = &row4[xmin * 4..(xmin + k) * 4];
        let mut acc = _mm256_setzero_si256();
        let mut t = 0;
        while t + 1 < k {
            // SAFETY: taps t and t + 1 are the 8 bytes px[4t..4t + 8], inside px.
            let p = unsafe { _mm_loadl_epi64(px.as_ptr().add(t * 4) as *const __m128i) };
            let ww = _mm256_setr_epi32(
                w[t],
                w[t],
                w[t],
                w[t],
                w[t + 1],
                w[t + 1],
                w[t + 1],
                w[t + 1],
            );
            acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(p), ww));
            t += 2;
        }
        let hi = _mm256_extracti128_si256::<1>(acc);
        let mut acc4 = _mm_add_epi32(_mm256_castsi256_si128(acc), hi);
        if t < k {
            let p = u32::from_le_bytes([px[t * 4], px[t * 4 + 1], px[t * 4 + 2], px[t * 4 + 3]]);
            let p = _mm_cvtepu8_epi32(_mm_cvtsi32_si128(p as i32));
            acc4 = _mm_add_epi32(acc4, _mm_mullo_epi32(p, _mm_set1_epi32(w[t])));
        }
        acc4 = _mm_add_epi32(acc4, _mm_set1_epi32(1 << (PRECISION_BITS - 1)));
        let mut a = [0i32; 4];
        // SAFETY: `a` holds 16 bytes.
        unsafe { _mm_storeu_si128(a.as_mut_ptr() as *mut __m128i, acc4) };
        dst.copy_from_slice(&[clip8(a[0]), clip8(a[1]), clip8(a[2])]);
    }
}

/// Vertical pass over columns `x0..x0 + width` of an RGB buffer `stride` pixels wide;
/// `c.bounds` index rows of `src`.
fn resample_vertical(src: &[u8], stride: usize, x0: usize, width: usize, c: &Coeffs) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { resample_vertical_avx2(src, stride, x0, width, c) };
    }
    resample_vertical_impl(src, stride, x0, width, c)
}

/// [`resample_vertical_impl`] compiled for AVX2: eight lanes per step, the same integer sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_vertical_avx2(
    src: &[u8],
    stride: usize,
    x0: usize,
    width: usize,
    c: &Coeffs,
) -> Vec<u8> {
    resample_vertical_impl(src, stride, x0, width, c)
}

#[inline(always)]
fn resample_vertical_impl(
    src: &[u8],
    stride: usize,
    x0: usize,
    width: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let row_len = width * 3;
    let mut out = vec![0u8; c.bounds.len() * row_len];
    // Row by row rather than Pillow's pixel by pixel: the same integer sums, in cache order.
    let mut acc = vec![0i32; row_len];
    for (yy, dst_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (ymin, n) = c.bounds[yy];
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        acc.fill(1i32 << (PRECISION_BITS - 1));
        for (y, &w) in k.iter().enumerate() {
            let start = ((ymin + y) * stride + x0) * 3;
            for (a, &p) in acc.iter_mut().zip(&src[start..start + row_len]) {
                *a += p as i32 * w;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    out
}

/// Which Pillow's pass order [`resize_with`] reproduces. The two orders round differently, so
/// pixels differ by a level here and there when the height shrinks much more than the width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum PassOrder {
    /// Pillow ≤ 12 (the official MAE numbers): always horizontal pass, then vertical pass.
    #[default]
    Pillow12,
    /// Pillow ≥ 13: vertical pass first when the height shrinks by more than twice as many
    /// pixels as the width (`ImagingResampleInner`'s `horizontal_first`).
    Pillow13,
}

/// `--pillow 12` / `--pillow 13`.
impl std::str::FromStr for PassOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "12" => Ok(PassOrder::Pillow12),
            "13" => Ok(PassOrder::Pillow13),
            _ => Err(format!(
                "expected 12 or 13 (the Pillow version to match), got {s:?}"
            )),
        }
    }
}

/// `Image.resize((width, height), filter)` of an RGB image with Pillow ≤ 12, bit-exact.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    resize_with(img, width, height, filter, PassOrder::Pillow12)
}

/// `Image.resize((width, height), filter)` of an RGB image, bit-exact with the Pillow `order`
/// names (`ImagingResampleInner`: the horizontal pass, when first, only computes the rows the
/// vertical pass reads).
pub fn resize_with(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    order: PassOrder,
) -> RgbImage {
    let whole = (0, 0, img.width() as usize, img.height() as usize);
    let data = resize_box(img, whole, width as usize, height as usize, filter, order);
    RgbImage::from_raw(width, height, data).expect("resampled buffer has width*height*3 bytes")
}

/// `img.crop(box).resize((out_w, out_h), filter)` without copying the crop: the box
/// (left, top, width, height) must lie inside `img`. The coefficients are those of the cropped
/// image (clamped to the box's edges, not the image's), so the pixels are Pillow's. Returns
/// `out_h` rows of `out_w` RGB pixels.
pub fn resize_box(
    img: &RgbImage,
    (left, top, in_w, in_h): (usize, usize, usize, usize),
    out_w: usize,
    out_h: usize,
    filter: Filter,
    order: PassOrder,
) -> Vec<u8> {
    let stride = img.width() as usize;
    assert!(
        left + in_w <= stride && top + in_h <= img.height() as usize,
        "crop box outside the image"
    );
    let src = img.as_raw();
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return vec![0; out_w * out_h * 3];
    }
    let horiz = precompute_coeffs(in_w, 0.0, in_w as f64, out_w, filter);
    let mut vert = precompute_coeffs(in_h, 0.0, in_h as f64, out_h, filter);
    let (dh, dw) = (in_h as i64 - out_h as i64, in_w as i64 - out_w as i64);
    let horizontal_first = order == PassOrder::Pillow12 || !(dh > 0 && dh > dw * 2);
    if horizontal_first && out_w != in_w {
        let first = vert.bounds[0].0;
        let last = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;
        let data = resample_horizontal(src, stride, left, top + first, last - first, &horiz);
        if out_h == in_h {
            return data;
        }
        for b in vert.bounds.iter_mut() {
            b.0 -= first;
        }
        resample_vertical(&data, out_w, 0, out_w, &vert)
    } else if out_h != in_h {
        for b in vert.bounds.iter_mut() {
            b.0 += top;
        }
        let data = resample_vertical(src, stride, left, in_w, &vert);
        if out_w == in_w {
            return data;
        }
        resample_horizontal(&data, in_w, 0, 0, out_h, &horiz)
    } else {
        // same size: the crop itself
        (top..top + in_h)
            .flat_map(|y| &src[(y * stride + left) * 3..(y * stride + left + in_w) * 3])
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_kernel_interpolates() {
        // A cubic convolution kernel is 1 at 0 and 0 at the other integers.
        assert_eq!(Filter::Bicubic.eval(0.0), 1.0);
        assert_eq!(Filter::Bicubic.eval(1.0), 0.0);
        assert_eq!(Filter::Bicubic.eval(2.0), 0.0);
        assert!(Filter::Bicubic.eval(1.5) < 0.0);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 77]));
        for (w, h) in [(224, 224), (5, 3), (37, 50), (80, 23)] {
            let out = resize(&img, w, h, Filter::Bicubic);
            assert_eq!((out.width(), out.height()), (w, h));
            assert!(out.pixels().all(|p| p.0 == [200, 10, 77]), "{w}x{h}");
        }
    }
}
