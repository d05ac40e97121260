//! timm/data/mixup.py (timm 0.3.2, as pinned by MAE): `Mixup` in batch mode, its soft targets
//! (`one_hot`, `mixup_target`) and CutMix boxes (`rand_bbox`, `rand_bbox_minmax`,
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

/// Mixup/Cutmix that applies different params to each element or whole batch (batch mode here).
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
        if mode != "batch" {
            bail!("--mixup_mode {mode}: only 'batch' is ported (the official default)");
        }
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
        })
    }

    /// `_params_per_batch`: (lam, use_cutmix).
    pub fn params_per_batch(&self) -> (f64, bool) {
        let rand = || Tensor::rand([1], (Kind::Double, Device::Cpu)).double_value(&[0]);
        let beta = |a: f64| {
            // Beta(a, a) as X / (X + Y), X, Y ~ Gamma(a)
            let g = Tensor::full([2], a, (Kind::Double, Device::Cpu)).internal_standard_gamma();
            let (x, y) = (g.double_value(&[0]), g.double_value(&[1]));
            x / (x + y)
        };
        let mut lam = 1.;
        let mut use_cutmix = false;
        if self.mixup_enabled && rand() < self.mix_prob {
            let lam_mix = if self.mixup_alpha > 0. && self.cutmix_alpha > 0. {
                use_cutmix = rand() < self.switch_prob;
                beta(if use_cutmix {
                    self.cutmix_alpha
                } else {
                    self.mixup_alpha
                })
            } else if self.mixup_alpha > 0. {
                beta(self.mixup_alpha)
            } else if self.cutmix_alpha > 0. {
                use_cutmix = true;
                beta(self.cutmix_alpha)
            } else {
                unreachable!("One of mixup_alpha > 0., cutmix_alpha > 0., cutmix_minmax not None should be true.")
            };
            lam = lam_mix;
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

    /// `mixup_fn(samples, targets)`: mixed images (in place) and soft targets [B, num_classes].
    pub fn call(&self, x: &mut Tensor, target: &Tensor) -> Tensor {
        assert!(
            x.size()[0] % 2 == 0,
            "Batch size should be even when using this"
        );
        let (lam, use_cutmix) = self.params_per_batch();
        let lam = if lam == 1. {
            1.
        } else if use_cutmix {
            let (h, w) = (x.size()[2], x.size()[3]);
            let (bbox, lam) = cutmix_bbox_and_lam(h, w, lam, self.cutmix_minmax, self.correct_lam);
            Self::mix_batch_with(x, lam, Some(bbox))
        } else {
            Self::mix_batch_with(x, lam, None)
        };
        mixup_target(target, self.num_classes, lam, self.label_smoothing)
    }
}
