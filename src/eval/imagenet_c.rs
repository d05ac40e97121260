//! Not in the reference: `mae eval --imagenet_c DIR`, the ImageNet-C benchmark of Hendrycks &
//! Dietterich (ICLR 2019, "Benchmarking Neural Network Robustness to Common Corruptions"). DIR
//! holds `<corruption>/<severity 1-5>/<wnid>/*`: 15 corruptions (and up to 4 extra ones) × 5
//! severities of the 50 000 validation images. Each (corruption, severity) set is evaluated as
//! `mae eval` evaluates DATA_PATH/val (the official eval transform; folders numbered by their
//! ImageNet-1k index) and its top-1 error kept; then, per corruption, the mean over the
//! severities, their mean over the 15 corruptions, and the mCE: each corruption's mean error
//! divided by AlexNet's, averaged (the paper's CE_c = Σ_s E_s,c / Σ_s E_s,c^AlexNet, as
//! google-research/augmix's `compute_mce` computes it). The extra corruptions are reported and
//! kept out of both means. With `--json FILE` every finished set is recorded as it ends and a
//! restarted run skips it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Tensor};

use super::class_subset::ClassSubset;
use super::Classifier;
use crate::engine_finetune::evaluate_as;
use crate::torch::amp::Precision;
use crate::torch::data_loader::DataLoaderVal;
use crate::torch::distributed;
use crate::torch::serialization::atomic_write;
use crate::torchvision::datasets::ImageFolder;
use crate::torchvision::pil::PassOrder;

/// The 15 corruptions of the benchmark, in the paper's order, each with AlexNet's top-1 error
/// (the mean over its 5 severities), which the mCE divides by. The values are those of
/// hendrycks/robustness that google-research/augmix's imagenet.py lists as `ALEXNET_ERR`
/// ("Raw AlexNet errors taken from https://github.com/hendrycks/robustness"); rounded to a
/// tenth they are the AlexNet row of the paper's table.
pub const CORRUPTIONS: [(&str, f64); 15] = [
    ("gaussian_noise", 0.886428),
    ("shot_noise", 0.894468),
    ("impulse_noise", 0.922640),
    ("defocus_blur", 0.819880),
    ("glass_blur", 0.826268),
    ("motion_blur", 0.785948),
    ("zoom_blur", 0.798360),
    ("snow", 0.866816),
    ("frost", 0.826572),
    ("fog", 0.819324),
    ("brightness", 0.564592),
    ("contrast", 0.853204),
    ("elastic_transform", 0.646056),
    ("pixelate", 0.717840),
    ("jpeg_compression", 0.606500),
];

/// The extra corruptions released with the benchmark (held out of it for validation): reported,
/// never in the means.
pub const EXTRA: [&str; 4] = ["speckle_noise", "gaussian_blur", "spatter", "saturate"];

pub const SEVERITIES: usize = 5;

const LAYOUT: &str = "--imagenet_c DIR holds <corruption>/<severity 1-5>/<wnid>/images";

/// An ImageNet-C folder whose layout has been checked: its corruptions, standard ones first in
/// the paper's order, then the extra ones.
pub struct ImagenetC {
    pub root: PathBuf,
    pub corruptions: Vec<&'static str>,
}

/// The names of the directories in `dir`, sorted.
fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

impl ImagenetC {
    /// Checks the layout before anything is evaluated: every folder of `root` a corruption,
    /// each with the severities 1 to 5, each of those with ImageNet-1k wnid folders (their
    /// images are listed when the set is evaluated).
    pub fn scan(root: &Path) -> Result<ImagenetC> {
        let names = subdirs(root).with_context(|| format!("--imagenet_c {}", root.display()))?;
        let known = CORRUPTIONS.iter().map(|c| c.0).chain(EXTRA);
        let corruptions: Vec<&'static str> =
            known.filter(|c| names.iter().any(|n| n == c)).collect();
        if let Some(other) = names.iter().find(|n| !corruptions.contains(&n.as_str())) {
            bail!(
                "{}: not an ImageNet-C corruption ({LAYOUT}; the corruptions are {} and the extra {})",
                root.join(other).display(),
                CORRUPTIONS.map(|c| c.0).join(", "),
                EXTRA.join(", ")
            );
        }
        if corruptions.is_empty() {
            bail!(
                "--imagenet_c {}: no corruption folder ({LAYOUT})",
                root.display()
            );
        }
        for c in &corruptions {
            let dir = root.join(c);
            let severities = subdirs(&dir)?;
            if let Some(s) = severities
                .iter()
                .find(|s| !(1..=SEVERITIES).any(|i| i.to_string() == **s))
            {
                bail!(
                    "{}: not a severity 1 to 5 ({LAYOUT})",
                    dir.join(s).display()
                );
            }
            for s in 1..=SEVERITIES {
                let set = dir.join(s.to_string());
                if !set.is_dir() {
                    bail!(
                        "{} is missing: each corruption holds the severities 1 to 5 ({LAYOUT})",
                        set.display()
                    );
                }
                let classes = subdirs(&set)?;
                if classes.is_empty() {
                    bail!("{}: no class folder ({LAYOUT})", set.display());
                }
                if let Some(w) = classes
                    .iter()
                    .find(|w| ClassSubset::Imagenet1k.target(w).is_none())
                {
                    bail!(
                        "{}: not an ImageNet-1k WordNet id ({LAYOUT}; e.g. n01440764)",
                        set.join(w).display()
                    );
                }
            }
        }
        Ok(ImagenetC {
            root: root.to_path_buf(),
            corruptions,
        })
    }

