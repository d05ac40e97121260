//! The robustness protocols of `mae eval` and `mae predict` against
//! tools/reference/robustness_reference.py (torchvision's ImageFolder, the official eval
//! transform and timm's VisionTransformer; class lists read through timm; timm validate.py's
//! `output[:, valid_labels]`; augmix's `compute_mce`), on the synthetic folders of
//! tools/fixtures/make_robustness_fixture.py (wnid folders in each layout, a vit_tiny_patch4 at
//! 32 px with a 1000-class head in the official format). Checks: the same Acc@1 / Acc@5 / loss
//! lines, the same ImageNet-C counts and mCE, a killed ImageNet-C run resumed to the same JSON,
//! the mCE of a hand-made table, the same top-k as PyTorch for `mae predict`, and errors that
//! name the problem.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::{acc_line, mae_command, mae_err, mae_output, run_python, s, stdout_ok};
use serde_json::Value;

/// The fixture folder (written once per test binary: the tests run in parallel).
fn fixture() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::common::root().join("target/fixtures/robustness");
        let script = crate::common::root().join("tools/fixtures/make_robustness_fixture.py");
        run_python(&script, &[s(&dir)]);
        dir
    })
    .clone()
}

fn checkpoint() -> PathBuf {
    fixture().join("vit_tiny_patch4_1k.pth")
}

fn reference(args: &[&str]) -> String {
    let script = crate::common::root().join("tools/reference/robustness_reference.py");
    run_python(&script, args)
}

/// `mae eval` on the fixture model with the test's loader settings, and `extra`.
fn eval_args<'a>(ckpt: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "eval",
        "--resume",
        s(ckpt),
        "--input_size",
        "32",
        "--batch_size",
        "4",
        "--num_workers",
        "2",
        "--device",
        "cpu",
    ];
    args.extend(extra);
    args
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The number a line `PREFIX X %` of stdout gives.
fn printed(stdout: &str, prefix: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line '{prefix}' in:\n{stdout}"));
    line[prefix.len()..]
        .trim()
        .trim_end_matches('%')
        .trim()
        .to_string()
}

#[test]
fn class_data_is_timms() {
    // the lists embedded in the binary are the bytes of timm's package data
    let code = "import pkgutil, sys, os\n\
        d = sys.argv[1]\n\
        for f in ['imagenet_synsets', 'imagenet_a_synsets', 'imagenet_a_indices', 'imagenet_r_synsets', 'imagenet_r_indices']:\n\
        \x20   ours = open(os.path.join(d, f + '.txt'), 'rb').read()\n\
        \x20   assert ours == pkgutil.get_data('timm.data', '_info/' + f + '.txt'), f\n\
        keep = set(pkgutil.get_data('timm.data', '_info/imagenet_synsets.txt').decode().split())\n\
        lemmas = [l for l in pkgutil.get_data('timm.data', '_info/imagenet_synset_to_lemma.txt').decode().splitlines() if l.split('\\t')[0] in keep]\n\
        assert open(os.path.join(d, 'imagenet_synset_to_lemma_1k.txt')).read().splitlines() == lemmas\n\
        print('same')\n";
    let dir = crate::common::root().join("src/eval/data");
    assert_eq!(
        crate::common::run_python_code(code, &[s(&dir)]).trim(),
        "same"
    );
}

#[test]
fn class_subsets_match_reference() {
    let (dir, ckpt) = (fixture(), checkpoint());
    let mut lines = Vec::new();
    // ImageNet-A / -R: 4 of their 200 classes; Sketch's layout: 4 of the 1000; and the A folder
    // read as 1000 classes, which its decoys win
    for (folder, subset) in [
        ("imagenet-a", "imagenet-a"),
        ("imagenet-r", "imagenet-r"),
        ("sketch", "imagenet-1k"),
        ("imagenet-a", "imagenet-1k"),
    ] {
        let data = dir.join(folder);
        let want = reference(&[
            "subset",
            "--resume",
            s(&ckpt),
            "--data_path",
            s(&data),
            "--class_subset",
            subset,
        ]);
        let args = eval_args(&ckpt, &["--data_path", s(&data), "--class_subset", subset]);
        let out = mae_output(&args);
        let got = stdout_ok(&out, "mae eval --class_subset");
        eprintln!(
            "{folder} as {subset}: reference {} / mae {}",
            acc_line(&want),
            acc_line(&got)
        );
        assert_eq!(acc_line(&got), acc_line(&want), "{folder} as {subset}");
        lines.push(acc_line(&got));
    }
    // the numbers are not trivial, and restricting to the 200 classes changes them
    assert_eq!(lines[0], "* Acc@1 25.000 Acc@5 83.333 loss 5.374");
    assert_ne!(lines[0], lines[3]);
}

