//! `mae finetune` against the official semantics (tools/reference/finetune_reference.py): the
//! layer-wise lr decay groups of `param_groups_lrd` on vit_base_patch16, and fine-tuning iterations
//! of `engine_finetune.train_one_epoch` against PyTorch (timm ViT under the official keys,
//! torch.optim.AdamW over the same groups, the official lr function; drop path and augmentation
//! off, same batches): lr and loss per iteration, weights after.

use crate::common;

use crate::common::rel_err;
use mae::engine_finetune::train_one_epoch;
use mae::models_vit::{self, VitConfig};
use mae::timm::loss::Criterion;
use mae::torch::amp::Precision;
use mae::torch::data_loader::Batch;
use mae::torch::optim::{named_parameters, AdamW};
use mae::torch::state_dict::load_state_dict;
use mae::util::lr_decay::param_groups_lrd;
use mae::util::lr_sched::LrArgs;
use mae::util::misc::{NativeScalerWithGradNormCount, Step};
use tch::{nn, Device, Tensor};

const NO_WEIGHT_DECAY: [&str; 3] = ["pos_embed", "cls_token", "dist_token"];

#[test]
fn param_groups_lrd_like_the_official_on_vit_base() {
    let dir = common::scratch();
    let out = dir.join("lrd.json");
    common::run_python(
        &common::root().join("tools/reference/finetune_reference.py"),
        &["lrd", out.to_str().unwrap()],
    );
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();

    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = VitConfig::default(); // global pool, 1000 classes
    let model = models_vit::build("vit_base_patch16", &vs.root(), cfg).unwrap();
    let order: Vec<String> = named_parameters(&vs).into_iter().map(|(k, _)| k).collect();
    let want_order: Vec<String> = want["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, want_order, "named_parameters order");

    let (groups, names) = param_groups_lrd(
        named_parameters(&vs),
        model.blocks.len(),
        0.05,
        &NO_WEIGHT_DECAY,
        0.65,
    );
    let want_groups: Vec<&str> = want["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names, want_groups, "group order");
    let mut seen = 0;
    for (g, name) in groups.iter().zip(&names) {
        for p in &g.names {
            let w = &want["params"][p.as_str()];
            assert_eq!(w["group"].as_str().unwrap(), name, "{p}");
            let float = |k: &str| w[k].as_str().unwrap().parse::<f64>().unwrap();
            assert_eq!(float("lr_scale"), g.lr_scale.unwrap(), "{p} lr_scale");
            assert_eq!(float("weight_decay"), g.weight_decay, "{p} weight decay");
            seen += 1;
        }
    }
    assert_eq!(seen, want["params"].as_object().unwrap().len());
    assert_eq!(names.len(), 2 * 14, "layer 0..13, decay and no_decay");
}

/// (tag, iterations, accum_iter, global_pool, smoothing, clip_grad, epoch, soft targets)
type Case = (
    &'static str,
    usize,
    usize,
    bool,
    f64,
    Option<f64>,
    i64,
    bool,
);
const CASES: [Case; 4] = [
    ("s1_a1_gp_ls", 1, 1, true, 0.1, None, 1, false),
    ("s3_a1_gp_ls", 3, 1, true, 0.1, None, 3, false),
    ("s3_a1_cls_ce_clip", 3, 1, false, 0.0, Some(0.05), 1, false),
    ("s4_a2_gp_soft_clip", 4, 2, true, 0.0, Some(1.0), 3, true),
];

#[test]
fn fine_tuning_steps_match_pytorch() {
    let dir = common::scratch();
    let r = common::reference_tensors(
        "tools/reference/finetune_reference.py",
        &["steps"],
        &dir.join("steps.safetensors"),
    );
    let mut worst = 0f64;
    for (tag, iters, accum_iter, gp, smoothing, clip_grad, epoch, soft) in CASES {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let cfg = VitConfig {
            img_size: 32,
            num_classes: 10,
            drop_path_rate: 0.,
            global_pool: gp,
            ..VitConfig::default()
        };
        let model = models_vit::build("vit_tiny_patch4", &vs.root(), cfg).unwrap();
        let prefix = if gp { "init.gp." } else { "init.cls." };
        let init: Vec<(String, Tensor)> = r
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.copy())))
            .collect();
        load_state_dict(&mut vs, init, true).unwrap();
        let (groups, _) = param_groups_lrd(
            named_parameters(&vs),
            model.blocks.len(),
            0.05,
            &NO_WEIGHT_DECAY,
            0.75,
        );
        let mut optimizer = AdamW::new(groups, 1e-3, (0.9, 0.999));
        let mut scaler = NativeScalerWithGradNormCount::new(false);
        let criterion = if soft {
            Criterion::SoftTargetCrossEntropy
        } else if smoothing > 0. {
            Criterion::LabelSmoothingCrossEntropy { smoothing }
        } else {
            Criterion::CrossEntropyLoss
        };
        let batches = (0..iters).map(|i| {
            let t = if soft { "soft" } else { "target" };
            Ok(Batch {
                images: r[&format!("batch{i}.images")].copy(),
                target: r[&format!("batch{i}.{t}")].copy(),
            })
        });
        let lr_args = LrArgs {
            lr: 1e-3,
            min_lr: 1e-6,
            warmup_epochs: 2,
            epochs: 4,
        };
        let stats = train_one_epoch(
            &|x| model.forward_t(x, true),
            criterion,
            batches.collect::<Vec<_>>().into_iter(),
            &mut optimizer,
            Device::Cpu,
            Precision::Fp32,
            epoch,
            &mut scaler,
            clip_grad,
            None,
            None,
            accum_iter,
            &lr_args,
        )
        .unwrap();
        let want_lr = Vec::<f64>::try_from(&r[&format!("{tag}.lr")]).unwrap();
        let want_loss = Vec::<f64>::try_from(&r[&format!("{tag}.loss")]).unwrap();
        for (i, Step { loss, lr, .. }) in stats.steps.iter().enumerate() {
            assert!(
                (lr - want_lr[i]).abs() <= 1e-15 * want_lr[i].abs().max(1e-12),
                "{tag} lr {i}"
            );
            assert!(
                (loss - want_loss[i]).abs() < 1e-5,
                "{tag} loss {i}: {loss} vs {}",
                want_loss[i]
            );
        }
        let moved =
            r[&format!("{prefix}head.weight")].ne_tensor(&r[&format!("{tag}.w.head.weight")]);
        assert!(
            moved.any().int64_value(&[]) == 1,
            "{tag}: the reference did not train"
        );
        for (k, v) in vs.variables() {
            let e = rel_err(&v, &r[&format!("{tag}.w.{k}")]);
            worst = worst.max(e);
            assert!(e <= 1e-5, "{tag} {k}: weights rel err {e:.3e}");
        }
        println!("{tag}: worst weights rel err so far {worst:.3e}");
    }
}
