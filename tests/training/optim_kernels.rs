//! The optimizer's kernels against torch's own (tools/reference/optim_reference.py): AdamW's
//! single-tensor, foreach and fused implementations, each after five steps of the same gradients
//! over two groups of different lr and weight decay, against torch.optim.AdamW of the same kind;
//! and the fp16 gradient scaler's one-kernel unscale against torch.amp.GradScaler (the same
//! skipped steps, the same scale after each step, the same weights).

use crate::common;

use crate::common::rel_err;
use mae::torch::optim::{AdamImpl, AdamW, ParamGroup};
use mae::util::misc::NativeScalerWithGradNormCount;
use std::collections::HashMap;
use tch::{Kind, Tensor};

const N_PARAMS: usize = 5;
// optim_reference.py's GROUPS: parameter indices, lr, weight decay
const GROUPS: [(&[usize], f64, f64); 2] = [(&[0, 1, 3], 1e-3, 0.0), (&[2, 4], 2.5e-3, 0.05)];

fn reference() -> HashMap<String, Tensor> {
    let dir = common::scratch();
    common::reference_tensors(
        "tools/reference/optim_reference.py",
        &[],
        &dir.join("optim.safetensors"),
    )
}

/// The reference's parameters as leaves that require grad, and an AdamW over its groups.
fn build(r: &HashMap<String, Tensor>, implementation: AdamImpl) -> (Vec<Tensor>, AdamW) {
    let params: Vec<Tensor> = (0..N_PARAMS)
        .map(|i| r[&format!("p{i}")].copy().set_requires_grad(true))
        .collect();
    let groups = GROUPS
        .iter()
        .map(|(idx, _, wd)| ParamGroup {
            names: idx.iter().map(|i| format!("p{i}")).collect(),
            params: idx.iter().map(|&i| params[i].shallow_clone()).collect(),
            lr: 0.,
            weight_decay: *wd,
            lr_scale: None,
        })
        .collect();
    let mut opt = AdamW::new(groups, 0., (0.9, 0.999)).with_implementation(implementation);
    for (g, (_, lr, _)) in opt.param_groups.iter_mut().zip(GROUPS) {
        g.lr = lr;
    }
    (params, opt)
}

/// Backward of sum(p * G): each parameter's gradient is exactly G.
fn loss_with_grads(params: &[Tensor], grads: &[Tensor]) -> Tensor {
    params
        .iter()
        .zip(grads)
        .map(|(p, g)| (p * g).sum(Kind::Float))
        .reduce(|a, b| a + b)
        .expect("parameters")
}

#[test]
fn adamw_implementations_match_torch() {
    let r = reference();
    let mut report = Vec::new();
    for (implementation, tag) in [
        (AdamImpl::Single, "single"),
        (AdamImpl::Foreach, "foreach"),
        (AdamImpl::Fused, "fused"),
    ] {
        let (params, mut opt) = build(&r, implementation);
        for s in 0..5 {
            let grads: Vec<Tensor> = (0..N_PARAMS)
                .map(|i| r[&format!("g{s}_{i}")].copy())
                .collect();
            loss_with_grads(&params, &grads).backward();
            opt.step();
            opt.zero_grad();
        }
        let moments = common::adamw_moments(&opt);
        let mut worst = 0f64;
        for (i, p) in params.iter().enumerate() {
            let (m, v, step) = &moments[&format!("p{i}")];
            assert_eq!(*step, 5., "{tag}: step of p{i}");
            for (got, key) in [(p, "p"), (m, "m"), (v, "v")] {
                let e = rel_err(got, &r[&format!("{tag}.{key}{i}")]);
                assert!(e <= 1e-6, "{tag}: {key}{i} relative error {e:e}");
                worst = worst.max(e);
            }
        }
        // how far this implementation is from torch's single-tensor one: rounding only
        let cross = (0..N_PARAMS)
            .map(|i| rel_err(&params[i], &r[&format!("single.p{i}")]))
            .fold(0f64, f64::max);
        if implementation == AdamImpl::Fused {
            // torch's fused kernel rounds differently from its single-tensor path; ours follows it
            assert!(
                worst < cross,
                "fused: {worst:e} from torch's fused, {cross:e} from its single-tensor path"
            );
        }
        report.push(format!(
            "{tag}: worst relative error against torch's {tag} {worst:.2e} (against torch's single {cross:.2e})"
        ));
    }
    println!("{}", report.join("\n"));
}

#[test]
fn fused_state_dict_says_fused() {
    let r = reference();
    let (_, opt) = build(&r, AdamImpl::Fused);
    let sd = opt.state_dict();
    let groups = sd.get("param_groups").and_then(|g| g.as_list()).unwrap();
    let fused = groups[0].get("fused").unwrap();
    assert!(
        matches!(fused, mae::torch::serialization::pickle::Value::Bool(true)),
        "{fused:?}"
    );
    let (_, single) = build(&r, AdamImpl::Single);
    let sd = single.state_dict();
    let groups = sd.get("param_groups").and_then(|g| g.as_list()).unwrap();
    let fused = groups[0].get("fused").unwrap();
    assert!(
        matches!(fused, mae::torch::serialization::pickle::Value::None),
        "{fused:?}"
    );
}

#[test]
fn grad_scaler_skips_and_rescales_like_torch() {
    let r = reference();
    let (params, mut opt) = build(&r, AdamImpl::Single);
    let mut scaler = NativeScalerWithGradNormCount {
        growth_interval: 2,
        ..NativeScalerWithGradNormCount::new(true)
    };
    let want_scale = Vec::<f64>::try_from(&r["amp.scale"]).unwrap();
    let want_skipped = Vec::<f64>::try_from(&r["amp.skipped"]).unwrap();
    assert!(
        want_skipped.contains(&1.) && want_skipped.contains(&0.),
        "the reference skips some steps and not others"
    );
    for s in 0..want_scale.len() {
        let grads: Vec<Tensor> = (0..N_PARAMS)
            .map(|i| r[&format!("amp.G{s}_{i}")].copy())
            .collect();
        let stepped = scaler.call(&loss_with_grads(&params, &grads), &mut opt, true);
        opt.zero_grad();
        assert_eq!(!stepped, want_skipped[s] == 1., "step {s} skipped");
        assert_eq!(scaler.scale, want_scale[s], "scale after step {s}");
    }
    for (i, p) in params.iter().enumerate() {
        let e = rel_err(p, &r[&format!("amp.p{i}")]);
        assert!(
            e <= 1e-6,
            "p{i} after the scaled steps: relative error {e:e}"
        );
    }
}
