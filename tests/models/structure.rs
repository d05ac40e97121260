//! Model structure and initialisation: VarStore keys and shapes against the official
//! state_dicts (tests/data/reference/official_state_dicts.json), `initialize_weights` statistics,
//! patchify / unpatchify, DropPath, strict / non-strict loading, model names.

use crate::common;
use std::collections::BTreeMap;

use mae::models_mae::{self, MaeConfig};
use mae::models_vit::{self, VitConfig};
use mae::timm::DropPath;
use mae::torch::state_dict::load_state_dict;
use mae::util::pos_embed::get_2d_sincos_pos_embed;
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

fn shapes(vs: &nn::VarStore) -> BTreeMap<String, Vec<i64>> {
    vs.variables()
        .into_iter()
        .map(|(k, t)| (k, t.size()))
        .collect()
}

#[test]
fn varstore_keys_and_shapes_are_the_official_state_dicts() {
    let mut checked = 0;
    for (name, keys) in common::official_state_dicts() {
        let vs = nn::VarStore::new(Device::Cpu);
        if name.starts_with("mae_") {
            models_mae::build(&name, &vs.root(), MaeConfig::default()).unwrap();
        } else if name.ends_with("_linprobe") {
            continue; // main_linprobe.py's BatchNorm + Linear head is built there, not in models_vit
        } else {
            let (arch, global_pool) = match name.strip_suffix("_cls_token") {
                Some(arch) => (arch, false),
                None => (name.as_str(), true),
            };
            models_vit::build(
                arch,
                &vs.root(),
                VitConfig {
                    global_pool,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let want: BTreeMap<String, Vec<i64>> = keys.into_iter().collect();
        let got = shapes(&vs);
        // tch renames a duplicate variable to `name__N` instead of failing
        assert!(
            got.keys().all(|k| !k.contains("__")),
            "{name}: duplicate VarStore names"
        );
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, extra {extra:?}"
        );
        for (k, s) in &want {
            assert_eq!(&got[k], s, "{name}: shape of {k}");
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
}

fn std(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).std(true).double_value(&[])
}

fn all_eq(t: &Tensor, v: f64) -> bool {
    t.eq(v).all().int64_value(&[]) != 0
}

#[test]
fn mae_initialize_weights() {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = MaeConfig::default();
    let model = models_mae::mae_vit_base_patch16(&vs.root(), cfg);
    // fixed sin-cos buffers: exact, in the VarStore, not trainable
    let want = get_2d_sincos_pos_embed(768, 14, true).unsqueeze(0);
    assert!(model.pos_embed.equal(&want) && !model.pos_embed.requires_grad());
    let want = get_2d_sincos_pos_embed(512, 14, true).unsqueeze(0);
    assert!(model.decoder_pos_embed.equal(&want) && !model.decoder_pos_embed.requires_grad());
    assert_eq!(vs.trainable_variables().len(), vs.len() - 2);

    for (k, t) in vs.variables() {
        let size = t.size();
        let close = |want: f64, tol: f64| {
            let s = std(&t);
            assert!((s / want - 1.).abs() < tol, "{k}: std {s} vs {want}");
        };
        match (k.as_str(), size.len()) {
            ("pos_embed" | "decoder_pos_embed", _) => {}
            ("cls_token" | "mask_token", _) => close(0.02, 0.1),
            // nn.Conv2d default, not touched by initialize_weights
            ("patch_embed.proj.bias", _) => close((1. / 768f64).sqrt() / 3f64.sqrt(), 0.1),
            ("patch_embed.proj.weight", 4) => close((2f64 / (768. + 768.)).sqrt(), 0.05),
            (_, 1) if k.ends_with(".bias") => assert!(all_eq(&t, 0.), "{k}"),
            (_, 1) => assert!(all_eq(&t, 1.), "{k}"),
            (_, 2) => {
                // xavier_uniform: U(±sqrt(6/(fan_in+fan_out))), std sqrt(2/(fan_in+fan_out))
                let fans = (size[0] + size[1]) as f64;
                close((2. / fans).sqrt(), 0.05);
                assert!(
                    t.abs().max().double_value(&[]) <= (6. / fans).sqrt() * (1. + 1e-6),
                    "{k}"
                );
            }
            _ => panic!("unexpected variable {k} {size:?}"),
        }
    }
}

#[test]
fn vit_init_and_drop_path_schedule() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models_vit::vit_base_patch16(&vs.root(), VitConfig::default());
    for (k, t) in vs.variables() {
        match t.dim() {
            1 if k.ends_with(".bias") && k != "patch_embed.proj.bias" => {
                assert!(all_eq(&t, 0.), "{k}")
            }
            1 if k.ends_with(".weight") => assert!(all_eq(&t, 1.), "{k}"),
            2 | 3 => {
                let s = std(&t);
                assert!(
                    (s / 0.02 - 1.).abs() < if k == "cls_token" { 0.15 } else { 0.05 },
                    "{k}: std {s}"
                );
            }
            _ => {}
        }
    }
    let dpr: Vec<f64> = model.blocks.iter().map(|b| b.drop_path.drop_prob).collect();
    assert_eq!(dpr[0], 0.);
    assert!(
        (dpr[11] - 0.1).abs() < 1e-7 && (dpr[1] - 0.1 / 11.).abs() < 1e-7,
        "{dpr:?}"
    );
}

#[test]
fn drop_path_is_per_sample_and_identity_in_eval() {
    let x = Tensor::ones([4000, 2, 3], (Kind::Float, Device::Cpu));
    let dp = DropPath::new(0.25);
    assert!(dp.forward_t(&x, false).equal(&x));
    let y = dp.forward_t(&x, true);
    let per_sample = y.amax([1, 2], false);
    assert!(
        y.amin([1, 2], false).equal(&per_sample),
        "a sample is dropped as a whole"
    );
    let kept = per_sample
        .gt(0.)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!((kept - 0.75).abs() < 0.03, "kept {kept}");
    assert!(all_eq(
        &per_sample.masked_select(&per_sample.gt(0.)),
        1. / 0.75
    ));
}

#[test]
fn patchify_layout_and_round_trip() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models_mae::mae_vit_tiny_patch4(&vs.root(), MaeConfig::default());
    let imgs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let x = model.patchify(&imgs).unwrap();
    assert_eq!(x.size(), [2, 64, 48]);
    // x[n, h*8 + w, (p*4 + q)*3 + c] = imgs[n, c, h*4 + p, w*4 + q]  ('nchpwq->nhwpqc')
    let (n, c, h, w, p, q) = (1, 2, 3, 5, 1, 2);
    let a = x.double_value(&[n, h * 8 + w, (p * 4 + q) * 3 + c]);
    assert_eq!(a, imgs.double_value(&[n, c, h * 4 + p, w * 4 + q]));
    assert!(model.unpatchify(&x).unwrap().equal(&imgs));
    let err = model
        .patchify(&Tensor::zeros([1, 3, 32, 30], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(
        err.to_string().contains("multiple of the patch size"),
        "{err}"
    );
    let err = model
        .forward(
            &Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu)),
            0.75,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("doesn't match model (32*32)"),
        "{err}"
    );
}

#[test]
fn load_state_dict_reports_like_pytorch() {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let cfg = VitConfig {
        img_size: 32,
        num_classes: 10,
        ..Default::default()
    };
    let model = models_vit::vit_tiny_patch4(&vs.root(), cfg);
    let mut sd: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().ones_like()))
        .collect();
    sd.retain(|(k, _)| k != "fc_norm.bias");
    sd.push((
        "decoder_embed.weight".into(),
        Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
    ));
    for (k, t) in sd.iter_mut() {
        if k == "head.weight" {
            *t = Tensor::zeros([5, 64], (Kind::Float, Device::Cpu));
        }
    }
    let shallow = |sd: &[(String, Tensor)]| {
        sd.iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect::<Vec<_>>()
    };
    let err = load_state_dict(&mut vs, shallow(&sd), true)
        .unwrap_err()
        .to_string();
    for k in ["fc_norm.bias", "decoder_embed.weight", "head.weight"] {
        assert!(err.contains(k), "{err}");
    }
    assert!(
        !all_eq(&model.cls_token, 1.),
        "strict failure copies nothing"
    );
    let report = load_state_dict(&mut vs, sd, false).unwrap();
    assert_eq!(report.missing_keys, ["fc_norm.bias"]);
    assert_eq!(report.unexpected_keys, ["decoder_embed.weight"]);
    assert_eq!(
        report.mismatched_keys,
        [("head.weight".to_string(), vec![5, 64], vec![10, 64])]
    );
    assert!(all_eq(&model.cls_token, 1.) && all_eq(&model.pos_embed, 1.));
}

