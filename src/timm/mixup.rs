//! timm/data/mixup.py (timm 0.3.2, as pinned by MAE): `Mixup` in its three modes (`batch`, `pair`,
//! `elem`), its soft targets (`one_hot`, `mixup_target`) and CutMix boxes (`rand_bbox`, `rand_bbox_minmax`,
//! `cutmix_bbox_and_lam`). Random draws come from torch's global generator.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

pub fn one_hot(x: &Tensor, num_classes: i64, on_value: f64, off_value: f64) -> Tensor {
    let x = x.to_kind(Kind::Int64).view([-1, 1]);
    Tensor::full(
        [x.size()[0], num_classes],
        off_value,
        (Kind::Float, x.device()),
    )
    .scatter_value(1, &x, on_value)
}

pub fn mixup_target(target: &Tensor, num_classes: i64, lam: f64, smoothing: f64) -> Tensor {
    let off_value = smoothing / num_classes as f64;
    let on_value = 1. - smoothing + off_value;
    let y1 = one_hot(target, num_classes, on_value, off_value);
    let y2 = one_hot(&target.flip([0]), num_classes, on_value, off_value);
    y1 * lam + y2 * (1. - lam)
}

/// `mixup_target` with one lam per sample (`pair` and `elem` modes): timm passes them as a float32
/// `[B, 1]` tensor, so the mixing runs in float32.
pub fn mixup_target_per_sample(
    target: &Tensor,
    num_classes: i64,
    lam: &[f32],
    smoothing: f64,
) -> Tensor {
    let off_value = smoothing / num_classes as f64;
    let on_value = 1. - smoothing + off_value;
    let y1 = one_hot(target, num_classes, on_value, off_value);
    let y2 = one_hot(&target.flip([0]), num_classes, on_value, off_value);
    let lam = Tensor::from_slice(lam)
        .to_device(target.device())
        .unsqueeze(1);
    let one_minus = lam.ones_like() - &lam;
    y1 * lam + y2 * one_minus
}

/// `n` draws of `np.random.rand` from torch's generator.
fn rand(n: usize) -> Vec<f64> {
    let t = Tensor::rand([n as i64], (Kind::Double, Device::Cpu));
    Vec::<f64>::try_from(&t).expect("a double tensor")
}

/// `n` draws of `np.random.beta(a, a)` as X / (X + Y), X, Y ~ Gamma(a), from torch's generator.
fn beta(a: f64, n: usize) -> Vec<f64> {
    let g = Tensor::full([2, n as i64], a, (Kind::Double, Device::Cpu)).internal_standard_gamma();
    let (x, y) = (g.get(0), g.get(1));
    Vec::<f64>::try_from(&(&x / (&x + &y))).expect("a double tensor")
}

/// A CutMix box `(yl, yh, xl, xh)`: rows yl..yh, columns xl..xh.
pub type BBox = (i64, i64, i64, i64);

/// `np.random.randint(lo, hi)` from torch's generator.
fn randint(lo: i64, hi: i64) -> i64 {
    Tensor::randint_low(lo, hi, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0])
}

/// Standard CutMix bounding-box: a random square-ish box of area ~(1 - lam) centred anywhere.
pub fn rand_bbox(img_h: i64, img_w: i64, lam: f64) -> BBox {
    let ratio = (1. - lam).sqrt();
    let (cut_h, cut_w) = ((img_h as f64 * ratio) as i64, (img_w as f64 * ratio) as i64);
    let cy = randint(0, img_h);
    let cx = randint(0, img_w);
    let yl = (cy - cut_h / 2).clamp(0, img_h);
    let yh = (cy + cut_h / 2).clamp(0, img_h);
    let xl = (cx - cut_w / 2).clamp(0, img_w);
    let xh = (cx + cut_w / 2).clamp(0, img_w);
    (yl, yh, xl, xh)
}

/// Min-Max CutMix bounding-box: box sides uniform in `minmax` fractions of the image.
pub fn rand_bbox_minmax(img_h: i64, img_w: i64, minmax: (f64, f64)) -> BBox {
    let cut_h = randint(
        (img_h as f64 * minmax.0) as i64,
        (img_h as f64 * minmax.1) as i64,
    );
    let cut_w = randint(
        (img_w as f64 * minmax.0) as i64,
        (img_w as f64 * minmax.1) as i64,
    );
    let yl = randint(0, img_h - cut_h);
    let xl = randint(0, img_w - cut_w);
    (yl, yl + cut_h, xl, xl + cut_w)
}

