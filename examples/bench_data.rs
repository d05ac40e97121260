//! Training data pipeline throughput (tools/bench/bench_data.sh compares it with torchvision's
//! DataLoader, tools/bench/bench_data.py): main_pretrain.py's transform (RandomResizedCrop(224,
//! scale 0.2–1, bicubic), RandomHorizontalFlip, ToTensor, Normalize) on an ImageFolder, batches of
//! `--batch_size` from `--num_workers` threads, after a warm-up of two batches. Prints one JSON line.
//!
//! `--mode crop` (what the training loop can use): the crop as data, JPEGs decoded only around
//! the box, written straight into the batch. `--mode closure`: the `pretrain_transform` closure
//! on whole decoded images. `--profile`: one thread's time per stage instead.
//!
//! usage: cargo run --release --example bench_data -- DATA_PATH [--mode crop|closure]
//!        [--batch_size 64] [--num_workers 2] [--epochs 3] [--profile]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use mae::torch::data_loader::{DataLoader, ResizedCrop, Transform};
use mae::torchvision::datasets::ImageSource;
use mae::torchvision::datasets::{pil_loader, ImageFolder};
use mae::torchvision::pil::{self, Filter, PassOrder};
use mae::torchvision::transforms::{
    crop_flip_normalize_into, pretrain_crop_params, pretrain_transform, to_tensor_normalize_into,
    SampleRng, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
};

#[derive(Parser)]
struct Args {
    data_path: PathBuf,
    #[arg(long, default_value = "crop")]
    mode: String,
    #[arg(long = "batch_size", default_value_t = 64)]
    batch_size: usize,
    #[arg(long = "num_workers", default_value_t = 2)]
    num_workers: usize,
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    #[arg(long = "input_size", default_value_t = 224)]
    input_size: u32,
    #[arg(long)]
    profile: bool,
    /// ResizedCrop::fast_decode: JPEGs decoded at 1/2, 1/4, 1/8 size when the box allows
    #[arg(long = "fast_decode")]
    fast_decode: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dataset = Arc::new(ImageFolder::new(&args.data_path.join("train"))?);
    if args.profile {
        return profile(&dataset, args.input_size);
    }
    let size = args.input_size;
    let transform = match args.mode.as_str() {
        "crop" => Transform::Crop(ResizedCrop {
            fast_decode: args.fast_decode,
            ..ResizedCrop::pretrain(size)
        }),
        "closure" => Transform::new(move |img, rng| pretrain_transform(img, size, rng)),
        m => anyhow::bail!("--mode {m}: expected crop or closure"),
    };
    let loader = DataLoader {
        dataset: dataset.clone(),
        transform,
        batch_size: args.batch_size,
        num_workers: args.num_workers,
        seed: 0,
        prefetch: 2,
    };
    for batch in loader.epoch(0)?.take(2) {
        let _ = batch?; // warm-up: two batches, as tools/bench/bench_data.py
    }
    let mut n = 0;
    let t0 = Instant::now();
    for epoch in 1..=args.epochs {
        for batch in loader.epoch(epoch)? {
            n += batch?.size()[0];
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"side": format!("rust-{}{}", args.mode, if args.fast_decode { "-fast_decode" } else { "" }), "images": n,
            "seconds": (dt * 1000.).round() / 1000., "images_per_s": (n as f64 / dt * 10.).round() / 10.,
            "num_workers": args.num_workers, "batch_size": args.batch_size})
    );
    Ok(())
}

/// Milliseconds per image of each stage, one thread, over every image of the folder.
fn profile(dataset: &ImageFolder, size: u32) -> Result<()> {
    let s = size as usize;
    let mut out = vec![0f32; 3 * s * s];
    let mut t = [0f64; 8];
    let (mut max_diff, mut sum_diff, mut scaled) = (0f32, 0f64, 0);
    let n = dataset.len();
    for i in 0..n {
        let path = &dataset.samples[i].0;
        let mut rng = SampleRng::new(0, 0, i as u64);
        let t0 = Instant::now();
        let bytes = std::fs::read(path)?;
        let t1 = Instant::now();
        let full = mae::torchvision::datasets::decode(&bytes)?;
        let t2 = Instant::now();
        let (bi, bj, bh, bw) = pretrain_crop_params(full.width(), full.height(), &mut rng);
        let bx = (bj as usize, bi as usize, bw as usize, bh as usize);
        let resized = pil::resize_box(&full, bx, s, s, Filter::Bicubic, PassOrder::Pillow12);
        let t3 = Instant::now();
        let (m, sd) = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD);
        to_tensor_normalize_into(&resized, s, rng.uniform(0., 1.) < 0.5, m, sd, &mut out);
        let t4 = Instant::now();
        let mut rng = SampleRng::new(0, 0, i as u64);
        let _ = dataset.load_box(i, &mut |w, h| pretrain_crop_params(w, h, &mut rng), None)?;
        let t5 = Instant::now();
        let _ = pil_loader(path)?;
        let t6 = Instant::now();
        // --fast_decode: the whole sample, against the exact one
        let crop = ResizedCrop::pretrain(size);
        let fast = ResizedCrop {
            fast_decode: true,
            ..crop
        };
        let mut exact = vec![0f32; 3 * s * s];
        let sample = |c: ResizedCrop, out: &mut [f32]| -> Result<()> {
            let mut rng = SampleRng::new(0, 0, i as u64);
            let f = c.fast_decode.then_some(size);
            let (img, bx) = dataset.load_box(i, &mut |w, h| (c.params)(w, h, &mut rng), f)?;
            crop_flip_normalize_into(&img, bx, size, &mut rng, out);
            Ok(())
        };
        let t7 = Instant::now();
        sample(crop, &mut exact)?;
        let t8 = Instant::now();
        sample(fast, &mut out)?;
        let t9 = Instant::now();
        let mut diff = 0f64;
        for (k, (e, f)) in exact.iter().zip(&out).enumerate() {
            let levels = ((e - f).abs() * IMAGENET_DEFAULT_STD[k / (s * s)] as f32 * 255.).round();
            max_diff = max_diff.max(levels);
            diff += levels as f64 / (3 * s * s) as f64;
        }
        if diff > 0. {
            (scaled, sum_diff) = (scaled + 1, sum_diff + diff);
        }
        for (k, (a, b)) in [
            (t0, t1),
            (t1, t2),
            (t2, t3),
            (t3, t4),
            (t4, t5),
            (t5, t6),
            (t7, t8),
            (t8, t9),
        ]
        .into_iter()
        .enumerate()
        {
            t[k] += (b - a).as_secs_f64() * 1000. / n as f64;
        }
    }
    let r = |v: f64| (v * 1000.).round() / 1000.;
    println!(
        "{}",
        serde_json::json!({"images": n, "ms_per_image": {
            "read_file": r(t[0]), "decode_whole": r(t[1]), "crop_resize_bicubic": r(t[2]),
            "flip_to_tensor_normalize": r(t[3]), "read_and_decode_box_only": r(t[4]),
            "pil_loader_whole": r(t[5]), "sample_exact": r(t[6]), "sample_fast_decode": r(t[7])},
            "fast_decode": {"samples_scaled": scaled, "levels_max": max_diff,
                "levels_mean_over_scaled": r(sum_diff / scaled.max(1) as f64)}})
    );
    Ok(())
}