#[test]
fn unknown_model_names_list_the_valid_ones() {
    let vs = nn::VarStore::new(Device::Cpu);
    let err = models_mae::build("mae_vit_giant", &vs.root(), MaeConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        models_mae::MODELS.iter().all(|(n, _)| err.contains(n)),
        "{err}"
    );
    let err = models_vit::build("vit_giant", &vs.root(), VitConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        models_vit::MODELS.iter().all(|(n, _)| err.contains(n)),
        "{err}"
    );
    assert!(vs.is_empty());
}

/// The project's small presets build the decoder their docs and names give (the official three
/// are checked key by key against their state_dicts above): a preset whose field update let the
/// base preset's depth win would build the wrong model without any error.
#[test]
fn small_presets_build_the_decoder_they_name() {
    let presets = [
        ("mae_vit_tiny_patch4", 32, 2),
        ("mae_vit_mini_patch4", 64, 4),
        ("mae_vit_mini_patch4_dec64d1b", 64, 1),
    ];
    for (name, width, depth) in presets {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = models_mae::build(name, &vs.root(), MaeConfig::default()).unwrap();
        assert_eq!(m.decoder_blocks.len(), depth, "{name}: decoder blocks");
        assert_eq!(m.mask_token.size(), [1, 1, width], "{name}: decoder width");
        let s = shapes(&vs);
        assert!(s.contains_key(&format!("decoder_blocks.{}.norm1.weight", depth - 1)));
        assert!(
            !s.contains_key(&format!("decoder_blocks.{depth}.norm1.weight")),
            "{name}"
        );
    }
    for (name, _) in models_mae::MODELS {
        if name.contains("_patch4") {
            assert!(
                presets.iter().any(|p| p.0 == name),
                "{name} is not checked here"
            );
        }
    }
}
