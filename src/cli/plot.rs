//! The loss curve PNG `mae pretrain` writes at the end (the official logs to tensorboard):
//! per-iteration loss (grey) and its moving average over ~1/50 of the run (blue) against the
//! fractional epoch, drawn with the image crate and the bitmap font of `cli::font` for the labels.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

use crate::cli::font;

const W: u32 = 800;
const H: u32 = 480;
const L: i64 = 70; // margins: left, right, top, bottom
const R: i64 = 20;
const T: i64 = 30;
const B: i64 = 50;

/// Each font pixel of the labels is a SCALE×SCALE square.
const SCALE: u32 = 2;

/// `s` in black with its top-left corner at (x, y); pixels outside the image are dropped.
fn text(img: &mut RgbImage, x: i64, y: i64, s: &str) {
    let (x, y) = (x.max(0) as u32, y.max(0) as u32);
    font::draw_text(img, s, x, y, SCALE, Rgb([0, 0, 0]));
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
    for k in 0..=n {
        let t = k as f64 / n as f64;
        put(
            img,
            (x0 + t * (x1 - x0)).round() as i64,
            (y0 + t * (y1 - y0)).round() as i64,
            c,
        );
    }
}

/// Draws `points` (fractional epoch, loss) into `png`.
pub fn draw(points: &[(f64, f64)], png: &Path) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (x_max, pw, ph) = (
        points
            .iter()
            .map(|p| p.0)
            .fold(0f64, f64::max)
            .ceil()
            .max(1.),
        (W as i64 - L - R) as f64,
        (H as i64 - T - B) as f64,
    );
    let y_max = points.iter().map(|p| p.1).fold(0f64, f64::max).max(1e-3) * 1.05;
    let to_px = |(x, y): (f64, f64)| {
        (
            L as f64 + x / x_max * pw,
            T as f64 + (1. - (y / y_max).clamp(0., 1.)) * ph,
        )
    };
    // grid and ticks
    let grey = Rgb([225, 225, 225]);
    for k in 0..=5 {
        let y = y_max * k as f64 / 5.;
        let (_, py) = to_px((0., y));
        line(&mut img, (L as f64, py), ((W as i64 - R) as f64, py), grey);
        text(&mut img, 8, py as i64 - 8, &format!("{y:.3}"));
    }
    let xt = (x_max / 8.).ceil().max(1.);
    let mut x = 0.;
    while x <= x_max {
        let (px, _) = to_px((x, 0.));
        line(&mut img, (px, T as f64), (px, (H as i64 - B) as f64), grey);
        let label = format!("{x}");
        let half = font::text_width(&label, SCALE) as i64 / 2;
        text(&mut img, px as i64 - half, H as i64 - B + 8, &label);
        x += xt;
    }
    let half = font::text_width("epoch", SCALE) as i64 / 2;
    text(&mut img, W as i64 / 2 - half, H as i64 - 20, "epoch");
    text(&mut img, 8, 8, "loss");
    let black = Rgb([0, 0, 0]);
    line(
        &mut img,
        (L as f64, T as f64),
        (L as f64, (H as i64 - B) as f64),
        black,
    );
    let bottom = (H as i64 - B) as f64;
    line(
        &mut img,
        (L as f64, bottom),
        ((W as i64 - R) as f64, bottom),
        black,
    );
    // raw losses, then the moving average
    for w in points.windows(2) {
        line(&mut img, to_px(w[0]), to_px(w[1]), Rgb([170, 170, 170]));
    }
    let k = (points.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = points
        .windows(k)
        .map(|w| (w[k - 1].0, w.iter().map(|p| p.1).sum::<f64>() / k as f64))
        .collect();
    for w in smooth.windows(2) {
        line(&mut img, to_px(w[0]), to_px(w[1]), Rgb([31, 119, 180]));
    }
    img.save(png)
        .with_context(|| format!("writing {}", png.display()))
}

/// Reads `train_steps.csv` (epoch,loss,lr per iteration) and draws its loss curve.
pub fn loss_curve(steps_csv: &Path, png: &Path, _title: &str) -> Result<()> {
    let text = std::fs::read_to_string(steps_csv)
        .with_context(|| format!("reading {}", steps_csv.display()))?;
    let points: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',').map(|v| v.parse::<f64>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .collect();
    draw(&points, png)
}
