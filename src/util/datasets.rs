//! Port of util/datasets.py: `build_dataset(is_train, args)` (ImageFolder of data_path/train or
//! data_path/val; here also Fashion-MNIST's train / test split) and `build_transform`, whose
//! training branch is timm's `create_transform(is_training=True)` as the official calls it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use image::RgbImage;
use tch::Tensor;

use crate::timm::auto_augment::RandAugment;
use crate::timm::random_erasing::RandomErasing;
use crate::torchvision::datasets::{
    CropBox, FashionMNIST, ImageFolder, ImageSource, FASHION_MNIST_ROOT,
};
use crate::torchvision::pil::Filter;
use crate::torchvision::transforms::{
    hflip, random_resized_crop_params, resized_crop, to_tensor_normalize, SampleRng,
    IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
};

/// A split: its images and their class indices.
pub struct Split {
    pub dataset: Arc<dyn ImageSource>,
    pub targets: Arc<Vec<i64>>,
    pub num_classes: i64,
    /// The ImageFolder behind `dataset` (its paths and class names), if it is one.
    pub folder: Option<Arc<ImageFolder>>,
}

/// The official default of `--data_path` (the FAIR cluster's ImageNet).
pub const DEFAULT_DATA_PATH: &str = "/datasets01/imagenet_full_size/061417/";

/// `build_dataset(is_train, args)`; `dataset` is `imagefolder` (data_path/train, data_path/val)
/// or `fashion_mnist` (train / test split; data_path left at [`DEFAULT_DATA_PATH`] means the
/// system's copy). Prints the dataset as the official `print(dataset)`.
pub fn build_dataset(is_train: bool, dataset: &str, data_path: &Path) -> Result<Split> {
    match dataset {
        "imagefolder" => {
            let root = data_path.join(if is_train { "train" } else { "val" });
            let ds = ImageFolder::new(&root).with_context(|| {
                format!(
                    "--data_path {}: expected class folders of images under {}",
                    data_path.display(),
                    root.display()
                )
            })?;
            println!("{ds}");
            let targets: Vec<i64> = ds.samples.iter().map(|s| s.1).collect();
            let ds = Arc::new(ds);
            Ok(Split {
                num_classes: ds.classes.len() as i64,
                targets: Arc::new(targets),
                dataset: ds.clone(),
                folder: Some(ds),
            })
        }
        "fashion_mnist" => {
            let root = if data_path == Path::new(DEFAULT_DATA_PATH) {
                PathBuf::from(FASHION_MNIST_ROOT)
            } else {
                data_path.to_path_buf()
            };
            let ds = FashionMNIST::new(&root, is_train)?;
            println!(
                "Dataset FashionMNIST\n    Number of datapoints: {}\n    Root location: {}\n    Split: {}",
                ds.len(),
                root.display(),
                if is_train { "Train" } else { "Test" }
            );
            Ok(Split {
                num_classes: 10,
                targets: Arc::new(ds.targets.clone()),
                dataset: Arc::new(ds),
                folder: None,
            })
        }
        d => anyhow::bail!("--dataset {d}: expected imagefolder or fashion_mnist"),
    }
}

/// `build_transform(is_train=True, args)`: timm `create_transform(input_size, is_training=True,
/// color_jitter, auto_augment, interpolation='bicubic', re_prob, re_mode, re_count, mean, std)`.
#[derive(Debug, Clone)]
pub struct TrainTransform {
    pub input_size: u32,
    pub rand_augment: Option<RandAugment>,
    pub random_erasing: Option<RandomErasing>,
}

impl TrainTransform {
    /// With an auto-augment policy timm turns colour jitter off, so `--color_jitter` only matters
    /// with `--aa none`, which is when it would be applied (not ported: an error). Only
    /// RandAugment policies (`rand-…-inc1`) are ported, not AutoAugment / AugMix.
    pub fn new(
        input_size: u32,
        aa: &str,
        color_jitter: Option<f64>,
        reprob: f64,
        remode: &str,
        recount: i64,
    ) -> Result<Self> {
        let rand_augment = if aa.is_empty() || aa == "none" {
            if color_jitter.is_some_and(|c| c > 0.) {
                anyhow::bail!("--color_jitter without --aa: ColorJitter is not ported yet");
            }
            None
        } else {
            Some(RandAugment::from_config(aa, IMAGENET_DEFAULT_MEAN)?)
        };
        let random_erasing = (reprob > 0.)
            .then(|| RandomErasing::new(reprob, remode, recount))
            .transpose()?;
        Ok(TrainTransform {
            input_size,
            rand_augment,
            random_erasing,
        })
    }

    /// RandomResizedCropAndInterpolation(input_size, scale 0.08–1, ratio 3/4–4/3, bicubic),
    /// RandomHorizontalFlip(0.5), RandAugment, ToTensor, Normalize(ImageNet), RandomErasing.
    pub fn apply(&self, img: &RgbImage, rng: &mut SampleRng) -> Tensor {
        let (i, j, h, w) = random_resized_crop_params(
            img.width(),
            img.height(),
            (0.08, 1.0),
            (3. / 4., 4. / 3.),
            rng,
        );
        let mut img = resized_crop(img, i, j, h, w, self.input_size, Filter::Bicubic);
        if rng.uniform(0., 1.) < 0.5 {
            img = hflip(&img);
        }
        if let Some(ra) = &self.rand_augment {
            img = ra.call(&img, rng);
        }
        let mut x = to_tensor_normalize(&img, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD);
        if let Some(re) = &self.random_erasing {
            re.apply(&mut x, rng);
        }
        x
    }
}

/// The first `n` images of a dataset (`torch.utils.data.Subset(ds, range(n))`).
struct Subset(Arc<dyn ImageSource>, usize);

impl ImageSource for Subset {
    fn len(&self) -> usize {
        self.1
    }
    fn load(&self, index: usize) -> Result<RgbImage> {
        self.0.load(index)
    }
    fn load_box(
        &self,
        index: usize,
        params: &mut dyn FnMut(u32, u32) -> CropBox,
        fast: Option<u32>,
    ) -> Result<(RgbImage, CropBox)> {
        self.0.load_box(index, params, fast)
    }
}

impl Split {
    /// Not in the official: the first `n` images only (`--train_subset`), for short runs.
    pub fn first(self, n: Option<usize>) -> Split {
        match n {
            Some(n) if n < self.dataset.len() => Split {
                dataset: Arc::new(Subset(self.dataset, n)),
                targets: Arc::new(self.targets[..n].to_vec()),
                num_classes: self.num_classes,
                folder: None,
            },
            _ => self,
        }
    }
}
