//! Port of util/crop.py: the RandomResizedCrop of linear probing, which draws one box (no ten
//! attempts, no fallback) and clips it to the image.

use image::RgbImage;
use tch::Tensor;

use crate::torch::data_loader::ResizedCrop;
use crate::torchvision::transforms::{crop_flip_normalize, round_half_even, SampleRng};

/// `RandomResizedCrop.get_params(img, scale, ratio)` of util/crop.py -> (top, left, height, width).
pub fn get_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut SampleRng,
) -> (i64, i64, i64, i64) {
    let (width, height) = (width as i64, height as i64);
    let area = (height * width) as f64;

    let target_area = area * rng.uniform(scale.0 as f32, scale.1 as f32) as f64;
    let log_ratio = ((ratio.0 as f32).ln(), (ratio.1 as f32).ln());
    let aspect_ratio = rng.uniform(log_ratio.0, log_ratio.1).exp() as f64;

    let w = round_half_even((target_area * aspect_ratio).sqrt()).min(width);
    let h = round_half_even((target_area / aspect_ratio).sqrt()).min(height);

    let i = rng.randint(0, height - h + 1);
    let j = rng.randint(0, width - w + 1);
    (i, j, h, w)
}

/// main_linprobe.py's `transform_train`: RandomResizedCrop(input_size, interpolation=3) (this
/// file's, scale 0.08–1), RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet).
pub fn linprobe_transform(img: &RgbImage, input_size: u32, rng: &mut SampleRng) -> Tensor {
    let (i, j, h, w) = get_params(
        img.width(),
        img.height(),
        (0.08, 1.0),
        (3. / 4., 4. / 3.),
        rng,
    );
    crop_flip_normalize(img, (i, j, h, w), input_size, rng)
}

impl ResizedCrop {
    /// [`linprobe_transform`] as data, for the loader (which then decodes only the box's part
    /// of a JPEG).
    pub fn linprobe(size: u32) -> Self {
        ResizedCrop {
            size,
            params: |w, h, rng| get_params(w, h, (0.08, 1.0), (3. / 4., 4. / 3.), rng),
            fast_decode: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_clipped_to_the_image() {
        for k in 0..500 {
            let mut rng = SampleRng::new(1, 0, k);
            let (i, j, h, w) = get_params(28, 20, (0.08, 1.0), (3. / 4., 4. / 3.), &mut rng);
            assert!(h >= 1 && w >= 1 && h <= 20 && w <= 28, "{h} {w}");
            assert!(i >= 0 && j >= 0 && i + h <= 20 && j + w <= 28);
        }
    }
}
