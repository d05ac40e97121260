//! Faults with nothing lost: a corrupt image in an ImageFolder stops the run with an error naming
//! the file (as PIL raises in the official code), never a skip or a panic; a corrupt IDX file is a
//! named error; a full disk during a save is an error naming the file and the space, with the
//! previous checkpoint intact and no temporary file left. (Kills: kill_resume.rs.)
use crate::common::{self, argv};
use std::path::{Path, PathBuf};
use std::process::Command;

use mae::torchvision::datasets::decode_box;

/// A small good JPEG and PNG (48×40) to fill a class folder.
fn good_images() -> (Vec<u8>, Vec<u8>) {
    let img = image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 90]));
    let jpeg = turbojpeg::compress_image(&img, 90, turbojpeg::Subsamp::Sub2x2).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    (jpeg.to_vec(), png.into_inner())
}

/// A PNG whose first IDAT chunk has one data byte flipped: its CRC no longer matches.
fn png_with_bad_crc() -> Vec<u8> {
    let mut png = good_images().1;
    let at = png.windows(4).position(|w| w == b"IDAT").unwrap();
    png[at + 8] ^= 0x55;
    png
}

/// (file name, bytes) of each corrupt kind.
fn corrupt_files() -> Vec<(&'static str, Vec<u8>)> {
    let jpg = std::fs::read(common::shared_image("chelsea_q90.jpg")).unwrap();
    vec![
        ("truncated.jpg", jpg[..jpg.len() / 2].to_vec()),
        ("empty.jpg", vec![]),
        ("text.jpg", b"this is not an image\n".to_vec()),
        ("bad_crc.png", png_with_bad_crc()),
    ]
}

/// Every corrupt kind fails to decode, whole or as any region (the loader decodes only the
/// crop's area of a JPEG: a truncated one must fail even when the box is in its intact part).
#[test]
fn corrupt_images_fail_to_decode_whole_and_in_regions() {
    for (name, bytes) in corrupt_files() {
        assert!(
            mae::torchvision::datasets::decode(&bytes).is_err(),
            "{name} decodes"
        );
        for bx in [(0, 0, 8, 8), (0, 0, 300, 451), (100, 100, 50, 50)] {
            let r = decode_box(&bytes, &mut |_, _| bx, None);
            assert!(r.is_err(), "{name}: box {bx:?} decodes");
            let r = decode_box(&bytes, &mut |_, _| bx, Some(16));
            assert!(r.is_err(), "{name}: box {bx:?} decodes (fast)");
        }
    }
    let (jpeg, png) = good_images();
    assert!(decode_box(&jpeg, &mut |_, _| (0, 0, 8, 8), None).is_ok());
    assert!(decode_box(&png, &mut |_, _| (0, 0, 8, 8), None).is_ok());
}

/// ROOT/train/a: two good JPEGs, two good PNGs and `bad`, whose path it returns.
fn image_folder(root: &Path, bad: &(&str, Vec<u8>)) -> PathBuf {
    let class = root.join("train/a");
    std::fs::create_dir_all(&class).unwrap();
    let (jpeg, png) = good_images();
    for i in 0..2 {
        std::fs::write(class.join(format!("good{i}.jpg")), &jpeg).unwrap();
        std::fs::write(class.join(format!("good{i}.png")), &png).unwrap();
    }
    let bad_path = class.join(bad.0);
    std::fs::write(&bad_path, &bad.1).unwrap();
    bad_path
}

/// `mae pretrain` on a folder with one corrupt image (every image is in the one batch of 5):
/// exit status 1 and an error naming the file, no panic.
#[test]
fn pretrain_stops_naming_the_corrupt_image() {
    let dir = common::scratch();
    for bad in corrupt_files() {
        let root = dir.join(bad.0.split('.').next().unwrap());
        let bad_path = image_folder(&root, &bad);
        #[rustfmt::skip]
        let out = common::mae_output(argv!(
            "pretrain --model mae_vit_tiny_patch4 --input_size 32 --batch_size 5 --epochs 1 \
             --num_workers 2 --device cpu --output_dir {} --data_path {}", "", root.display()
        ));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", bad.0);
        assert!(
            stderr.contains(&format!("decoding image {}", bad_path.display()))
                || stderr.contains(&format!("reading image {}", bad_path.display())),
            "{}: the error does not name the file: {stderr}",
            bad.0
        );
        assert!(!stderr.contains("panicked"), "{}: {stderr}", bad.0);
    }
}

