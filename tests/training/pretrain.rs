//! `mae pretrain` beyond the step parity (pretrain_steps.rs): the lr schedule over a
//! run and the weight-decay groups against the official / timm code, exact resume, atomic
//! checkpoints under a kill, the non-finite loss stop, RandomResizedCrop, Fashion-MNIST.

use crate::common::{self, argv};

use std::path::{Path, PathBuf};

use crate::common::s;
use mae::models_mae::{self, MaeConfig};
use mae::torch::optim::{add_weight_decay, named_parameters, ParamGroup};
use mae::torch::serialization;
use mae::torch::serialization::pickle::Value;
use mae::torchvision::datasets::{pil_loader, FashionMNIST, FASHION_MNIST_ROOT};
use mae::torchvision::pil::Filter;
use mae::torchvision::transforms::{random_resized_crop_params, resized_crop, SampleRng};
use mae::util::lr_sched::{adjust_learning_rate, LrArgs};
use tch::{nn, Device, Tensor};

/// DIR/data: an ImageFolder of `n` small PNGs in two classes, of varied sizes.
fn image_folder(dir: &Path, n: usize) -> PathBuf {
    let root = dir.join("data");
    for i in 0..n {
        let dir = root.join("train").join(format!("class{}", i % 2));
        std::fs::create_dir_all(&dir).unwrap();
        let (w, h) = (36 + (i as u32 * 7) % 20, 30 + (i as u32 * 5) % 24);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = (x * 7 + y * 13 + i as u32 * 31) as u8;
            image::Rgb([v, v.wrapping_mul(3), 255 - v])
        });
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
    root
}

/// Asserts two loaded checkpoints are equal (tensors bit for bit), `skip` keys left out.
fn assert_same(a: &Value, b: &Value, path: &str, skip: &[&str]) {
    match (a, b) {
        (Value::Dict(x), Value::Dict(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: dict sizes");
            for ((ka, va), (kb, vb)) in x.iter().zip(y) {
                assert_eq!(ka.to_string(), kb.to_string(), "{path}: keys");
                if ka.as_str().is_some_and(|k| skip.contains(&k)) {
                    continue;
                }
                assert_same(va, vb, &format!("{path}.{ka}"), skip);
            }
        }
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            assert_eq!(x.len(), y.len(), "{path}: list sizes");
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                assert_same(va, vb, &format!("{path}[{i}]"), skip);
            }
        }
        (Value::Tensor(x), Value::Tensor(y)) => assert!(x.equal(y), "{path}: tensors differ"),
        (x, y) => assert_eq!(x.to_string(), y.to_string(), "{path}"),
    }
}

#[test]
fn flags_and_defaults_are_the_official_ones() {
    let official: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/reference/official_args.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let cmd =
        <mae::main_pretrain::Args as clap::Args>::augment_args(clap::Command::new("pretrain"));
    let ours: std::collections::HashMap<String, Option<String>> = cmd
        .get_arguments()
        .filter_map(|a| {
            let default = a
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            Some((format!("--{}", a.get_long()?), default))
        })
        .collect();
    for (dest, spec) in official["main_pretrain"].as_object().unwrap() {
        for flag in spec["flags"].as_array().unwrap() {
            let flag = flag.as_str().unwrap();
            let default = ours
                .get(flag)
                .unwrap_or_else(|| panic!("{flag} ({dest}) is missing"));
            if flag == "--device" {
                continue; // cuda when available, as mae finetune / linprobe (derived)
            }
            let want = &spec["default"];
            match (want, default) {
                (serde_json::Value::Null, d) => assert!(d.is_none(), "{flag}: {d:?}"),
                (serde_json::Value::Bool(_), _) => {} // store_true / store_false flags
                (serde_json::Value::String(w), Some(d)) => assert_eq!(w, d, "{flag}"),
                (serde_json::Value::Number(w), Some(d)) => {
                    assert_eq!(w.as_f64().unwrap(), d.parse::<f64>().unwrap(), "{flag}")
                }
                (w, d) => panic!("{flag}: official default {w}, ours {d:?}"),
            }
        }
    }
}

