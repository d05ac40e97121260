//! Same-seed masking: after `tch::manual_seed(s)` the Rust model masks the patches that the
//! official `torch.manual_seed(s); noise = torch.rand(N, L)` masks (CPU generator). The test runs
//! in a process of its own, so that no other test draws from the global generator in between.

use crate::common;

use crate::common::{load_io, parity_fixtures};
use mae::models_mae::{self, MaeConfig};
use tch::{nn, Device, Kind, Tensor};

#[test]
fn manual_seed_masks_the_same_patches_as_pytorch() {
    let dir = parity_fixtures("tiny");
    if common::in_own_process() {
        return;
    }
    let io = load_io(&dir, "masking");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models_mae::mae_vit_tiny_patch4(&vs.root(), MaeConfig::default());
    let imgs = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
    let mut n_checked = 0;
    for seed in [0, 1, 7, 42, 2024] {
        for (n, l, ratio) in [(3, 64, 0.75), (2, 196, 0.75), (2, 256, 0.5)] {
            let key = |what: &str| format!("{what}_{seed}_{n}_{l}_{ratio}");
            // random_masking on any [N, L, D] sequence
            tch::manual_seed(seed);
            let x = Tensor::zeros([n, l, 4], (Kind::Float, Device::Cpu));
            let (_, mask, ids_restore) = model.random_masking(&x, ratio, None).unwrap();
            assert!(mask.equal(&io[&key("mask")]), "{}", key("mask"));
            assert!(
                ids_restore.equal(&io[&key("ids_restore")]),
                "{}",
                key("ids_restore")
            );
            n_checked += 1;
        }
        // the whole forward draws the noise at the same point as models_mae.py
        tch::manual_seed(seed);
        let (_, _, mask) = tch::no_grad(|| model.forward(&imgs, 0.75)).unwrap();
        assert!(
            mask.equal(&io[&format!("mask_{seed}_3_64_0.75")]),
            "forward, seed {seed}"
        );
    }
    assert_eq!(n_checked, 15);
}