fn imagenet_c_args<'a>(ckpt: &'a Path, dir: &'a Path, json: &'a Path) -> Vec<&'a str> {
    eval_args(ckpt, &["--imagenet_c", s(dir), "--json", s(json)])
}

#[test]
fn imagenet_c_matches_reference_and_resumes() {
    let (ckpt, dir) = (checkpoint(), fixture().join("imagenet-c"));
    let scratch = crate::common::scratch();
    let want: Value = serde_json::from_str(&reference(&[
        "imagenet_c",
        "--resume",
        s(&ckpt),
        "--imagenet_c",
        s(&dir),
    ]))
    .unwrap();

    // an uninterrupted run: the reference's counts, mean error and mCE
    let fresh = scratch.join("fresh.json");
    let out = mae_output(imagenet_c_args(&ckpt, &dir, &fresh));
    let stdout = stdout_ok(&out, "mae eval --imagenet_c");
    let record = read_json(&fresh);
    assert_eq!(record["sets"], want["sets"], "per-set counts");
    assert_eq!(record["sets"].as_object().unwrap().len(), 80);
    let mce = printed(&stdout, "mCE (normalised by AlexNet's errors):");
    let mean = printed(&stdout, "mean top-1 error over the 15 corruptions:");
    eprintln!("mCE {mce} (reference {}), mean error {mean}", want["mce"]);
    assert_eq!(mce, format!("{:.3}", want["mce"].as_f64().unwrap()));
    assert_eq!(mean, format!("{:.3}", want["mean_error"].as_f64().unwrap()));
    let rows = record["table"]["corruptions"].as_array().unwrap();
    assert_eq!(rows.len(), 16);
    assert!(rows[15]["extra"].as_bool().unwrap() && rows[15]["ce"].is_null());
    for row in &rows[..15] {
        let c = row["corruption"].as_str().unwrap();
        assert_eq!(row["top1_error"], want["top1_error"][c], "{c}");
    }

    // killed after a few sets, restarted with the same command: the same record
    let resumed = scratch.join("resumed.json");
    let args = imagenet_c_args(&ckpt, &dir, &resumed);
    let mut child = mae_command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut done = 0;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if line.unwrap().contains(": top-1 error") {
            done += 1;
            if done == 4 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let recorded = read_json(&resumed)["sets"].as_object().unwrap().len();
    assert!(
        (3..80).contains(&recorded),
        "the killed run recorded {recorded} sets of 80"
    );
    let out = mae_output(&args);
    let stdout = stdout_ok(&out, "mae eval --imagenet_c (resumed)");
    assert!(
        stdout.contains(&format!("80 sets; {recorded} finished")),
        "{stdout}"
    );
    assert_eq!(
        read_json(&resumed),
        record,
        "resumed and uninterrupted records"
    );
    assert_eq!(
        printed(&stdout, "mCE (normalised by AlexNet's errors):"),
        mce
    );
}

#[test]
fn imagenet_c_mce_of_a_hand_made_table() {
    let (ckpt, dir) = (checkpoint(), fixture().join("imagenet-c"));
    let scratch = crate::common::scratch();
    // a first run gives the record's settings; its counts are replaced by hand-made ones
    let json = scratch.join("table.json");
    let out = mae_output(imagenet_c_args(&ckpt, &dir, &json));
    stdout_ok(&out, "mae eval --imagenet_c");
    let mut record = read_json(&json);
    let mut x = 12345u64;
    for (_, set) in record["sets"].as_object_mut().unwrap().iter_mut() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        set["images"] = 50_000.into();
        set["correct"] = (5_000 + (x >> 33) % 40_000).into();
    }
    std::fs::write(&json, serde_json::to_string(&record).unwrap()).unwrap();

    let out = mae_output(imagenet_c_args(&ckpt, &dir, &json));
    let stdout = stdout_ok(&out, "mae eval --imagenet_c (hand-made table)");
    assert!(stdout.contains("80 finished"), "{stdout}");
    let want: Value = serde_json::from_str(&reference(&["mce", s(&json)])).unwrap();
    let mce = printed(&stdout, "mCE (normalised by AlexNet's errors):");
    eprintln!("hand-made table: mCE {mce}, reference {}", want["mce"]);
    assert_eq!(mce, format!("{:.3}", want["mce"].as_f64().unwrap()));
    let got = read_json(&json)["table"]["mce"].as_f64().unwrap();
    assert!(
        (got - want["mce"].as_f64().unwrap()).abs() < 1e-9,
        "{got} {}",
        want["mce"]
    );
    assert_eq!(
        printed(&stdout, "mean top-1 error over the 15 corruptions:"),
        format!("{:.3}", want["mean_error"].as_f64().unwrap())
    );
}

