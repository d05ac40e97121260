//! Model detection against the official key/shape lists (../shared/reference, taken from the
//! reference code by instantiating its models).
use mae::inspect::{detect, Kind};
use std::path::PathBuf;

fn official() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/official_state_dicts.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared/ folder must sit beside the checkout)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("official_state_dicts.json parses")
}

fn detect_official(model: &str) -> mae::inspect::Detected {
    let all = official();
    let sd = all[model]
        .as_object()
        .unwrap_or_else(|| panic!("{model} missing from the reference"));
    let shapes: Vec<(String, Vec<i64>)> = sd
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect(),
            )
        })
        .collect();
    detect(shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice()))).unwrap()
}

#[test]
fn detects_every_official_model() {
    let cases: [(&str, &str, Kind, i64); 10] = [
        (
            "mae_vit_base_patch16",
            "mae_vit_base_patch16",
            Kind::MaePretrain,
            224,
        ),
        (
            "mae_vit_large_patch16",
            "mae_vit_large_patch16",
            Kind::MaePretrain,
            224,
        ),
        (
            "mae_vit_huge_patch14",
            "mae_vit_huge_patch14",
            Kind::MaePretrain,
            224,
        ),
        (
            "vit_base_patch16",
            "vit_base_patch16",
            Kind::Finetuned {
                global_pool: true,
                num_classes: 1000,
            },
            224,
        ),
        (
            "vit_large_patch16",
            "vit_large_patch16",
            Kind::Finetuned {
                global_pool: true,
                num_classes: 1000,
            },
            224,
        ),
        (
            "vit_huge_patch14",
            "vit_huge_patch14",
            Kind::Finetuned {
                global_pool: true,
                num_classes: 1000,
            },
            224,
        ),
        (
            "vit_base_patch16_cls_token",
            "vit_base_patch16",
            Kind::Finetuned {
                global_pool: false,
                num_classes: 1000,
            },
            224,
        ),
        (
            "vit_large_patch16_cls_token",
            "vit_large_patch16",
            Kind::Finetuned {
                global_pool: false,
                num_classes: 1000,
            },
            224,
        ),
        (
            "vit_huge_patch14_cls_token",
            "vit_huge_patch14",
            Kind::Finetuned {
                global_pool: false,
                num_classes: 1000,
            },
            224,
        ),
        (
            "vit_base_patch16_linprobe",
            "vit_base_patch16",
            Kind::Linprobe { num_classes: 1000 },
            224,
        ),
    ];
    for (reference, name, kind, img) in cases {
        let d = detect_official(reference);
        assert_eq!(d.model_name(), name, "{reference}");
        assert_eq!(d.kind, kind, "{reference}");
        assert_eq!(d.img_size, img, "{reference}");
        assert_ne!(d.size, "custom", "{reference}");
        if kind == Kind::MaePretrain {
            assert_eq!(
                (d.decoder_embed_dim, d.decoder_depth),
                (Some(512), Some(8)),
                "{reference}"
            );
        }
    }
}

#[test]
fn encoder_only_pretrain_checkpoint() {
    // The released mae_pretrain_vit_*.pth hold the encoder only: drop decoder keys and mask_token.
    let all = official();
    let sd = all["mae_vit_large_patch16"].as_object().unwrap();
    let shapes: Vec<(String, Vec<i64>)> = sd
        .iter()
        .filter(|(k, _)| !k.starts_with("decoder") && k.as_str() != "mask_token")
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect(),
            )
        })
        .collect();
    let d = detect(shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice()))).unwrap();
    assert_eq!(d.kind, Kind::MaeEncoder);
    assert_eq!(d.model_name(), "vit_large_patch16");
}

#[test]
fn resolution_from_pos_embed() {
    // ViT-H fine-tuned at 448: pos_embed holds 32x32 patches + cls.
    let all = official();
    let sd = all["vit_huge_patch14"].as_object().unwrap();
    let shapes: Vec<(String, Vec<i64>)> = sd
        .iter()
        .map(|(k, v)| {
            let s: Vec<i64> = if k == "pos_embed" {
                vec![1, 1025, 1280]
            } else {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            };
            (k.clone(), s)
        })
        .collect();
    let d = detect(shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice()))).unwrap();
    assert_eq!(d.img_size, 448);
}
