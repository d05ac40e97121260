//! models_vit.rs vs timm `VisionTransformer(global_pool='avg', fc_norm=True)` (the official
//! global-pool model) and its cls-token variant, with official-key weights written by
//! tools/fixtures/make_parity_fixtures.py (for B, L and H the encoder of the MAE fixture of the
//! same size with a new head: `common::vit_checkpoint`); ViT-H at 448 from a 224 checkpoint
//! through interpolate_pos_embed.

use crate::common::{
    big_model_lock, check, load_checkpoint, load_io, parity_fixtures, vit_checkpoint,
};
use mae::models_vit::{self, VitConfig};
use mae::timm::trunc_normal_;
use mae::timm::AttentionImpl;
use tch::{nn, Device, Tensor};

const TOL: f64 = 1e-5;

fn shallow(sd: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    sd.iter()
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect()
}

/// Logits (and pooled features) at the checkpoint's resolution with both attention kernels,
/// then, with `extra_img`, the same checkpoint loaded into a model at that resolution.
fn check_vit(
    group: &str,
    name: &str,
    global_pool: bool,
    cfg: VitConfig,
    extra_img: Option<i64>,
) -> f64 {
    let dir = parity_fixtures(group);
    let tag = if global_pool {
        name.to_string()
    } else {
        format!("{name}_cls_token")
    };
    let io = load_io(&dir, &format!("{tag}_io"));
    let sd = vit_checkpoint(&dir, &tag);
    let cfg = VitConfig {
        global_pool,
        drop_path_rate: 0.1,
        ..cfg
    };
    let mut worst = 0f64;
    {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut model = models_vit::build(name, &vs.root(), cfg.clone()).unwrap();
        model.load_checkpoint(&mut vs, shallow(&sd)).unwrap();
        for attn_impl in [AttentionImpl::Math, AttentionImpl::Sdpa] {
            model.set_attention_impl(attn_impl);
            tch::no_grad(|| {
                let feats = model.forward_features(&io["imgs"], false).unwrap();
                worst = worst.max(check(
                    &format!("{tag} {attn_impl:?} features"),
                    &feats,
                    &io["features"],
                    TOL,
                ));
                let logits = model.forward_t(&io["imgs"], false).unwrap();
                worst = worst.max(check(
                    &format!("{tag} {attn_impl:?} logits"),
                    &logits,
                    &io["logits"],
                    TOL,
                ));
            });
        }
    }
    if let Some(img) = extra_img {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = models_vit::build(
            name,
            &vs.root(),
            VitConfig {
                img_size: img,
                ..cfg
            },
        )
        .unwrap();
        model.load_checkpoint(&mut vs, sd).unwrap();
        let pe = check(
            &format!("{tag} pos_embed {img}"),
            &model.pos_embed,
            &io[&format!("pos_embed_{img}")],
            1e-6,
        );
        let logits = tch::no_grad(|| model.forward_t(&io[&format!("imgs_{img}")], false).unwrap());
        let e = check(
            &format!("{tag} logits {img}"),
            &logits,
            &io[&format!("logits_{img}")],
            TOL,
        );
        eprintln!("PARITY {tag} at {img}: pos_embed {pe:.3e}, logits {e:.3e}");
    }
    eprintln!("PARITY {tag}: worst relative error {worst:.3e}");
    worst
}

fn tiny() -> VitConfig {
    VitConfig {
        img_size: 32,
        num_classes: 10,
        ..Default::default()
    }
}

#[test]
fn tiny_global_pool_and_interpolation_to_48() {
    check_vit("tiny", "vit_tiny_patch4", true, tiny(), Some(48));
}

#[test]
fn tiny_cls_token() {
    check_vit("tiny", "vit_tiny_patch4", false, tiny(), None);
}

#[test]
fn base_patch16_global_pool_and_cls_token() {
    let _big = big_model_lock();
    check_vit(
        "vit_base",
        "vit_base_patch16",
        true,
        VitConfig::default(),
        None,
    );
    check_vit(
        "vit_base",
        "vit_base_patch16",
        false,
        VitConfig::default(),
        None,
    );
}

#[test]
fn large_patch16() {
    let _big = big_model_lock();
    check_vit(
        "vit_large",
        "vit_large_patch16",
        true,
        VitConfig::default(),
        None,
    );
}

#[test]
fn huge_patch14_224_and_448() {
    let _big = big_model_lock();
    check_vit(
        "vit_huge",
        "vit_huge_patch14",
        true,
        VitConfig::default(),
        Some(448),
    );
}

/// main_finetune.py `--finetune` with the tiny MAE checkpoint: decoder keys unexpected, exactly
/// the head (and fc_norm) missing, encoder features equal to timm loading the same checkpoint.
#[test]
fn finetune_from_pretrained_mae() {
    let dir = parity_fixtures("tiny");
    let io = load_io(&dir, "finetune_from_mae_io");
    for global_pool in [true, false] {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let cfg = VitConfig {
            global_pool,
            ..tiny()
        };
        let mut model = models_vit::vit_tiny_patch4(&vs.root(), cfg);
        let sd = load_checkpoint(&dir, "mae_vit_tiny_patch4");
        let msg = model.load_pretrained(&mut vs, sd, "head").unwrap();
        // manually initialize fc layer (main_finetune.py, as src/main_finetune.rs)
        trunc_normal_(&mut model.head.as_mut().unwrap().ws, 2e-5);
        let mut want = vec!["head.bias", "head.weight"];
        if global_pool {
            want.extend(["fc_norm.bias", "fc_norm.weight"]);
        }
        want.sort();
        assert_eq!(msg.missing_keys, want);
        assert!(msg.unexpected_keys.iter().any(|k| k == "mask_token"));
        assert!(msg
            .unexpected_keys
            .iter()
            .any(|k| k.starts_with("decoder_blocks.1.")));
        assert!(msg.unexpected_keys.iter().all(|k| k.starts_with("decoder")
            || k == "mask_token"
            || (global_pool && k.starts_with("norm."))));
        let head = &model.head.as_ref().unwrap().ws;
        let std = head.std(true).double_value(&[]);
        assert!((std - 2e-5).abs() < 0.2e-5, "head.weight std {std}");
        let feats = tch::no_grad(|| model.forward_features(&io["imgs"], false).unwrap());
        let e = check(
            "finetune features",
            &feats,
            &io[&format!("features_gp{}", global_pool as u8)],
            TOL,
        );
        eprintln!("PARITY finetune-from-MAE global_pool={global_pool}: features {e:.3e}");
    }
}