/// PyTorch's top-k for `mae predict`: the official eval transform, timm's VisionTransformer,
/// softmax.
const PREDICT_REFERENCE: &str = "import sys, os, json, torch\n\
from functools import partial\n\
sys.path[:0] = ['tools/reference']\n\
from official import build_eval_transform\n\
from PIL import Image\n\
from timm.models.vision_transformer import VisionTransformer\n\
ckpt, patch, dim, depth, heads, classes, k = sys.argv[1], *map(int, sys.argv[2:8])\n\
m = VisionTransformer(img_size=32, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, num_classes=classes, global_pool='avg', fc_norm=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()\n\
m.load_state_dict(torch.load(ckpt, map_location='cpu')['model'])\n\
out = []\n\
for p in sys.argv[8:]:\n\
\x20   with torch.no_grad():\n\
\x20       probs = m(build_eval_transform(32)(Image.open(p).convert('RGB'))[None]).softmax(1)[0]\n\
\x20   v, i = probs.topk(k)\n\
\x20   out.append([[int(c), float(q)] for c, q in zip(i, v)])\n\
print(json.dumps(out))\n";

fn predict_matches(ckpt: &Path, arch: [&str; 5], images: &[&str]) -> Value {
    let mut args = vec!["predict", "--resume", s(ckpt), "--device", "cpu", "--json"];
    for i in images {
        args.extend(["--image", i]);
    }
    let got: Value = serde_json::from_str(&stdout_ok(&mae_output(&args), "mae predict")).unwrap();
    let mut py = vec![s(ckpt)];
    py.extend(arch);
    py.push("5");
    py.extend(images);
    let want: Value =
        serde_json::from_str(&crate::common::run_python_code(PREDICT_REFERENCE, &py)).unwrap();
    for (g, w) in got["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want.as_array().unwrap())
    {
        let top = g["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        for (t, w) in top.iter().zip(w.as_array().unwrap()) {
            assert_eq!(t["class"], w[0], "{g} vs {w}");
            let (p, q) = (t["prob"].as_f64().unwrap(), w[1].as_f64().unwrap());
            assert!((p - q).abs() < 1e-5, "probability {p} vs PyTorch's {q}");
        }
    }
    got
}

#[test]
fn predict_matches_pytorch() {
    let photos = [
        "tests/data/images/chelsea.png",
        "tests/data/images/rocket.jpg",
    ];
    // the shipped Fashion-MNIST ViT, on a fresh clone: Fashion-MNIST's names
    let shipped = crate::common::root().join("weights/mae_finetuned_fmnist_mini_patch4.pth");
    let got = predict_matches(&shipped, ["4", "128", "6", "4", "10"], &photos);
    assert_eq!(got["names"], "Fashion-MNIST");
    let fashion = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ];
    for t in got["images"][0]["top"].as_array().unwrap() {
        assert_eq!(t["name"], fashion[t["class"].as_u64().unwrap() as usize]);
    }
    // a 1000-class head: ImageNet's lemmas
    let got = predict_matches(&checkpoint(), ["4", "64", "2", "4", "1000"], &photos);
    let top = &got["images"][1]["top"][0];
    let lemmas = std::fs::read_to_string(
        crate::common::root().join("src/eval/data/imagenet_synset_to_lemma_1k.txt"),
    )
    .unwrap();
    let lemma = lemmas
        .lines()
        .nth(top["class"].as_u64().unwrap() as usize)
        .unwrap();
    assert_eq!(
        lemma.split_once('\t').unwrap().1,
        top["name"].as_str().unwrap()
    );

    // the table, and --class_names
    let scratch = crate::common::scratch();
    let names_file = scratch.join("names.txt");
    std::fs::write(
        &names_file,
        (0..10).map(|i| format!("item {i}\n")).collect::<String>(),
    )
    .unwrap();
    let out = mae_output([
        "predict",
        "--resume",
        s(&shipped),
        "--image",
        photos[0],
        "--topk",
        "3",
        "--class_names",
        s(&names_file),
        "--device",
        "cpu",
    ]);
    let stdout = stdout_ok(&out, "mae predict");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], photos[0]);
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains(" %") && l.contains("item ")),
        "{stdout}"
    );
}

