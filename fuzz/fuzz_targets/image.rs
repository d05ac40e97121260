//! Image decoding as the data pipeline does it: the whole image (`pil_loader`: JPEG through
//! libjpeg-turbo, PNG), then a RandomResizedCrop box decoded as a region of a JPEG (exact and
//! DCT-scaled), cropped, resized and normalized into a sample (`ResizedCrop`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mae::torchvision::transforms::{crop_flip_normalize_into, SampleRng};
use mae::torch::data_loader::ResizedCrop;
use mae::torchvision::datasets::decode_box;

fuzz_target!(|data: &[u8]| {
    let _ = mae::torchvision::datasets::decode(data);
    let seed = data.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ b as u64);
    for (crop, fast) in [(ResizedCrop::pretrain(16), None), (ResizedCrop::linprobe(16), Some(16))] {
        let mut rng = SampleRng::new(seed, 0, 0);
        let mut params = |w, h| (crop.params)(w, h, &mut rng);
        if let Ok((img, bx)) = decode_box(data, &mut params, fast) {
            let mut out = vec![0f32; 3 * 16 * 16];
            crop_flip_normalize_into(&img, bx, crop.size, &mut rng, &mut out);
        }
    }
});