    /// Every set as (`corruption/severity`, its folder), corruption by corruption.
    pub fn sets(&self) -> Vec<(String, PathBuf)> {
        self.corruptions
            .iter()
            .flat_map(|c| {
                (1..=SEVERITIES)
                    .map(move |s| (format!("{c}/{s}"), self.root.join(c).join(s.to_string())))
            })
            .collect()
    }
}

/// The top-1 count of one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetResult {
    pub images: u64,
    pub correct: u64,
}

impl SetResult {
    /// Top-1 error, a fraction.
    pub fn error(&self) -> f64 {
        (self.images - self.correct) as f64 / self.images as f64
    }
}

/// A corruption's errors (fractions), by severity; `alexnet` for the 15 standard ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub corruption: &'static str,
    pub alexnet: Option<f64>,
    pub errors: [Option<f64>; SEVERITIES],
}

impl Row {
    /// The mean error over the 5 severities, once all are known.
    pub fn mean(&self) -> Option<f64> {
        let e: Option<Vec<f64>> = self.errors.iter().copied().collect();
        e.map(|e| e.iter().sum::<f64>() / SEVERITIES as f64)
    }

    /// The corruption error: the mean error over AlexNet's (`100 * avg_err / ALEXNET_ERR[i]`).
    pub fn ce(&self) -> Option<f64> {
        Some(self.mean()? / self.alexnet?)
    }
}

/// The table of a run: one row per corruption of the folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub rows: Vec<Row>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

impl Table {
    pub fn new(corruptions: &[&'static str], results: &BTreeMap<String, SetResult>) -> Table {
        let rows = corruptions
            .iter()
            .map(|&c| Row {
                corruption: c,
                alexnet: CORRUPTIONS.iter().find(|a| a.0 == c).map(|a| a.1),
                errors: std::array::from_fn(|s| {
                    results.get(&format!("{c}/{}", s + 1)).map(SetResult::error)
                }),
            })
            .collect();
        Table { rows }
    }

    fn standard(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.alexnet.is_some())
    }

    /// The mean error over the standard corruptions of the folder (extra ones left out), once
    /// every set of them is known; with how many corruptions it averages.
    pub fn mean_error(&self) -> Option<(f64, usize)> {
        let means: Option<Vec<f64>> = self.standard().map(Row::mean).collect();
        means.filter(|m| !m.is_empty()).map(|m| (mean(&m), m.len()))
    }

    /// The mCE, defined over the 15 corruptions: `None` until all 15 are known.
    pub fn mce(&self) -> Option<f64> {
        let ces: Option<Vec<f64>> = self.standard().map(Row::ce).collect();
        ces.filter(|c| c.len() == CORRUPTIONS.len())
            .map(|c| mean(&c))
    }