/// IDX files cut short, with dims whose product overflows, or of another dtype: an error naming
/// the file.
#[test]
fn corrupt_idx_is_a_named_error() {
    let dir = common::scratch();
    let images = |n: u32| {
        let mut b = vec![0, 0, 8, 3];
        for d in [n, 28, 28] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend(std::iter::repeat_n(7u8, (n * 28 * 28) as usize));
        b
    };
    let labels = |n: u32, v: u8| {
        let mut b = vec![0, 0, 8, 1];
        b.extend_from_slice(&n.to_be_bytes());
        b.extend(std::iter::repeat_n(v, n as usize));
        b
    };
    let overflow = {
        let mut b = vec![0, 0, 8, 3];
        for d in [u32::MAX, u32::MAX, u32::MAX] {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    };
    let good = images(4);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() - 100].to_vec(), labels(4, 1), "train-images-idx3-ubyte: IDX dims [4, 28, 28] need 3136 bytes of data, the file has 3036"),
        ("header", good[..10].to_vec(), labels(4, 1), "train-images-idx3-ubyte: truncated IDX header (3 dims)"),
        ("overflow", overflow, labels(4, 1), "train-images-idx3-ubyte: IDX dims [4294967295, 4294967295, 4294967295] need more than 2^64 bytes"),
        ("float", [&[0u8, 0, 0x0D, 3][..], &good[4..]].concat(), labels(4, 1), "train-images-idx3-ubyte: not an IDX file of unsigned bytes"),
        ("labels", good.clone(), labels(4, 12), "label 12 in train-labels-idx1-ubyte, the 10 classes are 0..=9"),
        ("count", good.clone(), labels(3, 1), "do not match"),
    ];
    for (name, img, lab, want) in cases {
        let root = dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("train-images-idx3-ubyte"), img).unwrap();
        std::fs::write(root.join("train-labels-idx1-ubyte"), lab).unwrap();
        let err = mae::torchvision::datasets::FashionMNIST::new(&root, true).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(want), "{name}: {msg}");
        assert!(
            msg.contains(root.to_str().unwrap()),
            "{name}: no path in {msg}"
        );
    }
    let root = dir.join("good");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("train-images-idx3-ubyte"), images(4)).unwrap();
    std::fs::write(root.join("train-labels-idx1-ubyte"), labels(4, 9)).unwrap();
    assert_eq!(
        mae::torchvision::datasets::FashionMNIST::new(&root, true)
            .unwrap()
            .len(),
        4
    );
}

/// A tmpfs of `size`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let _ = Command::new("umount").arg(dir).output();
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs (the disk-full test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

fn pretrain_into(out_dir: &Path, epochs: &str) -> std::process::Output {
    #[rustfmt::skip]
    let args = argv!(
        "pretrain --model mae_vit_tiny_patch4 --input_size 32 --dataset fashion_mnist \
         --train_subset 16 --batch_size 16 --epochs {} --save_freq 1 --warmup_epochs 1 \
         --num_workers 2 --device cpu --output_dir {} --log_dir {}",
        epochs, out_dir.display(), out_dir.display()
    );
    common::mae_output(args)
}

/// A checkpoint of the tiny model is 1.7 MB: a 2.5 MB tmpfs holds checkpoint-0.pth but not
/// checkpoint-1.pth next to it, nor a second checkpoint-0.pth written over the first.
#[test]
fn disk_full_during_a_save() {
    let scratch = common::scratch();
    let dir = scratch.join("mnt");
    let _fs = Tmpfs::mount(&dir, "2500k");
    let ckpt0 = dir.join("checkpoint-0.pth");

    let out = pretrain_into(&dir, "2");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let ckpt1 = dir.join("checkpoint-1.pth");
    let want = format!(
        "cannot save checkpoint {}: the disk of {} is full: {} needs more than the ",
        ckpt1.display(),
        dir.display(),
        ckpt1.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert!(stderr.contains("bytes are free"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!ckpt1.exists());
    let first = std::fs::read(&ckpt0).unwrap();

    // the same name again: the new file does not fit beside the old one, which stays
    let out = pretrain_into(&dir, "1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot save checkpoint {}", ckpt0.display())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&ckpt0).unwrap(),
        first,
        "checkpoint-0.pth changed"
    );

    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let check = common::run_python_code(
        "import sys, torch; c = torch.load(sys.argv[1], weights_only=True); print(c['epoch'], len(c['model']))",
        &[ckpt0.to_str().unwrap()],
    );
    assert!(check.starts_with("0 "), "{check}");
}

/// A JPEG header claiming 65500 × 65500 pixels (12.9 GB of RGB) is refused before any pixel is
/// allocated, as Pillow's DecompressionBombError (a failed allocation would abort the process).
#[test]
fn decompression_bomb_is_refused() {
    let mut jpeg = good_images().0;
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]); // height, width
    let err = mae::torchvision::datasets::decode(&jpeg).unwrap_err();
    assert!(
        format!("{err:#}").contains("image size 65500x65500 exceeds the limit"),
        "{err:#}"
    );
    let err = decode_box(&jpeg, &mut |_, _| (0, 0, 8, 8), None).unwrap_err();
    assert!(
        format!("{err:#}").contains("DecompressionBombError"),
        "{err:#}"
    );
}
