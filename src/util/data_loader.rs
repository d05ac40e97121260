//! What main_pretrain.py takes from torch.utils.data: `DistributedSampler(shuffle=True)` and
//! `DataLoader(batch_size, num_workers, drop_last=True)`, for one process. Samples are decoded
//! and augmented by `num_workers` rayon threads, batches queued ahead of the model through a
//! bounded channel. Sample `i` of epoch `e` is augmented with its own generator seeded from
//! (seed, e, i), and the order is shuffled from (seed, e): a run is the same whatever the
//! number of threads.

use std::sync::{mpsc, Arc};

use anyhow::{anyhow, Context, Result};
use image::RgbImage;
use tch::Tensor;

use crate::torchvision::datasets::{pil_loader, FashionMNIST, ImageFolder};
use crate::torchvision::transforms::SampleRng;

/// A dataset before its transform: `len` images, loaded by index.
pub trait ImageSource: Send + Sync {
    fn len(&self) -> usize;
    fn load(&self, index: usize) -> Result<RgbImage>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        pil_loader(&self.samples[index].0)
    }
}

impl ImageSource for FashionMNIST {
    fn len(&self) -> usize {
        self.targets.len()
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        Ok(self.rgb(index))
    }
}

pub type Transform = dyn Fn(&RgbImage, &mut SampleRng) -> Tensor + Send + Sync;

pub struct DataLoader {
    pub dataset: Arc<dyn ImageSource>,
    pub transform: Arc<Transform>,
    pub batch_size: usize,
    pub num_workers: usize,
    pub seed: u64,
    /// batches prepared ahead of the one the model is working on
    pub prefetch: usize,
}

impl DataLoader {
    /// `len(data_loader)`: full batches only (drop_last).
    pub fn len(&self) -> usize {
        self.dataset.len() / self.batch_size
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `DistributedSampler.set_epoch(epoch); iter(sampler)`: a permutation of the indices
    /// (Fisher-Yates from the (seed, epoch) generator).
    pub fn sampler_indices(&self, epoch: u64) -> Vec<usize> {
        let mut rng = SampleRng::new(self.seed, epoch, u64::MAX);
        let mut idx: Vec<usize> = (0..self.dataset.len()).collect();
        for i in (1..idx.len()).rev() {
            let j = rng.randint(0, i as i64 + 1) as usize;
            idx.swap(i, j);
        }
        idx
    }

    /// The batches of `epoch` ([batch_size, 3, H, W] each), produced in the background.
    pub fn epoch(&self, epoch: u64) -> Result<Batches> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.num_workers.max(1))
            .build()
            .context("starting the data loader threads")?;
        let (tx, rx) = mpsc::sync_channel(self.prefetch.max(1));
        let (dataset, transform) = (self.dataset.clone(), self.transform.clone());
        let (seed, batch_size) = (self.seed, self.batch_size);
        let order = self.sampler_indices(epoch);
        let len = self.len();
        std::thread::spawn(move || {
            for batch in order.chunks_exact(batch_size) {
                let samples: Result<Vec<Tensor>> = pool.install(|| {
                    use rayon::prelude::*;
                    batch
                        .par_iter()
                        .map(|&i| {
                            let img = dataset
                                .load(i)
                                .with_context(|| format!("dataset sample {i}"))?;
                            let mut rng = SampleRng::new(seed, epoch, i as u64);
                            Ok(transform(&img, &mut rng))
                        })
                        .collect()
                });
                let batch = samples.map(|s| Tensor::stack(&s, 0));
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return; // the consumer stopped, or nothing more to send
                }
            }
        });
        Ok(Batches { rx, left: len })
    }
}

/// The batches of one epoch, in order.
pub struct Batches {
    rx: mpsc::Receiver<Result<Tensor>>,
    left: usize,
}

impl Iterator for Batches {
    type Item = Result<Tensor>;
    fn next(&mut self) -> Option<Result<Tensor>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(
            self.rx
                .recv()
                .unwrap_or_else(|_| Err(anyhow!("the data loader thread stopped"))),
        )
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Batches {}