    /// The corruptions of the 15 that the folder lacks.
    pub fn missing(&self) -> Vec<&'static str> {
        CORRUPTIONS
            .iter()
            .map(|c| c.0)
            .filter(|c| !self.rows.iter().any(|r| r.corruption == *c))
            .collect()
    }

    /// The table as printed: errors in %, three decimals.
    pub fn lines(&self) -> Vec<String> {
        let pct =
            |v: Option<f64>| v.map_or(format!("{:>8}", "-"), |v| format!("{:>8.3}", 100. * v));
        let mut out = vec![format!(
            "{:<18}{}{:>8}{:>9}{:>8}",
            "corruption",
            (1..=SEVERITIES)
                .map(|s| format!("{s:>8}"))
                .collect::<String>(),
            "mean",
            "AlexNet",
            "CE"
        )];
        for r in &self.rows {
            let errors: String = r.errors.iter().map(|&e| pct(e)).collect();
            let note = if r.alexnet.is_none() {
                "  (extra: not in the means)"
            } else {
                ""
            };
            out.push(format!(
                "{:<18}{errors}{} {}{}{note}",
                r.corruption,
                pct(r.mean()),
                pct(r.alexnet),
                pct(r.ce()),
            ));
        }
        out.push(match self.mean_error() {
            Some((m, n)) => format!(
                "mean top-1 error over the {n} corruptions: {:.3} %",
                100. * m
            ),
            None => "mean top-1 error: - (sets left to evaluate)".into(),
        });
        out.push(match (self.mce(), self.missing()) {
            (Some(m), _) => format!("mCE (normalised by AlexNet's errors): {:.3} %", 100. * m),
            (None, missing) if !missing.is_empty() => {
                format!(
                    "mCE: - (defined over the 15 corruptions; missing {})",
                    missing.join(", ")
                )
            }
            (None, _) => "mCE: - (sets left to evaluate)".into(),
        });
        out
    }

    /// The table in the `--json` file, in %.
    pub fn to_json(&self) -> serde_json::Value {
        let pct = |v: Option<f64>| v.map(|v| 100. * v);
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "corruption": r.corruption,
                    "extra": r.alexnet.is_none(),
                    "top1_error": r.errors.map(pct),
                    "mean": pct(r.mean()),
                    "alexnet_error": pct(r.alexnet),
                    "ce": pct(r.ce()),
                })
            })
            .collect();
        json!({
            "corruptions": rows,
            "mean_error": pct(self.mean_error().map(|m| m.0)),
            "mce": pct(self.mce()),
        })
    }
}

/// What the `--json` file records: the evaluation it belongs to, every finished set, the table.
#[derive(Serialize, Deserialize)]
struct Record {
    settings: serde_json::Value,
    sets: BTreeMap<String, SetResult>,
    #[serde(default)]
    table: serde_json::Value,
}

/// The finished sets of a previous run of the same evaluation recorded in `path`, if any.
fn resume(path: &Path, settings: &serde_json::Value) -> Result<BTreeMap<String, SetResult>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading --json {}", path.display())),
    };
    let record: Record = serde_json::from_str(&text).with_context(|| {
        format!(
            "--json {}: not the record of an ImageNet-C run (remove it or pass another file)",
            path.display()
        )
    })?;
    if &record.settings != settings {
        bail!(
            "--json {} records another evaluation ({}); this one is {}: pass another file or remove it",
            path.display(),
            record.settings,
            settings
        );
    }
    if let Some((k, r)) = record
        .sets
        .iter()
        .find(|(_, r)| r.images == 0 || r.correct > r.images)
    {
        bail!(
            "--json {}: set {k} records {} correct of {} images",
            path.display(),
            r.correct,
            r.images
        );
    }
    Ok(record.sets)
}

fn write(
    path: &Path,
    settings: &serde_json::Value,
    sets: &BTreeMap<String, SetResult>,
    table: &Table,
) -> Result<()> {
    let record = Record {
        settings: settings.clone(),
        sets: sets.clone(),
        table: table.to_json(),
    };
    atomic_write(path, |w| Ok(serde_json::to_writer_pretty(w, &record)?))
        .with_context(|| format!("writing --json {}", path.display()))
}

/// What `mae eval --imagenet_c` reads (main_finetune's flags and `--resume` checkpoint).
pub struct Args<'a> {
    pub dir: &'a Path,
    pub json: Option<&'a Path>,
    pub classifier: Classifier<'a>,
    pub batch_size: usize,
    pub num_workers: usize,
    pub pillow: PassOrder,
    pub device: Device,
    pub precision: Precision,
}