/// The box and the lam corrected to the box's area when `correct_lam` (or with minmax).
pub fn cutmix_bbox_and_lam(
    img_h: i64,
    img_w: i64,
    lam: f64,
    ratio_minmax: Option<(f64, f64)>,
    correct_lam: bool,
) -> (BBox, f64) {
    let (yl, yu, xl, xu) = match ratio_minmax {
        Some(mm) => rand_bbox_minmax(img_h, img_w, mm),
        None => rand_bbox(img_h, img_w, lam),
    };
    let mut lam = lam;
    if correct_lam || ratio_minmax.is_some() {
        let bbox_area = (yu - yl) * (xu - xl);
        lam = 1. - bbox_area as f64 / (img_h * img_w) as f64;
    }
    ((yl, yu, xl, xu), lam)
}

/// How `Mixup` draws its params: one lam for the whole `Batch`, one per mirrored `Pair`
/// (sample i and B-1-i mix with each other), or one per `Elem`ent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixupMode {
    Batch,
    Pair,
    Elem,
}

/// Mixup/Cutmix that applies different params to each element or whole batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixup {
    pub mixup_alpha: f64,
    pub cutmix_alpha: f64,
    pub cutmix_minmax: Option<(f64, f64)>,
    pub mix_prob: f64,
    pub switch_prob: f64,
    pub label_smoothing: f64,
    pub num_classes: i64,
    pub correct_lam: bool,
    pub mixup_enabled: bool,
    pub mode: MixupMode,
}

