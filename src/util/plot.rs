//! The loss curve PNG `mae pretrain` writes at the end (the official logs to tensorboard):
//! per-iteration loss (grey) and its moving average over ~1/50 of the run (blue) against the
//! fractional epoch, drawn with the image crate and a 3×5 pixel font for the tick labels.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

const W: u32 = 800;
const H: u32 = 480;
const L: i64 = 70; // margins: left, right, top, bottom
const R: i64 = 20;
const T: i64 = 30;
const B: i64 = 50;

/// 3×5 glyphs, rows top to bottom, 3 bits each (MSB left).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        'p' => [0, 7, 5, 7, 4],
        'o' => [0, 7, 5, 5, 7],
        'c' => [0, 7, 4, 4, 7],
        'h' => [4, 4, 7, 5, 5],
        'l' => [6, 2, 2, 2, 7],
        's' => [0, 7, 6, 3, 7],
        _ => [0; 5],
    }
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: i64) {
    for (k, c) in s.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let px = x + (k as i64 * 4 + col) * scale + dx;
                            put(img, px, y + row as i64 * scale + dy, Rgb([0, 0, 0]));
                        }
                    }
                }
            }
        }
    }
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
        text(&mut img, 8, py as i64 - 5, &format!("{y:.3}"), 2);
    }
    let xt = (x_max / 8.).ceil().max(1.);
    let mut x = 0.;
    while x <= x_max {
        let (px, _) = to_px((x, 0.));
        line(&mut img, (px, T as f64), (px, (H as i64 - B) as f64), grey);
        text(
            &mut img,
            px as i64 - 4,
            H as i64 - B + 8,
            &format!("{x}"),
            2,
        );
        x += xt;
    }
    text(&mut img, W as i64 / 2 - 20, H as i64 - 18, "epoch", 2);
    text(&mut img, 8, 8, "loss", 2);
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
