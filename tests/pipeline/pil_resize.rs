//! Pillow-exact resampling: `mae::torchvision::pil::resize` against Pillow's `Image.resize` on the
//! sample photos, byte for byte.
use crate::common;
use mae::torchvision::pil::{resize, Filter};

const SIZES: [(u32, u32); 6] = [
    (224, 224),
    (256, 170),
    (113, 75),
    (700, 500),
    (224, 300),
    (31, 400),
];

#[test]
fn resize_matches_pillow_bit_exact() {
    let dir = common::scratch();
    let code = r#"
import sys
from PIL import Image
src, out, filt = sys.argv[1], sys.argv[2], sys.argv[3]
f = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[filt]
img = Image.open(src).convert("RGB")
for i, wh in enumerate(sys.argv[4:]):
    w, h = map(int, wh.split("x"))
    open(f"{out}/{i}.raw", "wb").write(img.resize((w, h), f).tobytes())
"#;
    for name in ["chelsea.png", "coffee.png", "astronaut.png"] {
        let src = common::shared_image(name);
        let img = image::open(&src).unwrap().to_rgb8();
        for (filter, fname) in [(Filter::Bicubic, "bicubic"), (Filter::Bilinear, "bilinear")] {
            let sizes: Vec<String> = SIZES.iter().map(|(w, h)| format!("{w}x{h}")).collect();
            let mut args = vec![src.to_str().unwrap(), dir.to_str().unwrap(), fname];
            args.extend(sizes.iter().map(String::as_str));
            common::run_python_code(code, &args);
            for (i, &(w, h)) in SIZES.iter().enumerate() {
                let want = std::fs::read(dir.join(format!("{i}.raw"))).unwrap();
                let got = resize(&img, w, h, filter);
                let differ = got
                    .as_raw()
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a != b)
                    .count();
                assert_eq!(got.as_raw().len(), want.len(), "{name} {fname} {w}x{h}");
                assert_eq!(
                    differ, 0,
                    "{name} {fname} {w}x{h}: {differ} bytes differ from Pillow"
                );
            }
        }
    }
}