impl Mixup {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mixup_alpha: f64,
        cutmix_alpha: f64,
        cutmix_minmax: Option<(f64, f64)>,
        prob: f64,
        switch_prob: f64,
        mode: &str,
        label_smoothing: f64,
        num_classes: i64,
    ) -> Result<Self> {
        let mode = match mode {
            "batch" => MixupMode::Batch,
            "pair" => MixupMode::Pair,
            "elem" => MixupMode::Elem,
            _ => bail!("--mixup_mode {mode}: expected batch, pair or elem"),
        };
        // cutmix_minmax forces cutmix on with alpha 1.0
        let cutmix_alpha = if cutmix_minmax.is_some() {
            1.0
        } else {
            cutmix_alpha
        };
        Ok(Mixup {
            mixup_alpha,
            cutmix_alpha,
            cutmix_minmax,
            mix_prob: prob,
            switch_prob,
            label_smoothing,
            num_classes,
            correct_lam: true,
            mixup_enabled: true,
            mode,
        })
    }

    /// `_params_per_batch`: (lam, use_cutmix).
    pub fn params_per_batch(&self) -> (f64, bool) {
        let mut lam = 1.;
        let mut use_cutmix = false;
        if self.mixup_enabled && rand(1)[0] < self.mix_prob {
            let lam_mix = if self.mixup_alpha > 0. && self.cutmix_alpha > 0. {
                use_cutmix = rand(1)[0] < self.switch_prob;
                beta(
                    if use_cutmix {
                        self.cutmix_alpha
                    } else {
                        self.mixup_alpha
                    },
                    1,
                )[0]
            } else if self.mixup_alpha > 0. {
                beta(self.mixup_alpha, 1)[0]
            } else if self.cutmix_alpha > 0. {
                use_cutmix = true;
                beta(self.cutmix_alpha, 1)[0]
            } else {
                unreachable!("One of mixup_alpha > 0., cutmix_alpha > 0., cutmix_minmax not None should be true.")
            };
            lam = lam_mix;
        }
        (lam, use_cutmix)
    }

    /// `_params_per_elem(batch_size)`: a float32 lam and a use_cutmix flag per sample.
    pub fn params_per_elem(&self, batch_size: usize) -> (Vec<f32>, Vec<bool>) {
        let mut lam = vec![1f32; batch_size];
        let mut use_cutmix = vec![false; batch_size];
        if self.mixup_enabled {
            let lam_mix: Vec<f64> = if self.mixup_alpha > 0. && self.cutmix_alpha > 0. {
                use_cutmix = rand(batch_size)
                    .into_iter()
                    .map(|r| r < self.switch_prob)
                    .collect();
                let cut = beta(self.cutmix_alpha, batch_size);
                let mix = beta(self.mixup_alpha, batch_size);
                (0..batch_size)
                    .map(|i| if use_cutmix[i] { cut[i] } else { mix[i] })
                    .collect()
            } else if self.mixup_alpha > 0. {
                beta(self.mixup_alpha, batch_size)
            } else if self.cutmix_alpha > 0. {
                use_cutmix = vec![true; batch_size];
                beta(self.cutmix_alpha, batch_size)
            } else {
                unreachable!("One of mixup_alpha > 0., cutmix_alpha > 0., cutmix_minmax not None should be true.")
            };
            for (i, r) in rand(batch_size).into_iter().enumerate() {
                if r < self.mix_prob {
                    lam[i] = lam_mix[i] as f32;
                }
            }
        }
        (lam, use_cutmix)
    }

    /// `_mix_batch` on x [B, C, H, W] in place, given the drawn params and (for cutmix) the box
    /// with its corrected lam. Returns the lam of the targets.
    pub fn mix_batch_with(x: &mut Tensor, lam: f64, cutmix: Option<BBox>) -> f64 {
        if lam == 1. {
            return 1.;
        }
        tch::no_grad(|| match cutmix {
            Some((yl, yh, xl, xh)) => {
                let flipped = x
                    .flip([0])
                    .narrow(2, yl, yh - yl)
                    .narrow(3, xl, xh - xl)
                    .copy();
                x.narrow(2, yl, yh - yl)
                    .narrow(3, xl, xh - xl)
                    .copy_(&flipped);
            }
            None => {
                let x_flipped = x.flip([0]) * (1. - lam);
                let _ = x.g_mul_scalar_(lam).g_add_(&x_flipped);
            }
        });
        lam
    }

    /// `_mix_elem` (`pair == false`) and `_mix_pair` on x [B, C, H, W] in place, given the drawn
    /// per-sample params (B of them for elem, B/2 for pair) and a CutMix box source called once per
    /// cutmix sample with (H, W, lam). Returns the per-sample target lams (B of them).
    pub fn mix_per_sample_with(
        x: &mut Tensor,
        pair: bool,
        mut lam: Vec<f32>,
        use_cutmix: &[bool],
        mut cutmix_box: impl FnMut(i64, i64, f64) -> (BBox, f64),
    ) -> Vec<f32> {
        let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
        tch::no_grad(|| {
            let x_orig = x.copy();
            for i in 0..lam.len() {
                let j = b - i as i64 - 1;
                let li = lam[i];
                if li == 1. {
                    continue;
                }
                let (mut xi, mut xj) = (x.get(i as i64), x.get(j));
                let (oi, oj) = (x_orig.get(i as i64), x_orig.get(j));
                if use_cutmix[i] {
                    let ((yl, yh, xl, xh), corrected) = cutmix_box(h, w, li as f64);
                    let region = |t: &Tensor| t.narrow(1, yl, yh - yl).narrow(2, xl, xh - xl);
                    region(&xi).copy_(&region(&oj));
                    if pair {
                        region(&xj).copy_(&region(&oi));
                    }
                    lam[i] = corrected as f32;
                } else {
                    // lam is a numpy float32 scalar in timm: 1 - lam rounds in float32
                    let (l, one_minus) = (li as f64, (1f32 - li) as f64);
                    let mixed = &oi * l + &oj * one_minus;
                    xi.copy_(&mixed);
                    if pair {
                        xj.copy_(&(&oj * l + &oi * one_minus));
                    }
                }
            }
        });
        if pair {
            let mirrored: Vec<f32> = lam.iter().rev().copied().collect();
            lam.extend(mirrored);
        }
        lam
    }

    /// `mixup_fn(samples, targets)`: mixed images (in place) and soft targets [B, num_classes].
    pub fn call(&self, x: &mut Tensor, target: &Tensor) -> Tensor {
        let batch_size = x.size()[0] as usize;
        assert!(
            batch_size.is_multiple_of(2),
            "Batch size should be even when using this"
        );
        let cutmix_box =
            |h, w, lam| cutmix_bbox_and_lam(h, w, lam, self.cutmix_minmax, self.correct_lam);
        match self.mode {
            MixupMode::Batch => {
                let (lam, use_cutmix) = self.params_per_batch();
                let lam = if lam == 1. {
                    1.
                } else if use_cutmix {
                    let (h, w) = (x.size()[2], x.size()[3]);
                    let (bbox, lam) = cutmix_box(h, w, lam);
                    Self::mix_batch_with(x, lam, Some(bbox))
                } else {
                    Self::mix_batch_with(x, lam, None)
                };
                mixup_target(target, self.num_classes, lam, self.label_smoothing)
            }
            MixupMode::Pair | MixupMode::Elem => {
                let pair = self.mode == MixupMode::Pair;
                let n = if pair { batch_size / 2 } else { batch_size };
                let (lam, use_cutmix) = self.params_per_elem(n);
                let lam = Self::mix_per_sample_with(x, pair, lam, &use_cutmix, cutmix_box);
                mixup_target_per_sample(target, self.num_classes, &lam, self.label_smoothing)
            }
        }
    }
}
