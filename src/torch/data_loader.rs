//! What main_pretrain.py takes from torch.utils.data: `DistributedSampler(shuffle=True)` and
//! `DataLoader(batch_size, num_workers, pin_memory, drop_last=True)`, for one process. Samples
//! are decoded and augmented by `num_workers` rayon threads, batches queued ahead of the model
//! through a bounded channel. Sample `i` of epoch `e` is augmented with its own generator seeded
//! from (seed, e, i), and the order is shuffled from (seed, e): a run is the same whatever the
//! number of threads.
//!
//! A RandomResizedCrop transform can be given as data ([`Transform::Crop`]): the box is drawn
//! from the JPEG header's size, only the part of the JPEG around it is decoded, and the
//! resized, flipped, normalised pixels are written straight into the batch (pinned when the
//! batches go to CUDA, then copied with `non_blocking`), the same values as
//! [`ResizedCrop::apply`] on the decoded image. The datasets are
//! [`crate::torchvision::datasets::ImageSource`]s.

use std::sync::{mpsc, Arc};

use anyhow::{anyhow, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::torchvision::datasets::{CropBox, ImageSource};
use crate::torchvision::pil::PassOrder;
use crate::torchvision::transforms::{
    crop_flip_normalize, crop_flip_normalize_into, eval_transform_with, pretrain_crop_params,
    SampleRng,
};

/// A training transform: the sample's tensor from its decoded image and its generator.
pub type TransformFn = dyn Fn(&RgbImage, &mut SampleRng) -> Tensor + Send + Sync;

/// What a [`DataLoader`] does to each sample.
#[derive(Clone)]
pub enum Transform {
    /// Any function of the decoded image.
    Fn(Arc<TransformFn>),
    /// A RandomResizedCrop given as data: the same pixels as its [`ResizedCrop::apply`], with
    /// only the box's part of a JPEG decoded and the result written straight into the batch.
    Crop(ResizedCrop),
}

impl Transform {
    pub fn new(f: impl Fn(&RgbImage, &mut SampleRng) -> Tensor + Send + Sync + 'static) -> Self {
        Transform::Fn(Arc::new(f))
    }
}

/// A RandomResizedCrop training transform as data: the box `params(width, height, rng)`, resized
/// to `size`×`size` (bicubic), RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet)
/// ([`crop_flip_normalize`]). Knowing that the box is drawn from the size alone lets the loader
/// decode only the box's part of a JPEG.
#[derive(Debug, Clone, Copy)]
pub struct ResizedCrop {
    pub size: u32,
    pub params: fn(u32, u32, &mut SampleRng) -> CropBox,
    /// Opt-in, not in the official: decode a JPEG at 1/2, 1/4 or 1/8 of its size (libjpeg-turbo's
    /// DCT-domain scaling) when the box stays at least `size` pixels a side, then resize from
    /// there. Measured (`bench_data --profile`): ~1000×750 JPEGs, 224 px: 51 of 60 samples
    /// scaled, 1.6× faster per sample, 1.9 levels mean / 86 max difference from the exact
    /// pixels; ImageNet-sized (500×375) JPEGs: the box is rarely 448 px a side, no gain.
    pub fast_decode: bool,
}

impl ResizedCrop {
    /// main_pretrain.py's `transform_train` (scale 0.2–1): `pretrain_transform`.
    pub fn pretrain(size: u32) -> Self {
        ResizedCrop {
            size,
            params: pretrain_crop_params,
            fast_decode: false,
        }
    }

    /// The same transform on a decoded image.
    pub fn apply(&self, img: &RgbImage, rng: &mut SampleRng) -> Tensor {
        let bx = (self.params)(img.width(), img.height(), rng);
        crop_flip_normalize(img, bx, self.size, rng)
    }
}

/// How [`DataLoader::epoch_with`] runs an epoch; the default is [`DataLoader::epoch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EpochOptions {
    /// Where the model runs. On CUDA each batch is built in pinned host memory and the
    /// iterator hands it over with a `non_blocking` copy (`pin_memory=True`, then
    /// `samples.to(device, non_blocking=True)` in the engines).
    pub device: Option<Device>,
    /// `SequentialSampler` with `drop_last=False` (evaluation): the indices in order, the last
    /// batch possibly short. Otherwise shuffled from (seed, epoch), full batches only.
    pub sequential: bool,
}

pub struct DataLoader {
    pub dataset: Arc<dyn ImageSource>,
    pub transform: Transform,
    pub batch_size: usize,
    pub num_workers: usize,
    pub seed: u64,
    /// batches prepared ahead of the one the model is working on
    pub prefetch: usize,
}

