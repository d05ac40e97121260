//! `mae linprobe` against main_linprobe.py (tools/reference/linprobe_reference.py): the state_dict
//! keys of the BatchNorm + Linear head model, and linear-probing iterations with util/lars.py's
//! LARS (frozen encoder, BatchNorm running statistics, momentum buffers, weights).

use crate::common;

use crate::common::rel_err;
use mae::engine_finetune::train_one_epoch;
use mae::main_linprobe::LinProbe;
use mae::models_vit::VitConfig;
use mae::timm::loss::Criterion;
use mae::torch::amp::Precision;
use mae::torch::data_loader::Batch;
use mae::torch::optim::{named_parameters, Optimizer};
use mae::torch::serialization::pickle::Value;
use mae::torch::state_dict::load_state_dict;
use mae::util::lars::Lars;
use mae::util::lr_sched::LrArgs;
use mae::util::misc::{NativeScalerWithGradNormCount, Step};
use tch::{nn, Device, Tensor};

#[test]
fn lars_linear_probe_steps_match_pytorch() {
    let dir = common::scratch();
    let r = common::reference_tensors(
        "tools/reference/linprobe_reference.py",
        &[],
        &dir.join("reference.safetensors"),
    );
    let keys = std::fs::read_to_string(dir.join("reference.safetensors.keys.txt")).unwrap();
    let want_keys: Vec<&str> = keys.lines().collect();

    let mut vs = nn::VarStore::new(Device::Cpu);
    let cfg = VitConfig {
        img_size: 32,
        num_classes: 10,
        drop_path_rate: 0.,
        global_pool: false,
        ..VitConfig::default()
    };
    let model = LinProbe::new(&vs.root(), "vit_tiny_patch4", cfg).unwrap();
    let ours: Vec<String> = named_parameters(&vs).into_iter().map(|(k, _)| k).collect();
    assert_eq!(ours, want_keys, "state_dict keys and order");

    let init: Vec<(String, Tensor)> = r
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("init.").map(|k| (k.to_string(), v.copy())))
        .collect();
    load_state_dict(&mut vs, init, true).unwrap();
    for (name, p) in vs.variables() {
        let _ = p.set_requires_grad(name.starts_with("head.1."));
    }
    let head = vec![
        ("head.1.weight".to_string(), model.head.ws.shallow_clone()),
        (
            "head.1.bias".to_string(),
            model.head.bs.as_ref().unwrap().shallow_clone(),
        ),
    ];
    let mut optimizer = Lars::new(head, 0.4, 0.05);
    let mut scaler = NativeScalerWithGradNormCount::new(false);
    let batches: Vec<_> = (0..3)
        .map(|i| {
            Ok(Batch {
                images: r[&format!("batch{i}.images")].copy(),
                target: r[&format!("batch{i}.target")].copy(),
            })
        })
        .collect();
    let lr_args = LrArgs {
        lr: 0.4,
        min_lr: 0.,
        warmup_epochs: 1,
        epochs: 3,
    };
    let stats = train_one_epoch(
        &|x| model.forward_t(x, true),
        Criterion::CrossEntropyLoss,
        batches.into_iter(),
        &mut optimizer,
        Device::Cpu,
        Precision::Fp32,
        1,
        &mut scaler,
        None,
        None,
        None,
        1,
        &lr_args,
    )
    .unwrap();
    let want_lr = Vec::<f64>::try_from(&r["lr"]).unwrap();
    let want_loss = Vec::<f64>::try_from(&r["loss"]).unwrap();
    for (i, Step { loss, lr, .. }) in stats.steps.iter().enumerate() {
        assert_eq!(*lr, want_lr[i], "lr {i}");
        assert!(
            (loss - want_loss[i]).abs() < 1e-5,
            "loss {i}: {loss} vs {}",
            want_loss[i]
        );
    }
    let mut worst = 0f64;
    for (k, v) in vs.variables() {
        let want = &r[&format!("after.{k}")];
        if k.ends_with("num_batches_tracked") {
            assert_eq!(v.int64_value(&[]), want.int64_value(&[]), "{k}");
            continue;
        }
        let e = rel_err(&v, want);
        worst = worst.max(e);
        assert!(e <= 1e-5, "{k}: rel err {e:.3e}");
    }
    let moved = rel_err(&r["init.head.1.weight"], &r["after.head.1.weight"]);
    assert!(moved > 0., "the head did not train");
    // momentum buffers, through the optimizer's state_dict
    let sd = optimizer.state_dict();
    let state = sd.get("state").and_then(Value::as_dict).unwrap();
    for (i, (_, entry)) in state.iter().enumerate() {
        let mu = entry.get("mu").and_then(Value::as_tensor).unwrap();
        let e = rel_err(mu, &r[&format!("mu.{i}")]);
        worst = worst.max(e);
        assert!(e <= 1e-5, "mu {i}: rel err {e:.3e}");
    }
    println!("linear probe, 3 LARS steps: worst rel err {worst:.3e}");
}
