//! Model detection against the official key/shape lists (tests/data/reference, taken from the
//! reference code by instantiating its models).
use crate::common;
use mae::interop::detect::{detect, Kind};

fn detect_shapes(shapes: &[(String, Vec<i64>)]) -> mae::interop::detect::Detected {
    detect(shapes.iter().map(|(k, s)| (k.as_str(), s.as_slice()))).unwrap()
}

fn detect_official(model: &str) -> mae::interop::detect::Detected {
    detect_shapes(&common::official_state_dict(model))
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
    let mut shapes = common::official_state_dict("mae_vit_large_patch16");
    shapes.retain(|(k, _)| !k.starts_with("decoder") && k != "mask_token");
    let d = detect_shapes(&shapes);
    assert_eq!(d.kind, Kind::MaeEncoder);
    assert_eq!(d.model_name(), "vit_large_patch16");
}

#[test]
fn resolution_from_pos_embed() {
    // ViT-H fine-tuned at 448: pos_embed holds 32x32 patches + cls.
    let mut shapes = common::official_state_dict("vit_huge_patch14");
    for (k, s) in shapes.iter_mut() {
        if k == "pos_embed" {
            *s = vec![1, 1025, 1280];
        }
    }
    assert_eq!(detect_shapes(&shapes).img_size, 448);
}