impl DataLoader {
    /// `len(data_loader)`: full batches of this rank's share only (drop_last).
    pub fn len(&self) -> usize {
        let sampler = crate::torch::distributed::DistributedSampler::current();
        sampler.num_samples(self.dataset.len()) / self.batch_size
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `DistributedSampler.set_epoch(epoch); iter(sampler)`: a permutation of the indices
    /// (Fisher-Yates from the (seed, epoch) generator), the same on every rank, of which
    /// this rank takes its share (torch::distributed::DistributedSampler; all of it in one process).
    pub fn sampler_indices(&self, epoch: u64) -> Vec<usize> {
        let mut rng = SampleRng::new(self.seed, epoch, u64::MAX);
        let mut idx: Vec<usize> = (0..self.dataset.len()).collect();
        for i in (1..idx.len()).rev() {
            let j = rng.randint(0, i as i64 + 1) as usize;
            idx.swap(i, j);
        }
        crate::torch::distributed::DistributedSampler::current().subsample(idx)
    }

    /// The batches of `epoch` ([batch_size, 3, H, W] each) on the CPU, produced in the
    /// background.
    pub fn epoch(&self, epoch: u64) -> Result<Batches> {
        self.epoch_with(epoch, &EpochOptions::default())
    }

    /// [`epoch`](Self::epoch) with the batches' device, or in sequential order.
    pub fn epoch_with(&self, epoch: u64, opts: &EpochOptions) -> Result<Batches> {
        if self.batch_size == 0 {
            anyhow::bail!("--batch_size must be at least 1");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.num_workers.max(1))
            .build()
            .context("starting the data loader threads")?;
        let (tx, rx) = mpsc::sync_channel(self.prefetch.max(1));
        let order = if opts.sequential {
            (0..self.dataset.len()).collect()
        } else {
            self.sampler_indices(epoch)
        };
        let batches: Vec<Vec<usize>> = if opts.sequential {
            order.chunks(self.batch_size).map(<[_]>::to_vec).collect()
        } else {
            order
                .chunks_exact(self.batch_size)
                .map(<[_]>::to_vec)
                .collect()
        };
        let len = batches.len();
        let pin = opts.device.filter(|d| d.is_cuda());
        let work = Work {
            dataset: self.dataset.clone(),
            transform: self.transform.clone(),
            seed: self.seed,
            epoch,
            pin,
        };
        std::thread::spawn(move || {
            for batch in batches {
                let batch = pool.install(|| work.batch(&batch));
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return; // the consumer stopped, or nothing more to send
                }
            }
        });
        Ok(Batches {
            rx,
            left: len,
            device: pin,
        })
    }
}

/// What the loader thread needs to build a batch.
struct Work {
    dataset: Arc<dyn ImageSource>,
    transform: Transform,
    seed: u64,
    epoch: u64,
    pin: Option<Device>,
}

impl Work {
    /// Samples `indices`, transformed by the pool's threads, as one [N, 3, H, W] tensor.
    fn batch(&self, indices: &[usize]) -> Result<Tensor> {
        use rayon::prelude::*;
        let rng = |i: usize| SampleRng::new(self.seed, self.epoch, i as u64);
        let context = |i: usize| format!("dataset sample {i}");
        let crop = match &self.transform {
            Transform::Crop(crop) => *crop,
            Transform::Fn(transform) => {
                let samples: Vec<Tensor> = indices
                    .par_iter()
                    .map(|&i| {
                        let img = self.dataset.load(i).with_context(|| context(i))?;
                        Ok(transform(&img, &mut rng(i)))
                    })
                    .collect::<Result<_>>()?;
                let batch = Tensor::stack(&samples, 0);
                return match self.pin {
                    Some(d) => batch.f_pin_memory(d).context("pinning a batch"),
                    None => Ok(batch),
                };
            }
        };
        let s = crop.size as i64;
        let per = (3 * s * s) as usize;
        let mut batch = Tensor::empty([indices.len() as i64, 3, s, s], (Kind::Float, Device::Cpu));
        if let Some(d) = self.pin {
            batch = batch.f_pin_memory(d).context("pinning a batch")?;
        }
        // SAFETY: `batch` is a new contiguous float32 CPU tensor of indices.len() * per
        // elements, alive and not otherwise accessed until this slice is dropped.
        let out = unsafe {
            std::slice::from_raw_parts_mut(batch.data_ptr() as *mut f32, indices.len() * per)
        };
        out.par_chunks_mut(per)
            .zip(indices.par_iter())
            .try_for_each(|(out, &i)| {
                let mut rng = rng(i);
                let (img, bx) = self
                    .dataset
                    .load_box(
                        i,
                        &mut |w, h| (crop.params)(w, h, &mut rng),
                        crop.fast_decode.then_some(crop.size),
                    )
                    .with_context(|| context(i))?;
                crop_flip_normalize_into(&img, bx, crop.size, &mut rng, out);
                Ok::<_, anyhow::Error>(())
            })?;
        Ok(batch)
    }
}

