//! Fine-tuning augmentations against timm: Mixup / CutMix given the same λ and box give timm's
//! mixed images and soft targets exactly; RandomErasing's geometry and fill statistics.

use crate::common;

use mae::timm::mixup::{mixup_target, mixup_target_per_sample, Mixup};
use mae::timm::random_erasing::RandomErasing;
use mae::torchvision::transforms::SampleRng;
use tch::{Kind, Tensor};

const TIMM_MIXUP: &str = r#"
import sys, torch
import timm.data.mixup as M
from safetensors.torch import save_file
g = torch.Generator().manual_seed(0)
x = torch.randn(8, 3, 16, 16, generator=g)
t = torch.randint(0, 10, (8,), generator=g)
out = {"x": x.clone(), "t": t}
# mixup, lam 0.7, label smoothing 0.1
m = M.Mixup(mixup_alpha=1., cutmix_alpha=0., label_smoothing=0.1, num_classes=10)
m._params_per_batch = lambda: (0.7, False)
out["mix.x"], out["mix.t"] = m(x.clone(), t.clone())
# cutmix, drawn lam 0.6, box rows 3..11, cols 2..9 (lam corrected to the box's area)
m = M.Mixup(mixup_alpha=0., cutmix_alpha=1., label_smoothing=0.1, num_classes=10)
m._params_per_batch = lambda: (0.6, True)
M.cutmix_bbox_and_lam = lambda shape, lam, ratio_minmax=None, correct_lam=True, count=None: (
    (3, 11, 2, 9), 1. - (8 * 7) / float(shape[-2] * shape[-1]))
out["cut.x"], out["cut.t"] = m(x.clone(), t.clone())
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
"#;

#[test]
fn mixup_and_cutmix_equal_timm_given_lam_and_box() {
    let dir = common::scratch();
    let out = dir.join("mixup.safetensors");
    common::run_python_code(TIMM_MIXUP, &[out.to_str().unwrap()]);
    let r = common::read_tensors(&out);
    let (x, t) = (&r["x"], &r["t"]);

    let mut xm = x.copy();
    let lam = Mixup::mix_batch_with(&mut xm, 0.7, None);
    assert!(xm.equal(&r["mix.x"]), "mixup images differ from timm");
    assert!(
        mixup_target(t, 10, lam, 0.1).equal(&r["mix.t"]),
        "mixup targets"
    );

    let mut xc = x.copy();
    let lam = 1. - 56. / 256.;
    Mixup::mix_batch_with(&mut xc, lam, Some((3, 11, 2, 9)));
    assert!(xc.equal(&r["cut.x"]), "cutmix images differ from timm");
    assert!(
        mixup_target(t, 10, lam, 0.1).equal(&r["cut.t"]),
        "cutmix targets"
    );
}

const TIMM_MIXUP_PER_SAMPLE: &str = r#"
import sys, numpy as np, torch
import timm.data.mixup as M
from safetensors.torch import save_file
g = torch.Generator().manual_seed(1)
x = torch.randn(8, 3, 16, 16, generator=g)
t = torch.randint(0, 10, (8,), generator=g)
out = {"x": x.clone(), "t": t}
lams = np.array([0.7, 1.0, 0.6, 0.3, 0.9, 1.0, 0.55, 0.8], dtype=np.float32)
cuts = np.array([False, False, True, False, True, True, False, False])
M.cutmix_bbox_and_lam = lambda shape, lam, ratio_minmax=None, correct_lam=True, count=None: (
    (3, 11, 2, 9), 1. - (8 * 7) / float(shape[-2] * shape[-1]))
for mode in ["elem", "pair"]:
    m = M.Mixup(mixup_alpha=1., cutmix_alpha=1., label_smoothing=0.1, num_classes=10, mode=mode)
    m._params_per_elem = lambda n: (lams[:n].copy(), cuts[:n].copy())
    out[mode + ".x"], out[mode + ".t"] = m(x.clone(), t.clone())
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
"#;

/// `--mixup_mode elem` and `pair` given the same per-sample lams, cutmix flags and box: timm's
/// mixed images and soft targets exactly.
#[test]
fn per_sample_mixup_modes_equal_timm_given_lams_and_boxes() {
    let dir = common::scratch();
    let out = dir.join("mixup_per_sample.safetensors");
    common::run_python_code(TIMM_MIXUP_PER_SAMPLE, &[out.to_str().unwrap()]);
    let r = common::read_tensors(&out);
    let (x, t) = (&r["x"], &r["t"]);
    let lams = [0.7f32, 1.0, 0.6, 0.3, 0.9, 1.0, 0.55, 0.8];
    let cuts = [false, false, true, false, true, true, false, false];
    for (mode, n) in [("elem", 8), ("pair", 4)] {
        let mut xm = x.copy();
        let mut boxes = 0;
        let lam = Mixup::mix_per_sample_with(
            &mut xm,
            mode == "pair",
            lams[..n].to_vec(),
            &cuts[..n],
            |h, w, _| {
                boxes += 1;
                ((3, 11, 2, 9), 1. - 56. / (h * w) as f64)
            },
        );
        // a box per cutmix sample whose lam is not 1 (sample 5: cutmix flag, lam 1, untouched)
        let want = (0..n).filter(|&i| cuts[i] && lams[i] != 1.).count();
        assert_eq!(boxes, want, "{mode}");
        assert_eq!(lam.len(), 8);
        assert!(
            xm.equal(&r[&format!("{mode}.x")]),
            "{mode}: images differ from timm"
        );
        assert!(
            mixup_target_per_sample(t, 10, &lam, 0.1).equal(&r[&format!("{mode}.t")]),
            "{mode}: targets differ from timm"
        );
        assert!(!xm.equal(x), "{mode}: nothing mixed");
    }
}

