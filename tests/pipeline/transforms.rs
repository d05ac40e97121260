//! Data pipeline parity: `ImageFolder` order, `pil_loader` pixels and the eval transform against
//! torchvision + Pillow on the sample photos (PNG and JPEG, baseline and progressive).
use crate::common;
use crate::common::PHOTOS;
use mae::torchvision::datasets::{pil_loader, ImageFolder};
use mae::torchvision::transforms::eval_transform;
use std::path::Path;

/// An ImageFolder laid out to exercise torchvision's ordering rules: nested folders, upper-case
/// extensions, files that are not images, class names that sort differently by case.
fn make_folder(root: &Path) {
    let layout: [(&str, &str); 8] = [
        ("b_cats/z.jpg", "chelsea_q90.jpg"),
        ("b_cats/a.PNG", "chelsea.png"),
        ("b_cats/sub/0.jpg", "rocket.jpg"),
        ("B_upper/x.png", "astronaut.png"),
        ("a_cups/cup.JPEG", "coffee_q75_progressive.jpg"),
        ("a_cups/cup.png", "coffee.png"),
        ("a_cups/sub dir/m.jpg", "chelsea_q90.jpg"),
        ("a_cups/sub/n.jpg", "rocket.jpg"),
    ];
    for (dst, src) in layout {
        let p = root.join(dst);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(common::shared_image(src), &p).unwrap();
    }
    std::fs::write(root.join("a_cups/notes.txt"), "not an image").unwrap();
}

