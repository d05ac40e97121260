//! models_mae.rs vs HuggingFace `ViTMAEForPreTraining` with the official weights mapped in
//! (tools/fixtures/make_parity_fixtures.py): same images, same explicit masking noise.

use crate::common::{big_model_lock, check, load_checkpoint, load_io, parity_fixtures};
use mae::models_mae::{self, MaeConfig};
use mae::timm::AttentionImpl;
use tch::{nn, Device};

const TOL: f64 = 1e-5;

/// Runs every (tag, mask_ratio) of the fixture with both attention kernels; returns the worst
/// relative error over latent, pred and the two losses.
fn check_mae(group: &str, name: &str, runs: &[(&str, f64)]) -> f64 {
    let dir = parity_fixtures(group);
    let io = load_io(&dir, &format!("{name}_io"));
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut model = models_mae::build(name, &vs.root(), MaeConfig::default()).unwrap();
    let report = model
        .load_checkpoint(&mut vs, load_checkpoint(&dir, name))
        .unwrap();
    assert!(report.is_clean(), "{report}");
    let imgs = &io["imgs"];
    let mut worst = 0f64;
    for attn_impl in [AttentionImpl::Math, AttentionImpl::Sdpa] {
        model.set_attention_impl(attn_impl);
        for (tag, mask_ratio) in runs {
            let what = |t: &str| format!("{name} {tag} {attn_impl:?} {t}");
            let noise = &io[&format!("{tag}.noise")];
            tch::no_grad(|| {
                let (latent, mask, ids_restore) = model
                    .forward_encoder(imgs, *mask_ratio, Some(noise))
                    .unwrap();
                assert!(mask.equal(&io[&format!("{tag}.mask")]), "{}", what("mask"));
                assert!(
                    ids_restore.equal(&io[&format!("{tag}.ids_restore")]),
                    "{}",
                    what("ids_restore")
                );
                worst = worst.max(check(
                    &what("latent"),
                    &latent,
                    &io[&format!("{tag}.latent")],
                    TOL,
                ));
                let pred = model.forward_decoder(&latent, &ids_restore).unwrap();
                worst = worst.max(check(
                    &what("pred"),
                    &pred,
                    &io[&format!("{tag}.pred")],
                    TOL,
                ));
                for norm_pix_loss in [false, true] {
                    model.norm_pix_loss = norm_pix_loss;
                    let want = &io[&format!("{tag}.loss_norm_pix{}", norm_pix_loss as u8)];
                    let (loss, pred2, mask2) = model
                        .forward_with_noise(imgs, *mask_ratio, Some(noise))
                        .unwrap();
                    assert!(
                        pred2.equal(&pred) && mask2.equal(&mask),
                        "{}",
                        what("forward")
                    );
                    worst = worst.max(check(&what("loss"), &loss.reshape([1]), want, TOL));
                }
            });
        }
    }
    eprintln!("PARITY {name}: worst relative error {worst:.3e}");
    worst
}

#[test]
fn tiny_mask_ratios_and_norm_pix_loss() {
    check_mae(
        "tiny",
        "mae_vit_tiny_patch4",
        &[("r75", 0.75), ("r50", 0.5)],
    );
}

#[test]
fn base_patch16_224() {
    let _big = big_model_lock();
    check_mae("mae_base", "mae_vit_base_patch16", &[("r75", 0.75)]);
}

#[test]
fn large_patch16_224() {
    let _big = big_model_lock();
    check_mae("mae_large", "mae_vit_large_patch16", &[("r75", 0.75)]);
}

#[test]
fn huge_patch14_224() {
    let _big = big_model_lock();
    check_mae("mae_huge", "mae_vit_huge_patch14", &[("r75", 0.75)]);
}

#[test]
fn unpatchify_inverts_patchify_on_the_fixture() {
    let dir = parity_fixtures("tiny");
    let io = load_io(&dir, "mae_vit_tiny_patch4_io");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models_mae::mae_vit_tiny_patch4(&vs.root(), MaeConfig::default());
    let x = model.patchify(&io["imgs"]).unwrap();
    assert_eq!(x.size(), [4, 64, 48]);
    assert!(model.unpatchify(&x).unwrap().equal(&io["imgs"]));
}
