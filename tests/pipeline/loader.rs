//! The fast training pipeline gives the same values as the plain one: decoding only a crop's
//! area of a JPEG gives the full decode's pixels there; the crop-as-data loader gives the
//! closure loader's batches; the prefetch queue is bounded and keeps the order; the sequential
//! mode keeps the last short batch.
use crate::common;
use crate::common::{shared_image, PHOTOS};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use image::RgbImage;
use mae::torch::data_loader::{DataLoader, EpochOptions, ResizedCrop, Transform};
use mae::torchvision::datasets::ImageSource;
use mae::torchvision::datasets::{pil_loader, Jpeg};
use mae::torchvision::transforms::{pretrain_crop_params, SampleRng};
use mae::util::crop::get_params;
use turbojpeg::Subsamp;

/// The shared JPEGs as they are, and every shared photo re-encoded with each chroma subsampling
/// (iMCUs of 8×8, 16×8, 16×16, 8×16 pixels, and grey).
fn jpegs() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in PHOTOS {
        let path = shared_image(name);
        if name.ends_with(".jpg") {
            out.push((
                name.to_string(),
                std::fs::read(&path).expect("reading a photo"),
            ));
        }
        let img = pil_loader(&path).expect("decoding a photo");
        let subsamps = [
            Subsamp::None,
            Subsamp::Sub2x1,
            Subsamp::Sub2x2,
            Subsamp::Sub1x2,
            Subsamp::Gray,
        ];
        for s in subsamps {
            let jpeg = turbojpeg::compress_image(&img, 90, s).expect("encoding a JPEG");
            out.push((format!("{name} as {s:?}"), jpeg.to_vec()));
        }
    }
    out
}

#[test]
fn region_decode_equals_full_decode() {
    for (name, bytes) in jpegs() {
        let jpeg = Jpeg::open(&bytes).expect("header");
        let (full, _) = jpeg.decode(None).expect("full decode");
        let (w, h) = (jpeg.width, jpeg.height);
        let mut boxes: Vec<(i64, i64, i64, i64)> = (0..40)
            .flat_map(|k| {
                let mut rng = SampleRng::new(3, 0, k);
                let a = pretrain_crop_params(w, h, &mut rng);
                let b = get_params(w, h, (0.08, 1.0), (0.75, 4. / 3.), &mut rng);
                [a, b]
            })
            .collect();
        let (w, h) = (w as i64, h as i64);
        boxes.extend([
            (0, 0, h, w),
            (0, 0, 1, 1),
            (h - 1, w - 1, 1, 1),
            (17, 33, 5, 7),
        ]);
        for (i, j, bh, bw) in boxes {
            let jpeg = Jpeg::open(&bytes).expect("header");
            let bx = (j as u32, i as u32, bw as u32, bh as u32);
            let (area, (x0, y0)) = jpeg.decode(Some(bx)).expect("region decode");
            assert!(
                x0 as i64 <= j && y0 as i64 <= i,
                "{name}: area misses the box"
            );
            assert!(x0 as i64 + area.width() as i64 >= j + bw, "{name}");
            assert!(y0 as i64 + area.height() as i64 >= i + bh, "{name}");
            // the box's pixels (the area's outer pixels may differ: the fancy upsampling of
            // chroma sees an edge there)
            let (bx0, by0) = ((j - x0 as i64) as u32, (i - y0 as i64) as u32);
            let ours = image::imageops::crop_imm(&area, bx0, by0, bw as u32, bh as u32);
            let theirs = image::imageops::crop_imm(&full, j as u32, i as u32, bw as u32, bh as u32);
            assert!(
                ours.to_image() == theirs.to_image(),
                "{name}: box {:?} decoded alone differs from the full decode",
                (i, j, bh, bw)
            );
        }
    }
}

/// DIR/train: the shared photos (PNG and JPEG), two copies each, as an ImageFolder with two
/// classes.
fn folder(dir: &Path) -> PathBuf {
    let root = dir.join("train");
    for (k, name) in PHOTOS.iter().enumerate() {
        let class = root.join(if k % 2 == 0 { "a" } else { "b" });
        std::fs::create_dir_all(&class).expect("mkdir");
        for copy in 0..2 {
            std::fs::copy(shared_image(name), class.join(format!("{copy}_{name}")))
                .expect("copying a photo");
        }
    }
    root
}

fn loader(dataset: Arc<dyn ImageSource>, batch_size: usize, workers: usize) -> DataLoader {
    let crop = ResizedCrop::pretrain(64);
    DataLoader {
        dataset,
        transform: Transform::new(move |img, rng| crop.apply(img, rng)),
        batch_size,
        num_workers: workers,
        seed: 7,
        prefetch: 2,
    }
}

fn collect(loader: &DataLoader, epoch: u64, opts: &EpochOptions) -> Vec<tch::Tensor> {
    let batches = loader.epoch_with(epoch, opts).expect("epoch");
    assert_eq!(batches.len(), loader.len());
    batches.map(|b| b.expect("batch")).collect()
}