/// Draws from torch's global generator after seeding it (so that the statistics below are those of
/// one fixed sample): runs in a process of its own.
#[test]
fn mixup_draws_follow_timm_rules() {
    if common::in_own_process() {
        return;
    }
    tch::manual_seed(0);
    // mixup only, prob 1: lam ~ Beta(0.8, 0.8), never cutmix
    let m = Mixup::new(0.8, 0., None, 1.0, 0.5, "batch", 0.1, 10).unwrap();
    let lams: Vec<f64> = (0..2000)
        .map(|_| m.params_per_batch())
        .map(|(l, c)| {
            assert!(!c);
            l
        })
        .collect();
    let mean = lams.iter().sum::<f64>() / lams.len() as f64;
    let var = lams.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lams.len() as f64;
    // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 0.0962 for a = 0.8
    assert!(
        (mean - 0.5).abs() < 0.02 && (var - 0.0962).abs() < 0.01,
        "{mean} {var}"
    );
    // both on: cutmix with switch_prob; mix_prob 0.5 leaves half the batches alone (lam 1)
    let m = Mixup::new(0.8, 1.0, None, 0.5, 0.5, "batch", 0.1, 10).unwrap();
    let draws: Vec<(f64, bool)> = (0..2000).map(|_| m.params_per_batch()).collect();
    let untouched = draws.iter().filter(|d| d.0 == 1.).count() as f64 / 2000.;
    let cut = draws.iter().filter(|d| d.1).count() as f64 / 2000.;
    assert!(
        (untouched - 0.5).abs() < 0.05 && (cut - 0.25).abs() < 0.04,
        "{untouched} {cut}"
    );
    // cutmix_minmax forces cutmix, alpha 1
    let m = Mixup::new(0., 0., Some((0.2, 0.8)), 1.0, 0.5, "batch", 0., 10).unwrap();
    assert_eq!(m.cutmix_alpha, 1.0);
    let e = Mixup::new(0.8, 0., None, 1., 0.5, "row", 0.1, 10).unwrap_err();
    assert!(e.to_string().contains("--mixup_mode row"), "{e}");
    // elem: about half the samples cut (switch_prob 0.5), a quarter untouched (prob 0.75)
    let m = Mixup::new(0.8, 1.0, None, 0.75, 0.5, "elem", 0.1, 10).unwrap();
    let (lam, cut) = m.params_per_elem(4000);
    let untouched = lam.iter().filter(|&&l| l == 1.).count() as f64 / 4000.;
    let cut = cut.iter().filter(|&&c| c).count() as f64 / 4000.;
    assert!(
        (untouched - 0.25).abs() < 0.03 && (cut - 0.5).abs() < 0.03,
        "{untouched} {cut}"
    );
    // pair mode on a batch of 6: three lams, mirrored onto the targets
    let m = Mixup::new(1.0, 0., None, 1.0, 0.5, "pair", 0., 4).unwrap();
    let mut x = Tensor::randn([6, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
    let t = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1]);
    let y = m.call(&mut x, &t);
    for i in 0..3 {
        let a = y.double_value(&[i, t.int64_value(&[i])]);
        let b = y.double_value(&[5 - i, t.int64_value(&[5 - i])]);
        assert!((a - b).abs() < 1e-6, "pair {i}: lam {a} vs mirrored {b}");
    }
}

#[test]
fn random_erasing_pixel_mode() {
    let re = RandomErasing::new(0.25, "pixel", 1).unwrap();
    let (mut erased, mut values) = (0, Vec::new());
    for i in 0..4000u64 {
        let mut rng = SampleRng::new(3, 0, i);
        let mut img = Tensor::full([3, 32, 32], 7., (Kind::Float, tch::Device::Cpu));
        re.apply(&mut img, &mut rng);
        let changed = img.ne(7.);
        let n = changed.sum(Kind::Int64).int64_value(&[]);
        if n > 0 {
            erased += 1;
            values.extend(Vec::<f32>::try_from(img.masked_select(&changed)).unwrap());
        }
    }
    // probability 0.25 of erasing; per-pixel N(0, 1) fill
    let p = erased as f64 / 4000.;
    assert!((p - 0.25).abs() < 0.03, "erased fraction {p}");
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(mean.abs() < 0.01 && (var - 1.).abs() < 0.02, "{mean} {var}");
}