#[test]
fn lr_schedule_matches_official_over_a_run() {
    // epochs 5, warmup 2, 7 iterations per epoch, accum_iter 2: every value the official sets
    let code = r#"
import sys
sys.path.insert(0, "tools/reference")
from official import adjust_learning_rate
class A: lr, min_lr, warmup_epochs, epochs = 3e-4, 1e-6, 2, 5
class O: param_groups = [{}, {"lr_scale": 0.37}]
for epoch in range(5):
    for step in range(7):
        if step % 2 == 0:
            lr = adjust_learning_rate(O, step / 7 + epoch, A)
            print(repr(lr), repr(O.param_groups[0]["lr"]), repr(O.param_groups[1]["lr"]))
"#;
    let out = common::run_python_code(code, &[]);
    let args = LrArgs {
        lr: 3e-4,
        min_lr: 1e-6,
        warmup_epochs: 2,
        epochs: 5,
    };
    let mut groups: Vec<ParamGroup> = [None, Some(0.37)]
        .into_iter()
        .map(|lr_scale| ParamGroup {
            names: vec![],
            params: vec![],
            lr: 0.,
            weight_decay: 0.,
            lr_scale,
        })
        .collect();
    let mut lines = out.lines();
    let mut n = 0;
    for epoch in 0..5 {
        for step in (0..7).step_by(2) {
            let want: Vec<f64> = lines
                .next()
                .unwrap()
                .split(' ')
                .map(|v| v.parse().unwrap())
                .collect();
            let lr = adjust_learning_rate(&mut groups, step as f64 / 7. + epoch as f64, &args);
            for (got, want) in [lr, groups[0].lr, groups[1].lr].iter().zip(&want) {
                assert!(
                    (got - want).abs() <= 1e-12,
                    "epoch {epoch} step {step}: {got} vs {want}"
                );
            }
            n += 1;
        }
    }
    assert_eq!(n, 20);
}

#[test]
fn weight_decay_groups_match_timm_for_mae_vit_base() {
    // timm's param_groups_weight_decay on a module holding the official mae_vit_base_patch16
    // parameters (names, shapes, order; the fixed sin-cos tables frozen)
    let code = r#"
import json, torch
from timm.optim import param_groups_weight_decay
keys = json.load(open("tests/data/reference/official_state_dicts.json"))["mae_vit_base_patch16"]
root = torch.nn.Module()
for k, shape in keys.items():
    *path, leaf = k.split(".")
    m = root
    for p in path:
        if not hasattr(m, p):
            m.add_module(p, torch.nn.Module())
        m = getattr(m, p)
    m.register_parameter(leaf, torch.nn.Parameter(torch.empty(shape), requires_grad=k not in ("pos_embed", "decoder_pos_embed")))
names = {id(p): n for n, p in root.named_parameters()}
groups = param_groups_weight_decay(root, 0.05)
print(json.dumps({"order": [n for n, _ in root.named_parameters()], "groups": [[names[id(p)] for p in g["params"]] for g in groups], "wd": [g["weight_decay"] for g in groups]}))
"#;
    let want: serde_json::Value =
        serde_json::from_str(&common::run_python_code(code, &[])).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _model =
        models_mae::build("mae_vit_base_patch16", &vs.root(), MaeConfig::default()).unwrap();
    let order: Vec<String> = named_parameters(&vs).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        serde_json::json!(order),
        want["order"],
        "named_parameters order"
    );
    let groups = add_weight_decay(named_parameters(&vs), 0.05, &[]);
    let names: Vec<&Vec<String>> = groups.iter().map(|g| &g.names).collect();
    assert_eq!(
        serde_json::json!(names),
        want["groups"],
        "group membership and order"
    );
    let wd: Vec<f64> = groups.iter().map(|g| g.weight_decay).collect();
    assert_eq!(serde_json::json!(wd), want["wd"]);
    assert!(groups[1].names.contains(&"cls_token".to_string()));
    assert!(groups[1].names.contains(&"mask_token".to_string()));
}