#[test]
fn crop_loader_gives_the_closure_loaders_batches() {
    let dir = common::scratch();
    let ds = Arc::new(mae::torchvision::datasets::ImageFolder::new(&folder(&dir)).expect("folder"));
    for (crop, name) in [
        (ResizedCrop::pretrain(64), "pretrain"),
        (ResizedCrop::linprobe(64), "linprobe"),
    ] {
        for workers in [1, 3] {
            let mut l = loader(ds.clone(), 5, workers);
            l.transform = Transform::new(move |img, rng| crop.apply(img, rng));
            let mut data = loader(ds.clone(), 5, workers);
            data.transform = Transform::Crop(crop);
            for epoch in [0, 1] {
                let plain = collect(&l, epoch, &EpochOptions::default());
                let fast = collect(&data, epoch, &EpochOptions::default());
                // with a device (CPU here: on CUDA the same path pins and copies non-blocking)
                let opts = EpochOptions {
                    device: Some(tch::Device::Cpu),
                    ..EpochOptions::default()
                };
                let on_device = collect(&data, epoch, &opts);
                assert!(plain.iter().zip(&on_device).all(|(a, b)| a.equal(b)));
                assert_eq!(plain.len(), 2); // 12 images, drop_last
                for (a, b) in plain.iter().zip(&fast) {
                    assert_eq!(a.size(), [5, 3, 64, 64]);
                    assert!(a.equal(b), "{name}, {workers} workers, epoch {epoch}");
                }
            }
        }
    }
}

/// Counts the images it has loaded.
struct Counting(Vec<RgbImage>, AtomicUsize);

impl ImageSource for Counting {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(self.0[index].clone())
    }
}

fn counting(n: usize) -> Arc<Counting> {
    let imgs = (0..n)
        .map(|k| RgbImage::from_fn(40, 30, |x, y| image::Rgb([k as u8, x as u8, y as u8])))
        .collect();
    Arc::new(Counting(imgs, AtomicUsize::new(0)))
}

#[test]
fn prefetch_is_bounded_and_keeps_the_order() {
    let ds = counting(40);
    let l = loader(ds.clone(), 4, 2);
    let Transform::Fn(transform) = l.transform.clone() else {
        panic!("loader() gives a function transform");
    };
    let expected: Vec<tch::Tensor> = {
        // the same batches built one sample at a time, in the sampler's order
        let order = l.sampler_indices(3);
        order
            .chunks_exact(4)
            .map(|c| {
                let s: Vec<tch::Tensor> = c
                    .iter()
                    .map(|&i| transform(&ds.0[i], &mut SampleRng::new(7, 3, i as u64)))
                    .collect();
                tch::Tensor::stack(&s, 0)
            })
            .collect()
    };
    ds.1.store(0, Ordering::SeqCst);
    let mut batches = l.epoch(3).expect("epoch");
    std::thread::sleep(std::time::Duration::from_millis(500));
    // two batches queued, a third built and waiting to be queued, nothing more
    assert_eq!(ds.1.load(Ordering::SeqCst), 3 * 4);
    let first = batches.next().expect("a batch").expect("no error");
    assert!(first.equal(&expected[0]));
    for (k, b) in batches.enumerate() {
        assert!(b.expect("batch").equal(&expected[k + 1]), "batch {}", k + 1);
    }
    assert_eq!(ds.1.load(Ordering::SeqCst), 40);
}

#[test]
fn sequential_mode_keeps_the_order_and_the_last_short_batch() {
    let ds = counting(11);
    let mut l = loader(ds.clone(), 4, 2);
    l.transform = Transform::new(|img, _| mae::torchvision::transforms::eval_transform(img, 32));
    let opts = EpochOptions {
        sequential: true,
        ..EpochOptions::default()
    };
    let batches: Vec<tch::Tensor> = l
        .epoch_with(0, &opts)
        .expect("epoch")
        .map(|b| b.expect("batch"))
        .collect();
    assert_eq!(
        batches.iter().map(|b| b.size()[0]).collect::<Vec<_>>(),
        [4, 4, 3]
    );
    let all = tch::Tensor::cat(&batches, 0);
    for (i, img) in ds.0.iter().enumerate() {
        let one = mae::torchvision::transforms::eval_transform(img, 32);
        assert!(all.get(i as i64).equal(&one), "sample {i}");
    }
}

#[test]
fn resized_crop_without_copy_equals_crop_then_resize() {
    use mae::torchvision::pil::{resize, Filter};
    use mae::torchvision::transforms::{crop, resized_crop};
    for name in PHOTOS {
        let img = pil_loader(&shared_image(name)).expect("photo");
        let (w, h) = (img.width(), img.height());
        for k in 0..30 {
            let mut rng = SampleRng::new(5, 0, k);
            let (i, j, bh, bw) = pretrain_crop_params(w, h, &mut rng);
            for size in [224, 64, 300] {
                let plain = resize(
                    &crop(&img, j, i, bw as u32, bh as u32),
                    size,
                    size,
                    Filter::Bicubic,
                );
                let ours = resized_crop(&img, i, j, bh, bw, size, Filter::Bicubic);
                assert!(plain == ours, "{name}: box {:?} to {size}", (i, j, bh, bw));
            }
        }
    }
}

#[test]
fn fast_decode_is_close_and_opt_in() {
    let dir = common::scratch();
    let ds = Arc::new(mae::torchvision::datasets::ImageFolder::new(&folder(&dir)).expect("folder"));
    let exact = ResizedCrop::pretrain(64);
    let fast = ResizedCrop {
        fast_decode: true,
        ..exact
    };
    let run = |crop| {
        let mut l = loader(ds.clone(), 6, 2);
        l.transform = Transform::Crop(crop);
        tch::Tensor::cat(&collect(&l, 0, &EpochOptions::default()), 0)
    };
    let (a, b) = (run(exact), run(fast));
    // boxes of 128+ px a side decode at 1/2 or less: not the same pixels, but close
    assert!(!a.equal(&b), "fast_decode changed nothing");
    let levels = (&a - &b).abs().mean(tch::Kind::Float).double_value(&[]) * 0.226 * 255.;
    assert!(levels < 4., "mean difference {levels} levels");
}
