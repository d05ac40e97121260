//! `mae eval` against the reference pipeline (tools/reference/eval_reference.py: torchvision
//! ImageFolder + the official eval transform + timm's VisionTransformer +
//! engine_finetune.evaluate's loop) on a small ImageFolder of real photos
//! (tools/fixtures/make_eval_fixture.py), and its errors.
use crate::common;

use std::path::Path;

use crate::common::{acc_line, argv, mae_output, read_tensors};

#[test]
fn eval_matches_reference_pipeline() {
    let (dir, ckpt) = common::eval_fixture();
    let scratch = common::scratch();
    let (ref_logits, our_logits, json) = (
        scratch.join("ref_logits.safetensors"),
        scratch.join("logits.safetensors"),
        scratch.join("top5.json"),
    );
    // batch 8 over 38 images: the last batch is partial, as in the official drop_last=False
    let flags = |logits: &Path| {
        argv!(
            "--resume {} --data_path {} --batch_size 8 --num_workers 2 --device cpu \
             --save_logits {}",
            ckpt.display(),
            dir.display(),
            logits.display()
        )
    };
    let args = flags(&ref_logits);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reference = common::run_python(
        &common::root().join("tools/reference/eval_reference.py"),
        &args,
    );

    let mut args = argv!("eval");
    args.extend(flags(&our_logits));
    args.extend(argv!("--output_json {}", json.display()));
    let out = mae_output(&args);
    let stdout = common::stdout_ok(&out, "mae eval");
    eprintln!(
        "reference: {}\nmae eval:  {}",
        acc_line(&reference),
        acc_line(&stdout)
    );
    assert_eq!(acc_line(&stdout), acc_line(&reference));
    // the fixture's head makes the three numbers non-trivial
    assert!(acc_line(&stdout).starts_with("* Acc@1 78.947 Acc@5 86.842 loss"));

    let (ours, want) = (read_tensors(&our_logits), read_tensors(&ref_logits));
    assert!(ours["targets"].equal(&want["targets"]));
    let (a, b) = (&ours["logits"], &want["logits"]);
    assert_eq!(a.size(), [38, 1000]);
    let err = (a - b).norm_scalaropt_dim(2, [1], false) / b.norm_scalaropt_dim(2, [1], false);
    let worst = err.max().double_value(&[]);
    eprintln!("worst per-image logits relative error {worst:.3e}");
    assert!(
        worst <= 1e-4,
        "per-image logits relative error {worst:e} > 1e-4"
    );

    let top5: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let images = top5["images"].as_array().unwrap();
    assert_eq!(images.len(), 38);
    let argmax = b.argmax(1, false);
    for (i, img) in images.iter().enumerate() {
        let top = img["top5"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert_eq!(
            top[0]["class"].as_i64().unwrap(),
            argmax.int64_value(&[i as i64])
        );
        assert!(Path::new(img["path"].as_str().unwrap()).exists());
    }
}

#[test]
fn eval_errors_name_the_problem() {
    let (dir, ckpt) = common::eval_fixture();
    let scratch = common::scratch();
    let run = |args: &[&str]| {
        let mut all = argv!("eval --device cpu --num_workers 2");
        all.extend(args.iter().map(|a| a.to_string()));
        let out = mae_output(&all);
        assert!(!out.status.success(), "mae eval {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // a corrupt image stops the evaluation with its name
    let bad = scratch.join("bad");
    std::fs::create_dir_all(bad.join("val/cat")).unwrap();
    std::fs::copy(dir.join("val/cat/gray.jpg"), bad.join("val/cat/a.jpg")).unwrap();
    let data = std::fs::read(dir.join("val/cat/chelsea_0_crop.jpg")).unwrap();
    std::fs::write(bad.join("val/cat/truncated.jpg"), &data[..data.len() / 3]).unwrap();
    let ckpt = ckpt.to_str().unwrap();
    let err = run(&["--resume", ckpt, "--data_path", bad.to_str().unwrap()]);
    assert!(err.contains("truncated.jpg"), "{err}");

    // an empty class folder, a missing val/, a missing --resume
    let empty = scratch.join("empty");
    std::fs::create_dir_all(empty.join("val/dogs")).unwrap();
    let err = run(&["--resume", ckpt, "--data_path", empty.to_str().unwrap()]);
    assert!(
        err.contains("Found no valid file for the class dogs"),
        "{err}"
    );
    let err = run(&[
        "--resume",
        ckpt,
        "--data_path",
        scratch.join("nope").to_str().unwrap(),
    ]);
    assert!(err.contains("nope/val"), "{err}");
    let err = run(&["--data_path", dir.to_str().unwrap()]);
    assert!(err.contains("--resume"), "{err}");
}
