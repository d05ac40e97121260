//! The preprocessing difference table: for every sample photo (plus a CMYK JPEG and a JPEG with
//! corrupt-but-decodable data made from them), max and mean absolute difference from
//! Pillow/torchvision after each stage: decode (`Image.open().convert('RGB')`), the eval
//! `Resize(256)` (bicubic), `CenterCrop(224)`, the normalised tensor, and the demo's
//! `img.resize((224, 224))`. Pillow 12.0.0 (pinned) for the default mode, Pillow 13.0.0
//! (tools/setup.sh puts it in .venv/pillow13) for `--pillow 13`. Every difference must be 0.
//! The table is printed (`--nocapture`) and written to target/preprocess_table.md.
use crate::common;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;
use mae::torchvision::datasets::pil_loader;
use mae::torchvision::pil::{self, Filter, PassOrder};
use mae::torchvision::transforms::{center_crop, eval_transform_with, resize_with};

/// Writes DIR/NAME.STAGE.raw for each photo: Pillow's RGB bytes per stage (float32 for `tensor`).
const REFERENCE: &str = r#"
import sys, PIL
from PIL import Image
from torchvision import transforms
out, photos = sys.argv[1], sys.argv[2:]
norm = transforms.Compose([transforms.ToTensor(),
    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
for p in photos:
    name = p.rsplit("/", 1)[-1]
    img = Image.open(p).convert("RGB")
    r = transforms.Resize(256, interpolation=PIL.Image.BICUBIC)(img)
    c = transforms.CenterCrop(224)(r)
    stages = {"decode": img, "resize": r, "crop": c, "demo": img.resize((224, 224))}
    for stage, im in stages.items():
        open(f"{out}/{name}.{stage}.raw", "wb").write(im.tobytes())
    open(f"{out}/{name}.tensor.raw", "wb").write(norm(c).numpy().tobytes())
print(PIL.__version__)
"#;

/// A CMYK JPEG (Pillow writes Adobe's inverted CMYK), a JPEG with junk bytes before its SOS
/// marker (libjpeg warns, Pillow decodes it), two portrait images (where Pillow 13 runs the
/// vertical pass first), and a truncated JPEG (Pillow raises).
const MAKE_ODD_JPEGS: &str = r#"
import sys
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
Image.open(f"{src}/chelsea.png").convert("CMYK").save(f"{out}/chelsea_cmyk.jpg", quality=90)
d = open(f"{src}/rocket.jpg", "rb").read()
i = d.index(b"\xff\xda")
open(f"{out}/rocket_junk.jpg", "wb").write(d[:i] + b"\x00\x00" + d[i:])
Image.open(f"{src}/rocket.jpg").crop((200, 0, 400, 427)).save(f"{out}/rocket_portrait.jpg", quality=90)
Image.open(f"{src}/astronaut.png").resize((300, 900)).save(f"{out}/astronaut_tall.png")
open(f"{out}/rocket_truncated.jpg", "wb").write(d[: len(d) // 2])
try:
    Image.open(f"{out}/rocket_truncated.jpg").convert("RGB")
    print("decoded")
except OSError as e:
    print(e)
"#;

fn run_reference(pythonpath: Option<&Path>, out: &Path, photos: &[PathBuf]) -> String {
    let mut cmd = std::process::Command::new(common::python());
    cmd.arg("-c").arg(REFERENCE).arg(out).args(photos);
    if let Some(p) = pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    let o = cmd.output().expect("python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// (max, mean) absolute difference between our bytes and a reference file.
fn diff_u8(ours: &RgbImage, reference: &Path) -> (f64, f64) {
    let want = std::fs::read(reference).unwrap();
    assert_eq!(ours.as_raw().len(), want.len(), "{}", reference.display());
    let d: Vec<f64> = ours
        .as_raw()
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .collect();
    (
        d.iter().cloned().fold(0., f64::max),
        d.iter().sum::<f64>() / d.len() as f64,
    )
}

fn diff_f32(ours: &tch::Tensor, reference: &Path) -> f64 {
    let want: Vec<f32> = std::fs::read(reference)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let ours = Vec::<f32>::try_from(ours.contiguous().view([-1])).unwrap();
    assert_eq!(ours.len(), want.len());
    ours.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0., f64::max)
}

#[test]
fn preprocessing_difference_table() {
    let dir = common::scratch();
    let (ref12, ref13) = (dir.join("pillow12"), dir.join("pillow13"));
    for d in [&ref12, &ref13] {
        std::fs::create_dir_all(d).unwrap();
    }
    let shared = common::shared_image(common::PHOTOS[0])
        .parent()
        .unwrap()
        .to_path_buf();
    let truncated_msg = common::run_python_code(
        MAKE_ODD_JPEGS,
        &[shared.to_str().unwrap(), dir.to_str().unwrap()],
    );
    // the shared photos in name order, the table's rows
    let mut names = common::PHOTOS;
    names.sort();
    let mut photos: Vec<PathBuf> = names.iter().map(|p| common::shared_image(p)).collect();
    photos.extend(
        [
            "chelsea_cmyk.jpg",
            "rocket_junk.jpg",
            "rocket_portrait.jpg",
            "astronaut_tall.png",
        ]
        .map(|p| dir.join(p)),
    );

    let p13 = common::root().join(".venv/pillow13");
    assert!(
        p13.join("PIL").exists(),
        "{} is missing: run tools/setup.sh (it installs Pillow 13.0.0 there)",
        p13.display()
    );
    assert_eq!(run_reference(None, &ref12, &photos), "12.0.0");
    assert_eq!(run_reference(Some(&p13), &ref13, &photos), "13.0.0");

    let mut table = String::from(
        "| photo | size | decode max / mean | Resize(256) | CenterCrop(224) | tensor max | demo resize((224, 224)) | Pillow 13: Resize(256) | Pillow 13: demo resize | Pillow 13 vs 12: demo pixels changed |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut worst = 0f64;
    for p in &photos {
        let name = p.file_name().unwrap().to_str().unwrap();
        let r = |dir: &Path, stage: &str| dir.join(format!("{name}.{stage}.raw"));
        let img = pil_loader(p).unwrap();
        let mut row = Vec::new();
        let decode = diff_u8(&img, &r(&ref12, "decode"));
        for (order, refdir) in [(PassOrder::Pillow12, &ref12), (PassOrder::Pillow13, &ref13)] {
            let resized = resize_with(&img, 256, Filter::Bicubic, order);
            let cropped = center_crop(&resized, 224, 224);
            let tensor = eval_transform_with(&img, 224, order);
            let demo = pil::resize_with(&img, 224, 224, Filter::Bicubic, order);
            let d = [
                diff_u8(&resized, &r(refdir, "resize")),
                diff_u8(&cropped, &r(refdir, "crop")),
                (diff_f32(&tensor, &r(refdir, "tensor")), 0.),
                diff_u8(&demo, &r(refdir, "demo")),
            ];
            worst = d.iter().fold(worst, |w, x| w.max(x.0));
            row.push(d);
        }
        worst = worst.max(decode.0);
        let a = std::fs::read(r(&ref12, "demo")).unwrap();
        let b = std::fs::read(r(&ref13, "demo")).unwrap();
        let changed = a.chunks(3).zip(b.chunks(3)).filter(|(x, y)| x != y).count();
        let f = |(m, a): (f64, f64)| format!("{m} / {a:.4}");
        writeln!(
            table,
            "| {name} | {}x{} | {} | {} | {} | {} | {} | {} | {} | {changed} of {} |",
            img.width(),
            img.height(),
            f(decode),
            f(row[0][0]),
            f(row[0][1]),
            row[0][2].0,
            f(row[0][3]),
            f(row[1][0]),
            f(row[1][3]),
            224 * 224
        )
        .unwrap();
    }
    eprintln!("\n{table}");
    std::fs::write(common::root().join("target/preprocess_table.md"), &table).unwrap();
    assert_eq!(
        worst, 0.0,
        "some stage differs from Pillow/torchvision:\n{table}"
    );

    // a truncated JPEG is an error in both, naming the file here
    assert!(truncated_msg.contains("truncated"), "{truncated_msg}");
    let err = format!(
        "{:#}",
        pil_loader(&dir.join("rocket_truncated.jpg")).unwrap_err()
    );
    assert!(
        err.contains("rocket_truncated.jpg") && err.contains("truncated"),
        "{err}"
    );
}
