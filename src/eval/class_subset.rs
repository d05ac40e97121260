//! Not in the reference: `mae eval --class_subset imagenet-1k|imagenet-a|imagenet-r`. Class
//! folders are read as WordNet ids and numbered by the ImageNet-1k class indices, so that a
//! folder holding only some of the classes (ImageNet-A, -R and -Sketch folders, a partial copy)
//! is scored against the right logits. ImageNet-A and -R hold 200 of the 1000 classes; they are
//! scored as their authors and timm's validate.py (`--valid-labels`) score them: the 1000-way
//! logits taken at the subset's indices (`output[:, valid_labels]`), then the loss and top-1 /
//! top-5 over those 200. The lists are timm's package data (data/SOURCES.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use tch::{Device, Tensor};

use crate::torchvision::datasets::ImageFolder;
use crate::util::datasets::Split;

const IMAGENET_SYNSETS: &str = include_str!("data/imagenet_synsets.txt");
const IMAGENET_A_SYNSETS: &str = include_str!("data/imagenet_a_synsets.txt");
const IMAGENET_A_INDICES: &str = include_str!("data/imagenet_a_indices.txt");
const IMAGENET_R_SYNSETS: &str = include_str!("data/imagenet_r_synsets.txt");
const IMAGENET_R_INDICES: &str = include_str!("data/imagenet_r_indices.txt");
const IMAGENET_LEMMAS: &str = include_str!("data/imagenet_synset_to_lemma_1k.txt");

/// The number of ImageNet-1k classes, the head size every subset is read from.
pub const IMAGENET_1K: i64 = 1000;

/// Which classes a folder of wnid folders holds (`--class_subset`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ClassSubset {
    /// The 1000 ImageNet-1k classes (ImageNet val, ImageNet-Sketch, each ImageNet-C set)
    #[value(name = "imagenet-1k")]
    #[serde(rename = "imagenet-1k")]
    Imagenet1k,
    /// ImageNet-A's 200 classes
    #[value(name = "imagenet-a")]
    #[serde(rename = "imagenet-a")]
    ImagenetA,
    /// ImageNet-R's 200 classes
    #[value(name = "imagenet-r")]
    #[serde(rename = "imagenet-r")]
    ImagenetR,
}

/// A subset's classes: their wnids in class order and, for a 200-class subset, their indices
/// among the 1000.
struct Classes {
    wnids: Vec<&'static str>,
    indices: Option<Vec<i64>>,
}

fn lines(text: &'static str) -> Vec<&'static str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

fn parse_indices(text: &'static str) -> Vec<i64> {
    lines(text)
        .iter()
        .map(|l| l.parse().expect("timm's index files hold integers"))
        .collect()
}

impl ClassSubset {
    pub fn name(self) -> &'static str {
        match self {
            ClassSubset::Imagenet1k => "imagenet-1k",
            ClassSubset::ImagenetA => "imagenet-a",
            ClassSubset::ImagenetR => "imagenet-r",
        }
    }

    fn classes(self) -> &'static Classes {
        static SETS: OnceLock<[Classes; 3]> = OnceLock::new();
        let sets = SETS.get_or_init(|| {
            [
                Classes {
                    wnids: lines(IMAGENET_SYNSETS),
                    indices: None,
                },
                Classes {
                    wnids: lines(IMAGENET_A_SYNSETS),
                    indices: Some(parse_indices(IMAGENET_A_INDICES)),
                },
                Classes {
                    wnids: lines(IMAGENET_R_SYNSETS),
                    indices: Some(parse_indices(IMAGENET_R_INDICES)),
                },
            ]
        });
        &sets[self as usize]
    }

    /// The subset's wnids, in the order of its targets and of its restricted logits.
    pub fn wnids(self) -> &'static [&'static str] {
        &self.classes().wnids
    }

    /// The target of a class folder named `wnid`: its position in [`wnids`](Self::wnids).
    pub fn target(self, wnid: &str) -> Option<i64> {
        self.wnids().binary_search(&wnid).ok().map(|i| i as i64)
    }

    /// `folder` as the split the loaders read, numbered by the subset: a sample's target is
    /// the position of its class folder's name among [`wnids`](Self::wnids), which become the
    /// classes. A folder that is not one of the subset's wnids is an error naming it.
    pub fn split(self, folder: &ImageFolder) -> Result<Split> {
        let by_class = folder
            .classes
            .iter()
            .map(|wnid| match self.target(wnid) {
                Some(t) => Ok(t),
                None => bail!(
                    "{}: the class folder {wnid:?} is not a WordNet id of --class_subset {} \
                     ({} classes, e.g. {}); the class folders must be named by wnid",
                    folder.root.join(wnid).display(),
                    self.name(),
                    self.wnids().len(),
                    self.wnids()[0],
                ),
            })
            .collect::<Result<Vec<i64>>>()?;
        let samples: Vec<(PathBuf, i64)> = folder
            .samples
            .iter()
            .map(|(p, c)| (p.clone(), by_class[*c as usize]))
            .collect();
        let targets = samples.iter().map(|s| s.1).collect();
        let folder = Arc::new(ImageFolder {
            root: folder.root.clone(),
            classes: self.wnids().iter().map(|w| w.to_string()).collect(),
            samples,
        });
        Ok(Split {
            dataset: folder.clone(),
            targets: Arc::new(targets),
            num_classes: self.wnids().len() as i64,
            folder: Some(folder),
        })
    }

    /// The columns of the 1000-way logits that [`restrict`](Self::restrict) keeps, on `device`;
    /// `None` for ImageNet-1k, which keeps them all.
    pub fn logit_indices(self, device: Device) -> Option<Tensor> {
        let indices = self.classes().indices.as_ref()?;
        Some(Tensor::from_slice(indices).to_device(device))
    }

    /// Checks that a classifier's head is the 1000-way ImageNet one every subset reads from.
    pub fn check_head(self, num_classes: i64) -> Result<()> {
        if num_classes != IMAGENET_1K {
            bail!(
                "--class_subset {} reads the 1000 ImageNet-1k logits; the model has {num_classes} classes",
                self.name()
            );
        }
        Ok(())
    }
}

