//! Hugging Face and timm weights in and out (src/interop/hub.rs, `mae convert`), checked with the
//! pinned transformers and timm: official .pth → hf → official is bit-identical; transformers'
//! `from_pretrained` and timm's `create_model(pretrained_cfg_overlay=dict(file=…))` load the
//! converted files with no missing or unexpected keys and give the port's outputs within 1e-5;
//! the folder transformers' `save_pretrained` writes (its own decoder layout) and the hub cache
//! layout read back to the same weights; `mae visualize` of a hub folder is that of the .pth.

use crate::common;

use std::path::{Path, PathBuf};

use crate::common::{argv, s};
use mae::interop::hub::{self, Format};
use mae::models_mae::{self, MaeConfig};
use mae::models_vit::{self, VitConfig};
use mae::torch::optim::named_parameters;
use mae::torch::serialization;
use tch::{nn, Device, Kind, Tensor};

const TOL: f64 = 1e-5;

/// `mae args…` (one thread); returns stdout + stderr, asserting success when `ok`.
fn mae<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S], ok: bool) -> String {
    let out = common::mae_command(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert_eq!(out.status.success(), ok, "mae {args:?}:\n{text}");
    text
}

/// `mae convert FROM TO --to FORMAT` (one thread), which must succeed; its output.
fn convert(from: &Path, to: &Path, format: &str) -> String {
    let args = argv!(
        "convert {} {} --to {}",
        from.display(),
        to.display(),
        format
    );
    mae(&args, true)
}

/// [`convert`], whose output must show how to load the result (`usage`); TO read back.
fn convert_and_read(
    from: &Path,
    to: &Path,
    format: &str,
    usage: &str,
) -> (Vec<(String, Tensor)>, Format) {
    let text = convert(from, to, format);
    assert!(text.contains(usage), "{text}");
    read(to)
}

/// The state_dict of a file or folder as `mae` reads it, and the format found.
fn read(path: &Path) -> (Vec<(String, Tensor)>, Format) {
    let l = hub::load(path, false).unwrap();
    (l.sd, l.format)
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let err = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    assert!(err <= TOL, "{what}: max abs error {err:e} > {TOL:e}");
}

/// A freshly initialised port model's state_dict, saved as the official .pth.
fn save_official(path: &Path, vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let sd = named_parameters(vs);
    serialization::save_state_dict(path, &sd).unwrap();
    serialization::load_state_dict(path).unwrap()
}

/// A freshly initialised MAE `name` saved as the official .pth `path`; its state_dict.
fn random_mae(name: &str, path: &Path) -> Vec<(String, Tensor)> {
    let vs = nn::VarStore::new(Device::Cpu);
    models_mae::build(name, &vs.root(), MaeConfig::default()).unwrap();
    save_official(path, &vs)
}

/// transformers' `ViTMAEForPreTraining` on the folder `hf`: loads it (no missing/unexpected
/// keys), runs `imgs` with `noise`, saves loss/logits/mask to `out`; with `resave`, also
/// `save_pretrained(resave)` (its own decoder layout).
const HF_MAE: &str = r#"
import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTMAEForPreTraining
hf, io, out, resave = sys.argv[1:5]
model, info = ViTMAEForPreTraining.from_pretrained(hf, output_loading_info=True)
bad = {k: v for k, v in info.items() if v}
assert not bad, bad
model.eval()
t = load_file(io)
with torch.no_grad():
    o = model(t["imgs"], noise=t["noise"])
save_file({"loss": o.loss.reshape(1), "pred": o.logits.contiguous(), "mask": o.mask.contiguous()}, out)
if resave != "-":
    model.save_pretrained(resave)
"#;

/// MAE `name` at `img` px: .pth → hf → official bit-identical, transformers' outputs those of
/// the port (on `n` images), and with `resave` the folder transformers re-saves (its own decoder
/// layout) reads back the same.
fn mae_round_trip(name: &str, img: i64, n: i64, resave: bool) {
    let dir = common::scratch();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = models_mae::build(name, &vs.root(), MaeConfig::default()).unwrap();
    let pth = dir.join("official.pth");
    let sd = save_official(&pth, &vs);

    let hf = dir.join("hf");
    let usage = "ViTMAEForPreTraining.from_pretrained";
    let (from_hf, format) = convert_and_read(&pth, &hf, "hf", usage);
    assert_eq!(format, Format::HfViTMae);
    common::assert_same_tensors(&from_hf, &sd, "hf folder read back");
    let back = dir.join("back.pth");
    convert(&hf, &back, "official");
    common::assert_same_tensors(
        &serialization::load_state_dict(&back).unwrap(),
        &sd,
        "hf → official",
    );

    let imgs = Tensor::randn([n, 3, img, img], (Kind::Float, Device::Cpu));
    let noise = Tensor::rand(
        [n, model.patch_embed.num_patches],
        (Kind::Float, Device::Cpu),
    );
    let io = dir.join("io.safetensors");
    serialization::save_safetensors(
        &io,
        &[("imgs".into(), imgs.copy()), ("noise".into(), noise.copy())],
    )
    .unwrap();
    let out = dir.join("hf_out.safetensors");
    let resaved = dir.join("hf_resaved");
    let resave_arg = if resave { s(&resaved) } else { "-" };
    common::run_python_code(HF_MAE, &[s(&hf), s(&io), s(&out), resave_arg]);
    let want: std::collections::HashMap<String, Tensor> = serialization::load_state_dict(&out)
        .unwrap()
        .into_iter()
        .collect();
    let (loss, pred, mask) =
        tch::no_grad(|| model.forward_with_noise(&imgs, 0.75, Some(&noise))).unwrap();
    assert!(mask.equal(&want["mask"]), "{name}: mask");
    assert_close(&pred, &want["pred"], &format!("{name} pred"));
    assert_close(&loss.reshape([1]), &want["loss"], &format!("{name} loss"));

    if !resave {
        return;
    }
    // save_pretrained writes decoder.decoder_encoder.layer.{i}, the hub files decoder_layers
    let keys: Vec<String> = serialization::load_state_dict(&resaved.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert!(keys
        .iter()
        .any(|k| k.starts_with("decoder.decoder_encoder.layer.0.")));
    let (from_resaved, _) = read(&resaved);
    common::assert_same_tensors(&from_resaved, &sd, "save_pretrained folder");
}

#[test]
fn mae_tiny_hf_round_trip_and_transformers_outputs() {
    mae_round_trip("mae_vit_tiny_patch4", 32, 2, true);
}

#[test]
fn mae_base_hf_round_trip_and_transformers_outputs() {
    mae_round_trip("mae_vit_base_patch16", 224, 1, false);
}

/// timm on `file`: `create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=…,
/// num_classes=…), **kwargs)`, then `model(imgs)` saved to `out`.
const TIMM: &str = r#"
import json, sys
import torch, timm
from safetensors.torch import load_file, save_file
arch, kwargs, file, io, out = sys.argv[1:6]
kwargs = json.loads(kwargs)
overlay = dict(file=file)
if kwargs.get("num_classes"):  # as `mae convert` says: else timm drops the head
    overlay["num_classes"] = kwargs["num_classes"]
model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()
with torch.no_grad():
    save_file({"out": model(load_file(io)["imgs"]).contiguous()}, out)
"#;

/// transformers' ViTForImageClassification on `hf` (no missing/unexpected keys): logits to `out`.
const HF_VIT: &str = r#"
import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTForImageClassification
hf, io, out = sys.argv[1:4]
model, info = ViTForImageClassification.from_pretrained(hf, output_loading_info=True)
bad = {k: v for k, v in info.items() if v}
assert not bad, bad
with torch.no_grad():
    save_file({"out": model.eval()(load_file(io)["imgs"]).logits.contiguous()}, out)
"#;

fn output_of(path: &Path) -> Tensor {
    serialization::load_state_dict(path).unwrap().remove(0).1
}

/// A tiny ViT (`global_pool`, `num_classes`) as .pth, its images, and the port's outputs.
fn tiny_vit(dir: &Path, global_pool: bool, num_classes: i64) -> (PathBuf, PathBuf, Tensor) {
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = VitConfig {
        img_size: 32,
        num_classes,
        global_pool,
        drop_path_rate: 0.,
        ..VitConfig::default()
    };
    let model = models_vit::build("vit_tiny_patch4", &vs.root(), cfg).unwrap();
    // the head starts at zero in models_vit (trunc_normal 2e-5): make the logits tell
    tch::no_grad(|| {
        for (k, mut t) in vs.variables() {
            if k.starts_with("head.") || k.starts_with("fc_norm.") {
                t.copy_(&(Tensor::randn_like(&t) * 0.5 + 1.));
            }
        }
    });
    let pth = dir.join(format!("vit_{global_pool}_{num_classes}.pth"));
    save_official(&pth, &vs);
    let imgs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let io = dir.join("vit_io.safetensors");
    serialization::save_safetensors(&io, &[("imgs".into(), imgs.copy())]).unwrap();
    let out = tch::no_grad(|| model.forward_t(&imgs, false)).unwrap();
    (pth, io, out)
}

/// timm's kwargs for the tiny ViT (no timm name has its sizes).
const TIMM_TINY: &str =
    r#""img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4"#;

#[test]
fn vit_classifiers_load_in_transformers_and_timm_with_the_ports_logits() {
    let dir = common::scratch();

    // cls-token classifier: ViTForImageClassification and timm global_pool="token"
    let (pth, io, want) = tiny_vit(&dir, false, 3);
    let hf = dir.join("hf_cls");
    convert(&pth, &hf, "hf");
    common::assert_same_tensors(
        &read(&hf).0,
        &serialization::load_state_dict(&pth).unwrap(),
        "vit hf",
    );
    assert_eq!(read(&hf).1, Format::HfViT);
    let out = dir.join("hf_out.safetensors");
    common::run_python_code(HF_VIT, &[s(&hf), s(&io), s(&out)]);
    assert_close(&output_of(&out), &want, "ViTForImageClassification logits");
    let st = dir.join("cls.safetensors");
    let text = convert(&pth, &st, "timm");
    assert!(
        text.contains("global_pool=\"token\", num_classes=3"),
        "{text}"
    );
    assert!(text.contains("num_classes=3))"), "{text}");
    let kwargs = format!(r#"{{{TIMM_TINY}, "global_pool": "token", "num_classes": 3}}"#);
    common::run_python_code(
        TIMM,
        &["vit_base_patch16_224", &kwargs, s(&st), s(&io), s(&out)],
    );
    assert_close(&output_of(&out), &want, "timm token logits");

    // the official global-pool classifier: timm (avg + fc_norm) yes, transformers has no class
    let (pth, io, want) = tiny_vit(&dir, true, 5);
    let text = mae(
        &["convert", s(&pth), s(&dir.join("hf_avg")), "--to", "hf"],
        false,
    );
    assert!(text.contains("convert --to timm instead"), "{text}");
    let st = dir.join("avg.safetensors");
    convert(&pth, &st, "timm");
    let kwargs =
        format!(r#"{{{TIMM_TINY}, "global_pool": "avg", "fc_norm": true, "num_classes": 5}}"#);
    common::run_python_code(
        TIMM,
        &["vit_base_patch16_224", &kwargs, s(&st), s(&io), s(&out)],
    );
    assert_close(&output_of(&out), &want, "timm avg logits");
    assert_eq!(read(&st).1, Format::Safetensors);
}

#[test]
fn mae_encoder_for_timm_is_the_ports_vit() {
    // the MAE base as timm's vit_base_patch16_224.mae: the decoder left out; its pooled
    // features are those of the port's cls-token ViT loaded from the same file
    let dir = common::scratch();
    let pth = dir.join("mae_base.pth");
    random_mae("mae_vit_base_patch16", &pth);
    let st = dir.join("model.safetensors");
    let usage = "timm.create_model(\"vit_base_patch16_224\", num_classes=0";
    let (sd, format) = convert_and_read(&pth, &st, "timm", usage);
    assert_eq!(format, Format::Safetensors);
    assert!(sd
        .iter()
        .all(|(k, _)| !k.starts_with("decoder") && k != "mask_token"));
    // a timm hub folder (config.json with "architecture" beside model.safetensors) reads the same
    std::fs::write(
        dir.join("config.json"),
        r#"{"architecture": "vit_base_patch16_224", "num_classes": 0}"#,
    )
    .unwrap();
    let (from_folder, format) = read(&dir);
    assert_eq!(format, Format::Safetensors);
    common::assert_same_tensors(&from_folder, &sd, "timm folder");

    let mut vit_vs = nn::VarStore::new(Device::Cpu);
    let cfg = VitConfig {
        num_classes: 0,
        global_pool: false,
        drop_path_rate: 0.,
        init: false,
        ..VitConfig::default()
    };
    let vit = models_vit::build("vit_base_patch16", &vit_vs.root(), cfg).unwrap();
    let report = mae::torch::state_dict::load_state_dict(&mut vit_vs, sd, true).unwrap();
    assert!(report.is_clean(), "{report}");
    let imgs = Tensor::randn([1, 3, 224, 224], (Kind::Float, Device::Cpu));
    let io = dir.join("io.safetensors");
    serialization::save_safetensors(&io, &[("imgs".into(), imgs.copy())]).unwrap();
    let out = dir.join("out.safetensors");
    common::run_python_code(
        TIMM,
        &["vit_base_patch16_224.mae", "{}", s(&st), s(&io), s(&out)],
    );
    let want = tch::no_grad(|| vit.forward_t(&imgs, false)).unwrap();
    assert_close(
        &output_of(&out),
        &want,
        "timm vit_base_patch16_224.mae features",
    );
}

#[test]
fn hub_cache_folder_inspects_and_visualizes_like_the_pth() {
    let dir = common::scratch();
    let pth = dir.join("mae_tiny.pth");
    random_mae("mae_vit_tiny_patch4", &pth);
    // the hub cache layout: models--org--name/{refs/main, snapshots/<rev>/}
    let repo = dir.join("models--facebook--vit-mae-tiny");
    let snap = repo.join("snapshots/0123abcd");
    convert(&pth, &snap, "hf");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();

    let text = mae(&["inspect", s(&repo)], true);
    assert!(
        text.contains("format: Hugging Face transformers ViTMAEForPreTraining"),
        "{text}"
    );
    assert!(
        text.contains("model: mae_vit_tiny_patch4: MAE pre-training model"),
        "{text}"
    );
    assert!(text.contains("blocks.1.attn.qkv.weight"), "{text}");

    let image = common::shared_image("chelsea.png");
    let mut outs = vec![];
    for (tag, ckpt) in [("pth", &pth), ("hub", &repo)] {
        let png = dir.join(format!("{tag}.png"));
        let tensors = dir.join(format!("{tag}.safetensors"));
        #[rustfmt::skip]
        mae(&argv!("visualize --checkpoint {} --image {} --device cpu --out {} --save_tensors {}",
            ckpt.display(), image.display(), png.display(), tensors.display()), true);
        outs.push(serialization::load_state_dict(&tensors).unwrap());
    }
    assert!(!outs[0].is_empty());
    common::assert_same_tensors(&outs[1], &outs[0], "visualize tensors");
}

#[test]
fn bad_folders_and_configs_are_named() {
    let dir = common::scratch();
    // a folder without config.json
    let text = mae(&["inspect", s(&dir)], false);
    assert!(text.contains("without config.json"), "{text}");
    // config.json that does not describe the weights
    let pth = dir.join("t.pth");
    random_mae("mae_vit_tiny_patch4", &pth);
    let hf = dir.join("hf");
    convert(&pth, &hf, "hf");
    let cfg = std::fs::read_to_string(hf.join("config.json")).unwrap();
    std::fs::write(
        hf.join("config.json"),
        cfg.replace("\"hidden_size\": 64", "\"hidden_size\": 768"),
    )
    .unwrap();
    let text = mae(
        &["convert", s(&hf), s(&dir.join("x.pth")), "--to", "official"],
        false,
    );
    assert!(
        text.contains("config.json has hidden_size 768, the weights 64"),
        "{text}"
    );
    // a config.json beside no weights
    std::fs::remove_file(hf.join("model.safetensors")).unwrap();
    let text = mae(&["inspect", s(&hf)], false);
    assert!(
        text.contains("no model.safetensors or pytorch_model.bin"),
        "{text}"
    );
}

#[test]
fn eval_and_linprobe_read_hf_folders_as_their_pth() {
    let dir = common::scratch();
    let data = dir.join("data");
    common::two_class_images(&data, 8);
    const COMMON: &str = "--device cpu --num_workers 1 --input_size 32";

    // mae eval --resume: a ViTForImageClassification folder gives the .pth's line
    let (pth, _, _) = tiny_vit(&dir, false, 2);
    let hf = dir.join("hf_vit");
    convert(&pth, &hf, "hf");
    let acc_line = |ckpt: &Path| {
        let line = format!("eval --resume {{}} --data_path {{}} {COMMON}");
        let text = mae(&argv!(&line, ckpt.display(), data.display()), true);
        common::acc_line(&text)
    };
    assert_eq!(acc_line(&hf), acc_line(&pth));

    // mae linprobe --finetune: an MAE folder trains as its .pth (log.txt equal)
    let mae_pth = dir.join("mae_tiny.pth");
    random_mae("mae_vit_tiny_patch4", &mae_pth);
    let mae_hf = dir.join("hf_mae");
    convert(&mae_pth, &mae_hf, "hf");
    let log = |ckpt: &Path, tag: &str| {
        let out = dir.join(tag);
        let line = format!(
            "linprobe --model vit_tiny_patch4 --finetune {{}} --nb_classes 2 --batch_size 8 \
             --epochs 1 --data_path {{}} --output_dir {{}} --log_dir {{}} {COMMON}"
        );
        let args = argv!(&line, ckpt.display(), data.display(), out.display(), "");
        mae(&args, true);
        std::fs::read_to_string(out.join("log.txt")).unwrap()
    };
    assert_eq!(log(&mae_hf, "lp_hf"), log(&mae_pth, "lp_pth"));
}