/// The batches of one epoch, in order.
pub struct Batches {
    rx: mpsc::Receiver<Result<Tensor>>,
    left: usize,
    /// CUDA: the batches are pinned and copied there without blocking
    device: Option<Device>,
}

impl Iterator for Batches {
    type Item = Result<Tensor>;
    fn next(&mut self) -> Option<Result<Tensor>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let batch = self
            .rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("the data loader thread stopped")));
        Some(match self.device {
            Some(d) => batch.and_then(|b| {
                b.f_to_device_(d, Kind::Float, true, false)
                    .context("copying a batch to the device")
            }),
            None => batch,
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Batches {}

/// One batch of a classification loader: images [B, 3, H, W] and class indices [B].
pub struct Batch {
    pub images: Tensor,
    pub target: Tensor,
}

/// The training loader's batches of `epoch` with their targets: the DataLoader yields images in
/// its sampler order, whose chunks give the labels. `opts` as in `DataLoader::epoch_with` (not
/// `sequential`: the order is the sampler's).
pub fn labelled_batches(
    loader: &DataLoader,
    targets: Arc<Vec<i64>>,
    epoch: u64,
    opts: &EpochOptions,
) -> Result<impl ExactSizeIterator<Item = Result<Batch>>> {
    assert!(!opts.sequential, "labelled_batches takes the sampler order");
    let order = loader.sampler_indices(epoch);
    let batch_size = loader.batch_size;
    let batches = loader.epoch_with(epoch, opts)?;
    Ok(batches.enumerate().map(move |(k, images)| {
        let idx = &order[k * batch_size..(k + 1) * batch_size];
        let target: Vec<i64> = idx.iter().map(|&i| targets[i]).collect();
        images.map(|images| Batch {
            images,
            target: Tensor::from_slice(&target),
        })
    }))
}

/// `data_loader_val = DataLoader(dataset_val, sampler=SequentialSampler(dataset_val),
/// batch_size, num_workers, drop_last=False)` with the evaluation transform (resize, center
/// crop, normalize: `eval_transform_with`). Built once, iterated at every evaluation.
pub struct DataLoaderVal {
    pub dataset: Arc<dyn ImageSource>,
    pub targets: Arc<Vec<i64>>,
    pub batch_size: usize,
    pub num_workers: usize,
    pub input_size: u32,
    pub order: PassOrder,
}

impl DataLoaderVal {
    pub fn new(
        dataset: Arc<dyn ImageSource>,
        targets: Arc<Vec<i64>>,
        batch_size: usize,
        num_workers: usize,
        input_size: i64,
        order: PassOrder,
    ) -> Result<Self> {
        if batch_size < 1 {
            anyhow::bail!("--batch_size must be at least 1, got {batch_size}");
        }
        Ok(DataLoaderVal {
            dataset,
            targets,
            batch_size,
            num_workers,
            input_size: u32::try_from(input_size).context("--input_size")?,
            order,
        })
    }

    /// `len(data_loader.dataset)`
    pub fn num_images(&self) -> usize {
        self.dataset.len()
    }

    /// `iter(data_loader)`: `num_workers` rayon threads decode and transform a batch while the
    /// model runs the previous one (two batches queued at most); a failure stops the loader
    /// after sending its error. With `--dist_eval`, this rank's share (`DistributedSampler(shuffle=False)`).
    pub fn iter(&self) -> Result<impl Iterator<Item = Result<Batch>>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.num_workers.max(1))
            .build()
            .context("starting the data loader threads")?;
        let (dataset, targets) = (self.dataset.clone(), self.targets.clone());
        let (batch_size, input_size, order) = (self.batch_size, self.input_size, self.order);
        let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(2);
        std::thread::spawn(move || {
            // SequentialSampler, or with --dist_eval DistributedSampler(shuffle=False)
            let indices = crate::torch::distributed::eval_indices(dataset.len());
            for chunk in indices.chunks(batch_size) {
                let images: Result<Vec<Tensor>> = pool.install(|| {
                    chunk
                        .par_iter()
                        .map(|&i| Ok(eval_transform_with(&dataset.load(i)?, input_size, order)))
                        .collect()
                });
                let target: Vec<i64> = chunk.iter().map(|&i| targets[i]).collect();
                let batch = images.map(|images| Batch {
                    images: Tensor::stack(&images, 0),
                    target: Tensor::from_slice(&target),
                });
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return; // the consumer stopped, or it has the error
                }
            }
        });
        Ok(rx.into_iter())
    }
}