/// Evaluates the classifier on every set of `args.dir` not yet recorded in `--json`, then
/// prints the table.
pub fn main(args: Args) -> Result<()> {
    let c = ImagenetC::scan(args.dir)?;
    ClassSubset::Imagenet1k.check_head(args.classifier.num_classes)?;
    let (input_size, name) = (args.classifier.input_size, args.classifier.name.clone());
    // what the errors depend on: a record of another evaluation is never resumed
    let settings = json!({
        "imagenet_c": args.dir,
        "checkpoint": args.classifier.what,
        "model": args.classifier.name,
        "nb_classes": args.classifier.num_classes,
        "global_pool": args.classifier.global_pool,
        "input_size": input_size,
        "precision": args.precision,
        "pillow": args.pillow,
    });
    let mut results = match args.json {
        Some(path) => resume(path, &settings)?,
        None => BTreeMap::new(),
    };
    // the record (by the main process): written before the first set, so that a FILE that
    // cannot be written fails now and not hours later, then after every set
    let record = |results: &BTreeMap<String, SetResult>| match args.json {
        Some(path) if distributed::is_main_process() => write(
            path,
            &settings,
            results,
            &Table::new(&c.corruptions, results),
        ),
        _ => Ok(()),
    };
    record(&results)?;
    let (_vs, model) = args.classifier.load(args.device)?;
    let forward = |x: &Tensor| model.forward_t(x, false);

    let sets = c.sets();
    let todo: Vec<&(String, PathBuf)> = sets
        .iter()
        .filter(|(k, _)| !results.contains_key(k))
        .collect();
    println!(
        "ImageNet-C {}: {} corruptions, {} sets; {} finished{}, {} to evaluate",
        c.root.display(),
        c.corruptions.len(),
        sets.len(),
        sets.len() - todo.len(),
        args.json
            .map_or(String::new(), |p| format!(" (recorded in {})", p.display())),
        todo.len()
    );
    if args.json.is_none() {
        println!("no --json FILE: a run stopped before its end starts again from the first set");
    }
    for (i, (key, dir)) in todo.iter().enumerate() {
        let folder = ImageFolder::new(dir)?;
        let split = ClassSubset::Imagenet1k.split(&folder)?;
        let loader = DataLoaderVal::new(
            split.dataset,
            split.targets,
            args.batch_size,
            args.num_workers,
            input_size,
            args.pillow,
        )?;
        let header = format!("[{}/{}] {key}", i + 1, todo.len());
        let (stats, _) = evaluate_as(
            &header,
            &loader,
            &forward,
            args.device,
            args.precision,
            false,
        )?;
        let r = SetResult {
            images: stats.images as u64,
            correct: (stats.acc1 * stats.images as f64 / 100.).round() as u64,
        };
        println!(
            "ImageNet-C {key}: top-1 error {:.3} % ({} images)",
            100. * r.error(),
            r.images
        );
        results.insert(key.clone(), r);
        record(&results)?;
    }
    let table = Table::new(&c.corruptions, &results);
    println!(
        "ImageNet-C top-1 error (%) of {name} ({}):",
        c.root.display()
    );
    for line in table.lines() {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mce_of_a_hand_made_table() {
        // a table whose means are known by hand, and one extra corruption
        let mut results = BTreeMap::new();
        for (i, (c, _)) in CORRUPTIONS.iter().enumerate() {
            for s in 1..=SEVERITIES as u64 {
                // error (i + s) / 100 on 100 images
                let images = 100;
                results.insert(
                    format!("{c}/{s}"),
                    SetResult {
                        images,
                        correct: images - (i as u64 + s),
                    },
                );
            }
        }
        results.insert(
            "spatter/1".into(),
            SetResult {
                images: 10,
                correct: 0,
            },
        );
        let mut names: Vec<&str> = CORRUPTIONS.iter().map(|c| c.0).collect();
        names.push("spatter");
        let table = Table::new(&names, &results);
        // corruption i: mean error (i + 3) / 100
        let (mean, n) = table.mean_error().unwrap();
        assert_eq!(n, 15);
        assert!((mean - 0.10).abs() < 1e-12, "{mean}"); // mean of 3..17 is 10
        let want: f64 = CORRUPTIONS
            .iter()
            .enumerate()
            .map(|(i, c)| (i as f64 + 3.) / 100. / c.1)
            .sum::<f64>()
            / 15.;
        assert!((table.mce().unwrap() - want).abs() < 1e-12);
        assert_eq!(table.rows[15].mean(), None); // spatter: one severity of five
        assert!(table
            .lines()
            .iter()
            .any(|l| l.starts_with("spatter") && l.contains("extra")));
    }

    #[test]
    fn incomplete_tables_have_no_mce() {
        let mut results = BTreeMap::new();
        results.insert(
            "fog/1".into(),
            SetResult {
                images: 4,
                correct: 1,
            },
        );
        let table = Table::new(&["fog"], &results);
        assert_eq!((table.mean_error(), table.mce()), (None, None));
        assert_eq!(table.rows[0].errors[0], Some(0.75));
        for s in 2..=5 {
            results.insert(
                format!("fog/{s}"),
                SetResult {
                    images: 4,
                    correct: 1,
                },
            );
        }
        let table = Table::new(&["fog"], &results);
        assert_eq!(table.mean_error(), Some((0.75, 1)));
        assert_eq!(table.mce(), None);
        assert!(table
            .lines()
            .last()
            .unwrap()
            .contains("missing gaussian_noise"));
    }
}