#[test]
fn image_folder_and_eval_transform_match_torchvision() {
    let dir = common::scratch();
    let root = dir.join("val");
    make_folder(&root);
    let out = dir.join("ref.safetensors");
    let code = r#"
import sys, json, torch, PIL
from torchvision import datasets, transforms
from safetensors.torch import save_file
root, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
crop_pct = 224 / 256 if size <= 224 else 1.0
t = transforms.Compose([
    transforms.Resize(int(size / crop_pct), interpolation=PIL.Image.BICUBIC),
    transforms.CenterCrop(size), transforms.ToTensor(),
    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
ds = datasets.ImageFolder(root, transform=t)
xs = torch.stack([ds[i][0] for i in range(len(ds))])
save_file({"x": xs.contiguous()}, out)
print(json.dumps({"classes": ds.classes, "samples": [[p, c] for p, c in ds.samples]}))
"#;
    for size in [224u32, 160, 448] {
        let stdout = common::run_python_code(
            code,
            &[
                root.to_str().unwrap(),
                out.to_str().unwrap(),
                &size.to_string(),
            ],
        );
        let reference: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let ds = ImageFolder::new(&root).unwrap();
        let classes: Vec<String> = reference["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ds.classes, classes);
        let samples: Vec<(String, i64)> = reference["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_i64().unwrap()))
            .collect();
        let ours: Vec<(String, i64)> = ds
            .samples
            .iter()
            .map(|(p, c)| (p.to_string_lossy().into_owned(), *c))
            .collect();
        assert_eq!(ours, samples);

        let want = tch::Tensor::read_safetensors(&out).unwrap().remove(0).1;
        for (i, (path, _)) in ds.samples.iter().enumerate() {
            let got = eval_transform(&pil_loader(path).unwrap(), size);
            let diff = (&got - want.get(i as i64)).abs().max().double_value(&[]);
            assert_eq!(diff, 0.0, "{} at {size}: max |diff| {diff}", path.display());
        }
    }
}

#[test]
fn jpeg_pixels_match_pillow() {
    let code = r#"
import sys
from PIL import Image
sys.stdout.buffer.write(Image.open(sys.argv[1]).convert("RGB").tobytes())
"#;
    for name in PHOTOS {
        let path = common::shared_image(name);
        let out = std::process::Command::new(common::python())
            .args(["-c", code, path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        let img = pil_loader(&path).unwrap();
        assert_eq!(img.as_raw().len(), out.stdout.len(), "{name}");
        let differ = img
            .as_raw()
            .iter()
            .zip(&out.stdout)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{name}: {differ} bytes differ from Pillow");
    }
}

#[test]
fn loader_errors_name_the_file() {
    let dir = common::scratch();
    let bad = dir.join("broken.jpg");
    std::fs::write(&bad, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]).unwrap();
    let err = format!("{:#}", pil_loader(&bad).unwrap_err());
    assert!(err.contains("broken.jpg"), "{err}");
    let err = format!("{:#}", ImageFolder::new(&dir.join("nope")).unwrap_err());
    assert!(err.contains("nope"), "{err}");
    let empty = dir.join("empty");
    std::fs::create_dir_all(empty.join("cls")).unwrap();
    let err = format!("{:#}", ImageFolder::new(&empty).unwrap_err());
    assert!(
        err.contains("Found no valid file for the class cls"),
        "{err}"
    );
}

/// `mae pretrain --pretrain_aug` (the paper's Table 1(e)) as docs/REPRODUCTION.md defines it:
/// none = the evaluation transform whatever the generator; crop_fixed = a square of side
/// 0.875·min(W, H) anywhere in the image; crop_rand = the official RandomResizedCrop's boxes;
/// crop_color = crop_rand then ColorJitter, so that a flat grey image changes only with it.
#[test]
fn pretrain_augmentations_follow_their_definitions() {
    use mae::main_pretrain::PretrainAug;
    use mae::torch::data_loader::Transform;
    use mae::torchvision::transforms::{pretrain_crop_params, SampleRng};
    let apply = |t: &Transform, img: &image::RgbImage, seed: u64| match t {
        Transform::Fn(f) => f(img, &mut SampleRng::new(seed, 0, 0)),
        Transform::Crop(c) => c.apply(img, &mut SampleRng::new(seed, 0, 0)),
    };
    let photo = pil_loader(&common::shared_image("chelsea.png")).unwrap();

    let none = PretrainAug::None.transform(32);
    let want = eval_transform(&photo, 32);
    for seed in [1, 2, 3] {
        assert!(apply(&none, &photo, seed).equal(&want), "none, seed {seed}");
    }

    let Transform::Crop(fixed) = PretrainAug::CropFixed.transform(32) else {
        panic!("crop_fixed is not a crop");
    };
    for (w, h) in [(40u32, 30u32), (64, 64), (100, 37)] {
        let side = (0.875 * w.min(h) as f64).round() as i64;
        let (mut tops, mut lefts) = (Vec::new(), Vec::new());
        for seed in 0..400 {
            let (top, left, bh, bw) = (fixed.params)(w, h, &mut SampleRng::new(seed, 0, 0));
            assert_eq!((bh, bw), (side, side), "{w}x{h}");
            assert!((0..=h as i64 - side).contains(&top), "{w}x{h}: top {top}");
            assert!(
                (0..=w as i64 - side).contains(&left),
                "{w}x{h}: left {left}"
            );
            tops.push(top);
            lefts.push(left);
        }
        // every position is drawn: both edges of the free range are reached
        for (v, free) in [(&tops, h as i64 - side), (&lefts, w as i64 - side)] {
            assert!(v.contains(&0) && v.contains(&free), "{w}x{h}: {free} free");
        }
    }
    assert_eq!(
        apply(&Transform::Crop(fixed), &photo, 0).size(),
        [3, 32, 32]
    );

    let Transform::Crop(rand) = PretrainAug::CropRand.transform(32) else {
        panic!("crop_rand is not a crop");
    };
    for seed in 0..50 {
        let a = (rand.params)(300, 200, &mut SampleRng::new(seed, 0, 0));
        let b = pretrain_crop_params(300, 200, &mut SampleRng::new(seed, 0, 0));
        assert_eq!(a, b, "seed {seed}");
    }

    // a flat grey image: every crop and flip of it is the same; only the colour jitter moves it
    let grey = image::RgbImage::from_pixel(48, 40, image::Rgb([100, 100, 100]));
    let color = PretrainAug::CropColor.transform(32);
    let plain = Transform::Crop(rand);
    let first = apply(&plain, &grey, 0);
    let mut moved = 0;
    for seed in 0..8 {
        assert!(
            apply(&plain, &grey, seed).equal(&first),
            "crop_rand, seed {seed}"
        );
        let diff = (apply(&color, &grey, seed) - &first)
            .abs()
            .max()
            .double_value(&[]);
        moved += (diff > 1e-3) as usize;
    }
    assert!(
        moved >= 6,
        "colour jitter changed {moved} of 8 grey samples"
    );
}
