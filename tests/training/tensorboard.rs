//! TensorBoard events of `mae pretrain`, `finetune` and `linprobe`, read back by the real reader
//! (the pinned `tensorboard` package's EventAccumulator): the official tags at the official
//! steps, with the values log.txt and train_steps.csv hold; a run killed mid-epoch leaves a file
//! the reader opens.

use crate::common::{self, argv};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::s;

/// DIR/data/{train,val}/{a,b}/*.png, 16 images a class in train.
fn image_folder(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    common::two_class_images(&data, 16);
    data
}

/// `mae <cmd> --device cpu … ARGS` on `data` into `out`, events in `out/tb`; returns stdout.
fn mae(cmd: &str, data: &Path, out: &Path, args: &str) -> String {
    let tb = out.join("tb");
    let mut all = argv!(
        "{} --device cpu --num_workers 1 --input_size 32 --data_path {} --output_dir {} \
         --log_dir {}",
        cmd,
        data.display(),
        out.display(),
        tb.display()
    );
    all.extend(argv!(args));
    let stdout = common::mae_ok(&all);
    assert!(
        stdout.contains(&format!("log_dir: {}", tb.display())),
        "{stdout}"
    );
    stdout
}

/// tag -> [(step, value)] as TensorBoard's EventAccumulator reads the folder.
fn read_scalars(dir: &Path) -> BTreeMap<String, Vec<(i64, f64)>> {
    let code = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
ea.Reload()
print(json.dumps({t: [[e.step, e.value] for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}))
"#;
    let json = common::run_python_code(code, &[s(dir)]);
    serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn log_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("log.txt"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// float32 storage of a float64: relative 2^-24.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1e-12)
}

fn steps_of(v: &[(i64, f64)]) -> Vec<i64> {
    v.iter().map(|p| p.0).collect()
}

/// The official `train_loss`/`loss` and `lr` per optimizer step: one event per step, each the
/// mean over its epoch equal to log.txt's `train_loss`/`train_lr` (accum_iter 1).
fn assert_train_scalars(
    scalars: &BTreeMap<String, Vec<(i64, f64)>>,
    loss_tag: &str,
    log: &[serde_json::Value],
    steps: &[i64],
) {
    for tag in [loss_tag, "lr"] {
        let v = &scalars[tag];
        assert_eq!(steps_of(v), steps, "{tag}");
        let per_epoch = v.len() / log.len();
        for (epoch, line) in log.iter().enumerate() {
            let chunk = &v[epoch * per_epoch..(epoch + 1) * per_epoch];
            let mean = chunk.iter().map(|p| p.1).sum::<f64>() / per_epoch as f64;
            let key = if tag == "lr" {
                "train_lr"
            } else {
                "train_loss"
            };
            let want = line[key].as_f64().unwrap();
            assert!(close(mean, want), "{tag} epoch {epoch}: {mean} vs {want}");
        }
    }
}

/// `perf/test_acc1`, `perf/test_acc5`, `perf/test_loss` at step = epoch, log.txt's values.
fn assert_test_scalars(scalars: &BTreeMap<String, Vec<(i64, f64)>>, log: &[serde_json::Value]) {
    for m in ["acc1", "acc5", "loss"] {
        let v = &scalars[&format!("perf/test_{m}")];
        assert_eq!(steps_of(v), (0..log.len() as i64).collect::<Vec<_>>());
        for ((_, got), line) in v.iter().zip(log) {
            let want = line[format!("test_{m}")].as_f64().unwrap();
            assert!(close(*got, want), "perf/test_{m}: {got} vs {want}");
        }
    }
}

#[test]
fn pretrain_logs_train_loss_and_lr_every_accum_iter() {
    let dir = common::scratch();
    let out = dir.join("pretrain");
    // 32 images, batch 4: 8 iterations an epoch; accum_iter 2 logs iterations 1, 3, 5, 7
    let args = "--model mae_vit_tiny_patch4 --batch_size 4 --accum_iter 2 --epochs 2 \
                --warmup_epochs 1";
    mae("pretrain", &image_folder(&dir), &out, args);
    let tb = out.join("tb");
    let files: Vec<String> = std::fs::read_dir(&tb)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.len() == 1 && files[0].starts_with("events.out.tfevents."),
        "{files:?}"
    );
    let scalars = read_scalars(&tb);
    assert_eq!(
        scalars.keys().collect::<Vec<_>>(),
        ["lr", "train_loss"],
        "{scalars:?}"
    );
    // int((data_iter_step / len(data_loader) + epoch) * 1000) for data_iter_step = 1, 3, 5, 7
    let want_steps = [125, 375, 625, 875, 1125, 1375, 1625, 1875];
    // every iteration's (epoch, loss, lr) as train_steps.csv has them
    let csv: Vec<Vec<f64>> = std::fs::read_to_string(out.join("train_steps.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(csv.len(), 16);
    for (tag, col) in [("train_loss", 1), ("lr", 2)] {
        let v = &scalars[tag];
        assert_eq!(steps_of(v), want_steps, "{tag}");
        for (k, (_, got)) in v.iter().enumerate() {
            let want = csv[2 * k + 1][col];
            assert!(close(*got, want), "{tag}[{k}]: {got} vs {want}");
        }
    }
    // warm-up from 0: the first logged lr is that of iteration 0 (set every accum_iter)
    assert!(scalars["lr"][0].1 == 0.0, "{:?}", scalars["lr"]);
    // log.txt's epoch means are those of the same iterations
    for (epoch, line) in log_lines(&out).iter().enumerate() {
        let rows = &csv[epoch * 8..(epoch + 1) * 8];
        let mean = rows.iter().map(|r| r[1]).sum::<f64>() / 8.;
        assert!(close(mean, line["train_loss"].as_f64().unwrap()));
    }
}

#[test]
fn finetune_and_linprobe_log_loss_lr_and_test_metrics() {
    let dir = common::scratch();
    let data = image_folder(&dir);
    // 32 images, batch 8: 4 iterations an epoch, steps 0, 250, 500, 750, 1000, …
    let args = "--model vit_tiny_patch4 --nb_classes 2 --batch_size 8 --epochs 2 --warmup_epochs 1";
    let steps = [0, 250, 500, 750, 1000, 1250, 1500, 1750];
    let tags = [
        "loss",
        "lr",
        "perf/test_acc1",
        "perf/test_acc5",
        "perf/test_loss",
    ];

    let out = dir.join("finetune");
    mae(
        "finetune",
        &data,
        &out,
        &format!("{args} --aa none --mixup 0.8"),
    );
    let scalars = read_scalars(&out.join("tb"));
    assert_eq!(scalars.keys().collect::<Vec<_>>(), tags);
    let log = log_lines(&out);
    assert_train_scalars(&scalars, "loss", &log, &steps);
    assert_test_scalars(&scalars, &log);

    let out = dir.join("linprobe");
    mae("linprobe", &data, &out, args);
    let scalars = read_scalars(&out.join("tb"));
    assert_eq!(scalars.keys().collect::<Vec<_>>(), tags);
    let log = log_lines(&out);
    assert_train_scalars(&scalars, "loss", &log, &steps);
    assert_test_scalars(&scalars, &log);
}

#[test]
fn run_killed_mid_epoch_leaves_a_readable_file() {
    let dir = common::scratch();
    let out = dir.join("killed");
    let tb = out.join("tb");
    // 32 iterations an epoch (batch 1): killed once a few steps are in the file, long before
    // the end of the first epoch's 32
    #[rustfmt::skip]
    let args = argv!(
        "pretrain --model mae_vit_tiny_patch4 --input_size 32 --batch_size 1 --epochs 100 \
         --device cpu --num_workers 1 --data_path {} --output_dir {} --log_dir {}",
        image_folder(&dir).display(), out.display(), tb.display()
    );
    let mut child = common::mae_command(&args)
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let events_len = || -> u64 {
        std::fs::read_dir(&tb)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok()?.metadata().ok())
            .map_or(0, |m| m.len())
    };
    let started = std::time::Instant::now();
    // the version record is 41 bytes, a scalar record about 45
    while events_len() < 41 + 45 * 6 && started.elapsed().as_secs() < 120 {
        assert!(child.try_wait().unwrap().is_none(), "mae pretrain ended");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(events_len() >= 41 + 45 * 6, "no scalars within 120 s");

    let scalars = read_scalars(&tb);
    let (loss, lr) = (&scalars["train_loss"], &scalars["lr"]);
    assert!(loss.len() >= 3, "{scalars:?}");
    // killed between a step's two records at worst
    assert!(lr.len() == loss.len() || lr.len() + 1 == loss.len());
    // batch 1, 32 iterations an epoch: step k is int(k / 32 * 1000)
    for (k, (step, value)) in loss.iter().enumerate() {
        assert_eq!(*step, (k as f64 / 32. * 1000.) as i64);
        assert!(value.is_finite() && *value > 0.);
    }
}