/// `output[:, valid_labels]`: the logits of the subset's classes, [B, 1000] → [B, 200].
pub fn restrict(logits: &Tensor, indices: Option<&Tensor>) -> Tensor {
    match indices {
        Some(i) => logits.index_select(1, i),
        None => logits.shallow_clone(),
    }
}

/// The readable name of each ImageNet-1k class, in class order: timm's
/// `ImageNetInfo().label_descriptions()` (the WordNet lemmas, e.g. `tabby, tabby cat`).
pub fn imagenet_lemmas() -> Vec<&'static str> {
    let by_wnid: HashMap<&str, &str> = lines(IMAGENET_LEMMAS)
        .into_iter()
        .filter_map(|l| l.split_once('\t'))
        .collect();
    ClassSubset::Imagenet1k
        .wnids()
        .iter()
        .map(|w| by_wnid.get(w).copied().unwrap_or(w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_consistent() {
        let all = ClassSubset::Imagenet1k.wnids();
        assert_eq!(all.len(), 1000);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        for subset in [ClassSubset::ImagenetA, ClassSubset::ImagenetR] {
            let wnids = subset.wnids();
            let indices = subset.classes().indices.as_ref().unwrap();
            assert_eq!((wnids.len(), indices.len()), (200, 200));
            for (w, &i) in wnids.iter().zip(indices) {
                assert_eq!(all[i as usize], *w, "{} index {i}", subset.name());
                assert_eq!(
                    subset.target(w),
                    Some(wnids.iter().position(|x| x == w).unwrap() as i64)
                );
            }
        }
        let lemmas = imagenet_lemmas();
        assert_eq!(lemmas.len(), 1000);
        assert_eq!(lemmas[0], "tench, Tinca tinca");
        assert_eq!(lemmas[281], "tabby, tabby cat");
        assert!(
            lemmas.iter().zip(all).all(|(l, w)| l != w),
            "every class has a lemma"
        );
    }

    #[test]
    fn restrict_takes_the_columns() {
        let logits = Tensor::arange(2 * 1000, (tch::Kind::Float, Device::Cpu)).view([2, 1000]);
        let idx = ClassSubset::ImagenetA.logit_indices(Device::Cpu);
        let r = restrict(&logits, idx.as_ref());
        assert_eq!(r.size(), [2, 200]);
        assert_eq!(r.double_value(&[1, 0]), 1006.0); // imagenet-a's first class is 1k index 6
        assert_eq!(restrict(&logits, None).size(), [2, 1000]);
    }
}
