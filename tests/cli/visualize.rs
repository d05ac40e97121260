//! `mae visualize` against the demo's `run_one_image` on HuggingFace ViTMAE with the same official
//! weights (tools/reference/visualize_reference.py), same seed: identical inputs and masks,
//! reconstructions within 1e-5, and the PNG: 4 panels × rows, the demo's pixels in each panel,
//! titles drawn.
use crate::common;

use crate::common::{argv, big_model_lock, check, parity_fixtures, read_tensors};
use mae::mae_visualize::Layout;
use tch::{Kind, Tensor};

/// Runs both on `images` and compares; `group` is the parity fixture group holding `name`.pth.
fn check_visualize(group: &str, name: &str, images: &[&str], seed: i64, mask_ratio: f64) {
    let dir = parity_fixtures(group);
    let ckpt = dir.join(format!("{name}.pth"));
    let scratch = common::scratch();
    let tag = format!("{name}_s{seed}_r{mask_ratio}");
    let (want_path, ours_path, png_path) = (
        scratch.join(format!("{tag}_ref.safetensors")),
        scratch.join(format!("{tag}.safetensors")),
        scratch.join(format!("{tag}.png")),
    );
    let images: Vec<String> = images
        .iter()
        .map(|i| common::shared_image(i).to_str().unwrap().to_string())
        .collect();
    let (seed_s, ratio_s) = (seed.to_string(), mask_ratio.to_string());
    let mut args = vec![
        ckpt.to_str().unwrap(),
        name,
        &seed_s,
        &ratio_s,
        want_path.to_str().unwrap(),
    ];
    args.extend(images.iter().map(String::as_str));
    common::run_python(
        &common::root().join("tools/reference/visualize_reference.py"),
        &args,
    );

    // --model left out: detected from the checkpoint
    #[rustfmt::skip]
    let mut args = argv!(
        "visualize --checkpoint {} --seed {} --mask_ratio {} --out {} --save_tensors {} \
         --device cpu --image",
        ckpt.display(), seed, mask_ratio, png_path.display(), ours_path.display()
    );
    args.extend(images.iter().cloned());
    common::stdout_ok(&common::mae_output(&args), "mae visualize");

    let (ours, want) = (read_tensors(&ours_path), read_tensors(&want_path));
    assert!(
        ours["imgs"].equal(&want["imgs"]),
        "{tag}: model inputs differ"
    );
    assert!(ours["mask"].equal(&want["mask"]), "{tag}: masks differ");
    let mut worst = 0f64;
    for k in ["pred", "reconstruction"] {
        worst = worst.max(check(&format!("{tag} {k}"), &ours[k], &want[k], 1e-5));
    }
    eprintln!("VISUALIZE {tag}: masks identical, worst relative error {worst:.3e}");

    // the PNG: layout, the demo's pixels in every panel, titles
    let png = image::open(&png_path).unwrap().to_rgb8();
    let size = want["imgs"].size()[2] as u32;
    let layout = Layout::new(size);
    let rows = images.len() as u32;
    assert_eq!(png.dimensions(), layout.size(rows), "{tag}: PNG size");
    let panels = &want["panels"]; // [N, 4, S, S, 3] u8
    for r in 0..rows {
        for c in 0..4u32 {
            let (x0, y0) = layout.panel_origin(r, c);
            let mut got = Vec::with_capacity((size * size * 3) as usize);
            for y in 0..size {
                for x in 0..size {
                    let p = png.get_pixel(x0 + x * layout.zoom, y0 + y * layout.zoom);
                    got.extend_from_slice(&p.0);
                }
            }
            let got = Tensor::from_slice(&got).to_kind(Kind::Int);
            let want = panels
                .get(r as i64)
                .get(c as i64)
                .reshape([-1])
                .to_kind(Kind::Int);
            let diff = (&got - &want).abs();
            let (max, differing) = (
                diff.max().int64_value(&[]),
                diff.gt(0).sum(Kind::Int64).int64_value(&[]),
            );
            // original and masked depend on the input and mask only: exact; the reconstructions
            // may flip a truncation where float32 sums round differently
            let ok = if c < 2 {
                max == 0
            } else {
                max <= 1 && differing * 100 <= got.numel() as i64
            };
            assert!(
                ok,
                "{tag} row {r} panel {c}: max diff {max}, {differing} values differ"
            );
            let std = got.to_kind(Kind::Float).std(true).double_value(&[]);
            assert!(std > 2.0, "{tag} row {r} panel {c}: flat panel (std {std})");
        }
        // the titles: dark pixels in the band above the panels
        let dark = (0..layout.title_h)
            .flat_map(|y| (0..png.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| png.get_pixel(x, r * layout.row_h + y).0 == [0, 0, 0])
            .count();
        assert!(
            dark > 500,
            "{tag} row {r}: no titles drawn ({dark} dark pixels)"
        );
    }
}

#[test]
fn tiny_mae_three_images() {
    check_visualize(
        "tiny",
        "mae_vit_tiny_patch4",
        &["chelsea.png", "rocket.jpg", "coffee_q75_progressive.jpg"],
        7,
        0.75,
    );
    check_visualize("tiny", "mae_vit_tiny_patch4", &["astronaut.png"], 2, 0.5);
}

#[test]
fn large_patch16_one_image() {
    let _big = big_model_lock();
    check_visualize(
        "mae_large",
        "mae_vit_large_patch16",
        &["chelsea_q90.jpg"],
        2,
        0.75,
    );
}

#[test]
fn missing_checkpoint_says_what_to_download() {
    let dir = common::scratch();
    let out = common::mae_command(["visualize", "--image"])
        .arg(common::shared_image("chelsea.png"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("mae_visualize_vit_large.pth") && err.contains("weights/"),
        "{err}"
    );
}

/// The README's main job: `mae visualize` with no arguments reconstructs Fashion-MNIST test
/// images with the shipped checkpoint — a real reconstruction, not noise.
#[test]
fn no_arguments_reconstructs_fashion_mnist_test_images() {
    let dir = common::scratch();
    let _ = std::fs::remove_file(dir.join("mae_visualize.png"));
    let out = common::mae_command(["visualize"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("mae_pretrain_fmnist_mini_patch4.pth: mae_vit_mini_patch4"),
        "{stdout}"
    );
    let losses: Vec<f64> = stdout
        .lines()
        .filter(|l| l.starts_with("Fashion-MNIST test image"))
        .map(|l| l.rsplit("loss ").next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 6, "{stdout}");
    // Pixel loss on the masked patches: ~3.95 at initialisation, ~0.41 for the shipped model.
    let mean = losses.iter().sum::<f64>() / 6.0;
    assert!(
        mean < 0.6,
        "mean masked-patch loss {mean}: the shipped model does not reconstruct"
    );
    let png = image::open(dir.join("mae_visualize.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!((png.width(), png.height()), Layout::new(32).size(6));
}
