//! timm/data/random_erasing.py: `RandomErasing` on a normalized image tensor, as
//! `create_transform` adds it after `Normalize` (`device='cpu'`, one split).

use tch::{Kind, Tensor};

use crate::torchvision::transforms::{round_half_even, SampleRng};

/// Randomly selects a rectangle region in an image and erases its pixels ('Random Erasing Data
/// Augmentation' by Zhong et al.). `mode`: 'const' (zeros), 'rand' (one normal colour per
/// channel) or 'pixel' (a normal value per pixel).
#[derive(Debug, Clone, PartialEq)]
pub struct RandomErasing {
    pub probability: f64,
    pub min_area: f64,
    pub max_area: f64,
    pub log_aspect_ratio: (f64, f64),
    pub min_count: i64,
    pub max_count: i64,
    pub mode: String,
}

impl RandomErasing {
    /// `RandomErasing(probability, mode=mode, max_count=count)` with timm's other defaults
    /// (min_area 0.02, max_area 1/3, min_aspect 0.3, min_count 1).
    pub fn new(probability: f64, mode: &str, max_count: i64) -> anyhow::Result<Self> {
        let mode = mode.to_lowercase();
        if !["const", "rand", "pixel"].contains(&mode.as_str()) {
            anyhow::bail!("--remode {mode}: expected const, rand or pixel");
        }
        let (min_aspect, max_aspect): (f64, f64) = (0.3, 1. / 0.3);
        Ok(RandomErasing {
            probability,
            min_area: 0.02,
            max_area: 1. / 3.,
            log_aspect_ratio: (min_aspect.ln(), max_aspect.ln()),
            min_count: 1,
            max_count: max_count.max(1),
            mode,
        })
    }

    /// The boxes `_erase` draws for an image of img_h × img_w: (top, left, h, w) each.
    pub fn boxes(&self, img_h: i64, img_w: i64, rng: &mut SampleRng) -> Vec<(i64, i64, i64, i64)> {
        let uniform = |rng: &mut SampleRng, a: f64, b: f64| a + (b - a) * unit(rng);
        let mut out = Vec::new();
        if unit(rng) > self.probability {
            return out;
        }
        let area = (img_h * img_w) as f64;
        let count = if self.min_count == self.max_count {
            self.min_count
        } else {
            rng.randint(self.min_count, self.max_count + 1)
        };
        for _ in 0..count {
            for _attempt in 0..10 {
                let target_area = uniform(rng, self.min_area, self.max_area) * area / count as f64;
                let aspect_ratio =
                    uniform(rng, self.log_aspect_ratio.0, self.log_aspect_ratio.1).exp();
                let h = round_half_even((target_area * aspect_ratio).sqrt());
                let w = round_half_even((target_area / aspect_ratio).sqrt());
                if w < img_w && h < img_h {
                    let top = rng.randint(0, img_h - h + 1);
                    let left = rng.randint(0, img_w - w + 1);
                    out.push((top, left, h, w));
                    break;
                }
            }
        }
        out
    }

    /// `__call__` on one image [C, H, W] (float32, normalized), in place.
    pub fn apply(&self, img: &mut Tensor, rng: &mut SampleRng) {
        let (chan, img_h, img_w) = (img.size()[0], img.size()[1], img.size()[2]);
        for (top, left, h, w) in self.boxes(img_h, img_w, rng) {
            let fill: Vec<f32> = match self.mode.as_str() {
                "pixel" => (0..chan * h * w).map(|_| normal(rng)).collect(),
                "rand" => (0..chan)
                    .flat_map(|_| std::iter::repeat_n(normal(rng), (h * w) as usize))
                    .collect(),
                _ => vec![0.; (chan * h * w) as usize],
            };
            let fill = Tensor::from_slice(&fill)
                .view([chan, h, w])
                .to_kind(Kind::Float);
            img.narrow(1, top, h).narrow(2, left, w).copy_(&fill);
        }
    }
}

/// `random.random()`: uniform in [0, 1) with 53 bits.
fn unit(rng: &mut SampleRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal value (Box-Muller), as `torch.empty(..).normal_()` draws them.
fn normal(rng: &mut SampleRng) -> f32 {
    let u1 = 1. - unit(rng); // (0, 1]
    let u2 = unit(rng);
    ((-2. * u1.ln()).sqrt() * (2. * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_inside_and_area_fraction() {
        let re = RandomErasing::new(1.0, "pixel", 1).unwrap();
        let (mut n, mut frac) = (0, 0.);
        for i in 0..2000 {
            let mut rng = SampleRng::new(0, 0, i);
            for (t, l, h, w) in re.boxes(32, 32, &mut rng) {
                assert!(t >= 0 && l >= 0 && t + h <= 32 && l + w <= 32 && h > 0 && w > 0);
                n += 1;
                frac += (h * w) as f64 / 1024.;
            }
        }
        // ten attempts nearly always succeed; the mean area is ~(0.02 + 1/3) / 2
        assert!(n > 1950, "{n}");
        let mean = frac / n as f64;
        assert!((mean - 0.177).abs() < 0.02, "{mean}");
    }
}