#[test]
fn errors_name_the_problem() {
    let (dir, ckpt) = (fixture(), checkpoint());
    let scratch = crate::common::scratch();

    // a class folder that is not a wnid of the chosen set
    let sketch = dir.join("sketch");
    let err = mae_err(eval_args(
        &ckpt,
        &["--data_path", s(&sketch), "--class_subset", "imagenet-a"],
    ));
    assert!(
        err.contains("sketch/val/n0")
            && err.contains("not a WordNet id of --class_subset imagenet-a"),
        "{err}"
    );
    let cats = scratch.join("cats");
    std::fs::create_dir_all(cats.join("val/cats")).unwrap();
    std::fs::copy(
        crate::common::shared_image("chelsea.png"),
        cats.join("val/cats/0.png"),
    )
    .unwrap();
    let err = mae_err(eval_args(
        &ckpt,
        &["--data_path", s(&cats), "--class_subset", "imagenet-1k"],
    ));
    assert!(
        err.contains("val/cats") && err.contains("imagenet-1k"),
        "{err}"
    );

    // a head that is not ImageNet's 1000 classes
    let fmnist = crate::common::root().join("weights/mae_finetuned_fmnist_mini_patch4.pth");
    let err = mae_err(eval_args(
        &fmnist,
        &["--data_path", s(&sketch), "--class_subset", "imagenet-1k"],
    ));
    assert!(err.contains("1000") && err.contains("10 classes"), "{err}");
    // not with training
    let err = mae_err([
        "finetune",
        "--class_subset",
        "imagenet-a",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("use mae eval"), "{err}");

    // ImageNet-C layouts: a val folder, a corruption folder, a missing severity, a stray class
    let json = scratch.join("c.json");
    let c_err = |c: &Path| mae_err(imagenet_c_args(&ckpt, c, &json));
    let err = c_err(&dir.join("imagenet-a/val"));
    assert!(
        err.contains("imagenet-a/val/n0") && err.contains("not an ImageNet-C corruption"),
        "{err}"
    );
    let err = c_err(&dir.join("imagenet-c/fog"));
    assert!(
        err.contains("imagenet-c/fog/1: not an ImageNet-C corruption"),
        "{err}"
    );
    let bad = scratch.join("c");
    for sev in 1..=4 {
        let set = bad.join(format!("fog/{sev}/n01440764"));
        std::fs::create_dir_all(&set).unwrap();
    }
    let err = c_err(&bad);
    assert!(err.contains("c/fog/5 is missing"), "{err}");
    std::fs::create_dir_all(bad.join("fog/5/kittens")).unwrap();
    let err = c_err(&bad);
    assert!(
        err.contains("c/fog/5/kittens: not an ImageNet-1k WordNet id"),
        "{err}"
    );

    // a --json record of another evaluation is not resumed
    let c = dir.join("imagenet-c");
    let other = scratch.join("other.json");
    std::fs::write(
        &other,
        r#"{"settings": {"checkpoint": "another.pth"}, "sets": {}}"#,
    )
    .unwrap();
    let err = mae_err(imagenet_c_args(&ckpt, &c, &other));
    assert!(
        err.contains("other.json records another evaluation"),
        "{err}"
    );
    // a FILE that cannot be written fails before the first set
    let nowhere = scratch.join("no/such/folder/c.json");
    let err = mae_err(imagenet_c_args(&ckpt, &c, &nowhere));
    assert!(
        err.contains("writing --json") && err.contains("no/such/folder"),
        "{err}"
    );
    std::fs::write(&other, "not json").unwrap();
    let err = mae_err(imagenet_c_args(&ckpt, &c, &other));
    assert!(
        err.contains("other.json: not the record of an ImageNet-C run"),
        "{err}"
    );

    // mae predict: a missing image, names that do not fit, a checkpoint that is not a classifier
    let err = mae_err([
        "predict",
        "--resume",
        s(&fmnist),
        "--image",
        "nope.jpg",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("nope.jpg"), "{err}");
    let names = scratch.join("names.txt");
    std::fs::write(&names, "a\nb\n").unwrap();
    let photo = crate::common::shared_image("chelsea.png");
    let err = mae_err([
        "predict",
        "--resume",
        s(&fmnist),
        "--image",
        s(&photo),
        "--class_names",
        s(&names),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("names.txt: 2 names for the 10 classes"),
        "{err}"
    );
    let mae = crate::common::root().join("weights/mae_pretrain_fmnist_mini_patch4.pth");
    let err = mae_err([
        "predict",
        "--resume",
        s(&mae),
        "--image",
        s(&photo),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("mae_pretrain_fmnist_mini_patch4.pth")
            && err.contains("fine-tuned classifier"),
        "{err}"
    );
}