#[test]
fn resume_is_exact_and_thread_count_free() {
    let dir = common::scratch();
    let data = image_folder(&dir, 24);
    let (a, b) = (dir.join("straight"), dir.join("resumed"));
    let common_args = |out: &Path, epochs: &str, workers: &str| {
        argv!(
            "pretrain --model mae_vit_tiny_patch4 --input_size 32 --batch_size 4 \
             --warmup_epochs 2 --blr 1e-2 --device cpu --seed 3 --data_path {} --output_dir {} \
             --epochs {} --num_workers {}",
            data.display(),
            out.display(),
            epochs,
            workers
        )
    };
    let run = |args: Vec<String>| common::mae_ok(args);
    // 2 epochs straight on 2 loader threads; 1 epoch, then resume for the 2nd, on 1 thread
    let out = run(common_args(&a, "2", "2"));
    assert!(
        out.contains("base lr: 1.00e-02\nactual lr: 1.56e-04\n"),
        "{out}"
    );
    assert!(out.contains("effective batch size: 4"), "{out}");
    run(common_args(&b, "1", "1"));
    let mut resume = common_args(&b, "2", "1");
    resume.extend(argv!("--resume {}", b.join("checkpoint-0.pth").display()));
    let out = run(resume);
    assert!(out.contains("With optim & sched!"), "{out}");

    let load = |p: PathBuf| serialization::load(&p).unwrap();
    let (ca, cb) = (
        load(a.join("checkpoint-1.pth")),
        load(b.join("checkpoint-1.pth")),
    );
    assert_same(&ca, &cb, "checkpoint-1", &["args"]);
    assert_eq!(ca.get("epoch").and_then(Value::as_int), Some(1));
    let log = |d: &Path| std::fs::read_to_string(d.join("log.txt")).unwrap();
    assert_eq!(log(&a), log(&b));
    assert_eq!(log(&a).lines().count(), 2);
    assert!(log(&a).starts_with("{\"train_lr\": "), "{}", log(&a));
    assert!(a.join("loss_curve.png").exists());

    // the whole file loads with torch.load(weights_only=True), args a plain dict
    let code = r#"
import sys, torch
ck = torch.load(sys.argv[1], weights_only=True)
print(sorted(ck), type(ck["args"]).__name__, ck["args"]["model"], ck["epoch"], len(ck["optimizer"]["param_groups"]))
"#;
    let out = common::run_python_code(code, &[s(&a.join("checkpoint-1.pth"))]);
    assert_eq!(
        out.trim(),
        "['args', 'epoch', 'model', 'optimizer', 'scaler'] dict mae_vit_tiny_patch4 1 2"
    );
}

#[test]
fn killed_save_leaves_the_previous_checkpoint() {
    // mae_vit_base at 32×32 trains fast but writes a 1.3 GB checkpoint: kill it mid-write
    let dir = common::scratch();
    let data = image_folder(&dir, 4);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let previous = out.join("checkpoint-0.pth");
    let marker = Tensor::from_slice(&[1f32, 2., 3.]);
    serialization::save_state_dict(&previous, &[("marker".into(), marker.shallow_clone())])
        .unwrap();
    let before = std::fs::read(&previous).unwrap();

    #[rustfmt::skip]
    let args = argv!(
        "pretrain --model mae_vit_base_patch16 --input_size 32 --batch_size 4 --epochs 1 \
         --device cpu --num_workers 1 --data_path {} --output_dir {}",
        data.display(), out.display()
    );
    let mut child = common::mae_command(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut caught = false;
    while started.elapsed().as_secs() < 300 {
        let tmp = std::fs::read_dir(&out).unwrap().flatten().find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".checkpoint-0.pth.tmp")
                && e.metadata().is_ok_and(|m| m.len() > 1 << 20)
        });
        if tmp.is_some() {
            child.kill().unwrap();
            caught = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.wait();
    assert!(caught, "the save finished before it could be interrupted");
    assert_eq!(
        std::fs::read(&previous).unwrap(),
        before,
        "previous checkpoint changed"
    );
    let sd = serialization::load_state_dict(&previous).unwrap();
    assert!(sd[0].1.equal(&marker));
}

#[test]
fn non_finite_loss_stops_training() {
    let dir = common::scratch();
    let data = image_folder(&dir, 8);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model =
        models_mae::build("mae_vit_tiny_patch4", &vs.root(), MaeConfig::default()).unwrap();
    let mut sd = named_parameters(&vs);
    for (k, t) in &mut sd {
        if k == "decoder_pred.bias" {
            let _ = tch::no_grad(|| t.fill_(f64::NAN));
        }
    }
    let ckpt = dir.join("nan.pth");
    serialization::save_state_dict(&ckpt, &sd).unwrap();
    #[rustfmt::skip]
    let args = argv!(
        "pretrain --model mae_vit_tiny_patch4 --input_size 32 --batch_size 4 --epochs 1 \
         --device cpu --num_workers 1 --data_path {} --output_dir {} --resume {}",
        data.display(), dir.join("out").display(), ckpt.display()
    );
    let out = common::mae_command(&args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("Loss is nan, stopping training"), "{all}");
    assert!(!dir.join("out/checkpoint-0.pth").exists());
}

/// torchvision's fallback box for ratio (3/4, 4/3): the central crop, ratio clamped.
fn central_fallback(w: i64, h: i64) -> (i64, i64, i64, i64) {
    let r = w as f64 / h as f64;
    let (cw, ch) = if r < 0.75 {
        (w, (w as f64 / 0.75).round() as i64)
    } else if r > 4. / 3. {
        ((h as f64 * 4. / 3.).round() as i64, h)
    } else {
        (w, h)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

#[test]
fn random_resized_crop_boxes_follow_torchvision_rules() {
    let (scale, ratio) = ((0.2, 1.0), (3. / 4., 4. / 3.));
    for (w, h) in [(40u32, 30u32), (224, 224), (500, 375), (60, 100), (7, 9)] {
        let (mut areas, mut flips) = (0f64, 0);
        for k in 0..2000 {
            let mut rng = SampleRng::new(0, 1, k);
            let (i, j, bh, bw) = random_resized_crop_params(w, h, scale, ratio, &mut rng);
            assert!(i >= 0 && j >= 0 && i + bh <= h as i64 && j + bw <= w as i64);
            assert!(bh > 0 && bw > 0);
            let frac = (bw * bh) as f64 / (w * h) as f64;
            // rounding each side to an integer moves area and ratio by at most half a pixel
            let slack = (bw + bh + 1) as f64 / 2. / (w * h) as f64
                + 0.5 * (1. / bw as f64 + 1. / bh as f64);
            let r = bw as f64 / bh as f64;
            let fallback = (i, j, bh, bw) == central_fallback(w as i64, h as i64);
            if !fallback {
                assert!(
                    frac >= 0.2 - slack && frac <= 1.0,
                    "{w}x{h}: area fraction {frac}"
                );
                assert!(
                    r >= 0.75 * (1. - slack) && r <= 4. / 3. * (1. + slack),
                    "{w}x{h}: ratio {r}"
                );
            }
            areas += frac;
            flips += (rng.uniform(0., 1.) < 0.5) as u32;
        }
        let mean = areas / 2000.;
        assert!(
            mean > 0.3 && mean < 0.8,
            "{w}x{h}: mean area fraction {mean}"
        );
        assert!((850..1150).contains(&flips));
    }
    // no attempt fits a 1000×10 strip: the central fallback with the ratio clamped to 4/3
    let mut rng = SampleRng::new(0, 0, 0);
    assert_eq!(
        random_resized_crop_params(1000, 10, scale, ratio, &mut rng),
        (0, 493, 10, 13)
    );
    assert_eq!(
        random_resized_crop_params(10, 1000, scale, ratio, &mut rng),
        (493, 0, 13, 10)
    );
    assert_eq!(
        random_resized_crop_params(30, 500, scale, ratio, &mut rng),
        central_fallback(30, 500)
    );
}

#[test]
fn resized_crop_pixels_equal_pil() {
    let boxes = [
        (0i64, 0i64, 300i64, 300i64),
        (37, 51, 123, 97),
        (10, 200, 40, 281),
        (100, 3, 211, 17),
    ];
    let img_path = common::shared_image("chelsea.png");
    let code = r#"
import sys, numpy as np
from PIL import Image
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode
img = Image.open(sys.argv[1]).convert("RGB")
for b in sys.argv[3:]:
    i, j, h, w = map(int, b.split(","))
    out = F.resized_crop(img, i, j, h, w, [int(sys.argv[2])] * 2, InterpolationMode.BICUBIC)
    print(np.asarray(out).tobytes().hex())
"#;
    let specs: Vec<String> = boxes
        .iter()
        .map(|(i, j, h, w)| format!("{i},{j},{h},{w}"))
        .collect();
    let mut args = vec![s(&img_path), "64"];
    args.extend(specs.iter().map(String::as_str));
    let out = common::run_python_code(code, &args);
    let img = pil_loader(&img_path).unwrap();
    for ((i, j, h, w), want) in boxes.iter().zip(out.lines()) {
        let got = resized_crop(&img, *i, *j, *h, *w, 64, Filter::Bicubic);
        let hex: String = got.as_raw().iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            hex == want,
            "box {:?}: pixels differ from PIL",
            (i, j, h, w)
        );
    }
}

#[test]
fn fashion_mnist_train_split() {
    let ds = FashionMNIST::new(Path::new(FASHION_MNIST_ROOT), true).unwrap();
    assert_eq!(ds.len(), 60000);
    let code = r#"
import gzip, numpy as np
root = "/usr/share/datasets/fashion-mnist/"
x = np.frombuffer(gzip.open(root + "train-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
y = np.frombuffer(gzip.open(root + "train-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
for i in (0, 1, 59999):
    print(int(y[i]), x[i].tobytes().hex())
"#;
    for (line, i) in common::run_python_code(code, &[])
        .lines()
        .zip([0usize, 1, 59999])
    {
        let (label, px) = line.split_once(' ').unwrap();
        assert_eq!(ds.targets[i], label.parse::<i64>().unwrap());
        let rgb = ds.rgb(i);
        let grey: String = rgb
            .as_raw()
            .chunks(3)
            .map(|p| format!("{:02x}", p[0]))
            .collect();
        assert_eq!(grey, px);
        assert!(rgb.as_raw().chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }
}

/// The Fashion-MNIST MAE shipped in weights/ loads strictly into `mae_vit_mini_patch4` and
/// reconstructs held-out test images far better than its initialisation: mean loss on the
/// masked patches of the first N test images (N = $MAE_TEST_IMAGES or 2000), masking seed 0 of
/// torch's global generator (so in a process of its own).
#[test]
fn shipped_fashion_mnist_checkpoint_reconstructs_test_images() {
    if common::in_own_process() {
        return;
    }
    let path = common::root().join("weights/mae_pretrain_fmnist_mini_patch4.pth");
    let n: i64 = std::env::var("MAE_TEST_IMAGES").map_or(2000, |v| v.parse().unwrap());
    let ds = FashionMNIST::new(Path::new(FASHION_MNIST_ROOT), false).unwrap();
    let imgs: Vec<Tensor> = (0..n as usize)
        .map(|i| {
            let img = mae::torchvision::pil::resize(&ds.rgb(i), 32, 32, Filter::Bicubic);
            mae::torchvision::transforms::to_tensor_normalize(
                &img,
                mae::torchvision::transforms::IMAGENET_DEFAULT_MEAN,
                mae::torchvision::transforms::IMAGENET_DEFAULT_STD,
            )
        })
        .collect();
    let imgs = Tensor::stack(&imgs, 0);
    let mean_loss = |model: &models_mae::MaskedAutoencoderViT| {
        tch::manual_seed(0);
        tch::no_grad(|| {
            let losses: Vec<f64> = imgs
                .split(500, 0)
                .iter()
                .map(|b| model.forward(b, 0.75).unwrap().0.double_value(&[]) * b.size()[0] as f64)
                .collect();
            losses.iter().sum::<f64>() / n as f64
        })
    };
    tch::manual_seed(0); // the initialisation the loss is compared with, the same every run
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = models_mae::build("mae_vit_mini_patch4", &vs.root(), MaeConfig::default()).unwrap();
    let init_loss = mean_loss(&model);
    let sd = serialization::load_state_dict(&path).unwrap();
    model.load_checkpoint(&mut vs, sd).unwrap();
    let loss = mean_loss(&model);
    println!(
        "test-set reconstruction loss over {n} images: {loss:.4} (initialisation: {init_loss:.4})"
    );
    assert!(
        loss < 0.25 * init_loss,
        "loss {loss} vs {init_loss} at init"
    );
}

/// GradScaler semantics (enabled on CUDA; exercised here on CPU tensors): scaled backward,
/// exact unscale (powers of two), inf/NaN gradients skip the step and halve the scale, the
/// scale doubles after `growth_interval` good steps, and the state dict round-trips.
#[test]
fn grad_scaler_semantics() {
    use mae::torch::optim::AdamW;
    use mae::util::misc::NativeScalerWithGradNormCount as Scaler;
    let make = || {
        let p = Tensor::from_slice(&[1f32, -2., 3.]).set_requires_grad(true);
        let group = ParamGroup {
            names: vec!["w".into()],
            params: vec![p.shallow_clone()],
            lr: 0.,
            weight_decay: 0.05,
            lr_scale: None,
        };
        (p, AdamW::new(vec![group], 1e-2, (0.9, 0.95)))
    };
    let x = Tensor::from_slice(&[0.5f32, 1.5, -1.]);
    let (p1, mut opt1) = make();
    let (p2, mut opt2) = make();
    let mut scaler = Scaler::new(true);
    scaler.growth_interval = 3;
    for step in 0..3 {
        assert!(scaler.call(&(&p1 * &x).sum(None), &mut opt1, true));
        opt1.zero_grad();
        (&p2 * &x).sum(None).backward();
        opt2.step();
        opt2.zero_grad();
        assert!(
            p1.equal(&p2),
            "step {step}: scaled and unscaled updates differ"
        );
    }
    assert_eq!((scaler.scale, scaler.growth_tracker), (131072., 0));
    let inf = Tensor::from_slice(&[f32::INFINITY, 1., 1.]);
    let before = p1.copy();
    assert!(!scaler.call(&(&p1 * &inf).sum(None), &mut opt1, true));
    assert!(
        p1.equal(&before),
        "a step with inf gradients must be skipped"
    );
    assert_eq!((scaler.scale, scaler.growth_tracker), (65536., 0));
    let mut restored = Scaler::new(true);
    restored.load_state_dict(&scaler.state_dict()).unwrap();
    assert_eq!(restored, scaler);
    assert_eq!(Scaler::new(false).state_dict().to_string(), "{}");
}

/// The ablation options of `mae pretrain` write checkpoints that say what was built: a decoder
/// of `--decoder_embed_dim` × `--decoder_depth` (`mae inspect` names it, `mae visualize`
/// rebuilds it without the flags), and `--encoder_mask_token` adds that one key and changes no
/// other (the paper's Table 1(a, b, c)).
#[test]
fn ablation_checkpoints_record_what_was_built() {
    let dir = common::scratch();
    let data = image_folder(&dir, 8);
    let run = |name: &str, flags: &str| {
        let out = dir.join(name);
        #[rustfmt::skip]
        let mut args = argv!(
            "pretrain --model mae_vit_tiny_patch4 --input_size 32 --batch_size 4 --epochs 1 \
             --warmup_epochs 0 --device cpu --num_workers 1 --data_path {} --output_dir {}",
            data.display(), out.display()
        );
        args.extend(argv!(flags));
        let text = common::mae_ok(&args);
        (out.join("checkpoint-0.pth"), text)
    };
    let keys_shapes = |p: &Path| -> Vec<(String, Vec<i64>)> {
        let sd = serialization::load_state_dict(p).unwrap();
        sd.iter().map(|(k, t)| (k.clone(), t.size())).collect()
    };
    let (plain, _) = run("plain", "");
    let (narrow, _) = run("narrow", "--decoder_embed_dim 32 --decoder_depth 1");
    let (encmask, text) = run("encmask", "--encoder_mask_token --mask_sampling block");
    assert!(text.contains("Forward GFLOPs per image"), "{text}");

    let got = keys_shapes(&narrow);
    let shape = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, s)| s.clone());
    assert_eq!(shape("decoder_embed.weight"), Some(vec![32, 64]));
    assert_eq!(shape("mask_token"), Some(vec![1, 1, 32]));
    assert_eq!(shape("decoder_pred.weight"), Some(vec![48, 32]));
    assert!(shape("decoder_blocks.0.attn.qkv.weight").is_some());
    assert!(
        !got.iter().any(|(k, _)| k.starts_with("decoder_blocks.1.")),
        "{got:?}"
    );
    let inspect = common::mae_ok(["inspect", s(&narrow)]);
    assert!(inspect.contains("decoder (32-d, 1 block)"), "{inspect}");
    let png = dir.join("narrow.png");
    let image = common::shared_image("astronaut.png");
    #[rustfmt::skip]
    let shown = common::mae_ok(argv!(
        "visualize --checkpoint {} --image {} --out {} --device cpu",
        narrow.display(), image.display(), png.display()
    ));
    assert!(shown.contains("loss ") && png.exists(), "{shown}");

    let (mut want, mut got) = (keys_shapes(&plain), keys_shapes(&encmask));
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, _)| !want.iter().any(|(w, _)| w == k))
        .collect();
    assert_eq!(extra.len(), 1, "{extra:?}");
    assert_eq!(
        extra[0],
        &("encoder_mask_token".to_string(), vec![1, 1, 64])
    );
    got.retain(|(k, _)| k != "encoder_mask_token");
    want.sort();
    got.sort();
    assert_eq!(got, want);
    #[rustfmt::skip]
    let shown = common::mae_ok(argv!(
        "visualize --checkpoint {} --image {} --out {} --device cpu --mask_sampling block",
        encmask.display(), image.display(), dir.join("encmask.png").display()
    ));
    assert!(shown.contains("loss "), "{shown}");
}
