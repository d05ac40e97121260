//! `mae pretrain`'s engine step for step against PyTorch (tools/reference/pretrain_reference.py:
//! HF ViTMAE under the official keys, torch.optim.AdamW over timm's weight-decay groups, the
//! official lr function): the same initial weights, batches and seeded masking noise; the lr of
//! every iteration, the losses, the weights and AdamW moments after the epoch.

use crate::common;

use std::collections::HashMap;

use crate::common::rel_err;
use mae::models_mae::{self, MaeConfig};
use mae::torch::amp::Precision;
use mae::torch::optim::{add_weight_decay, named_parameters, AdamW};
use mae::util::misc::{self, NativeScalerWithGradNormCount};
use tch::{nn, Device};

const CASES: [(&str, usize, usize, bool, i64); 5] = [
    ("s1_a1_pix0_e1", 1, 1, false, 1),
    ("s3_a1_pix0_e1", 3, 1, false, 1),
    ("s3_a1_pix1_e3", 3, 1, true, 3),
    ("s3_a2_pix0_e3", 3, 2, false, 3),
    ("s3_a2_pix1_e1", 3, 2, true, 1),
];

/// Draws from torch's global generator after seeding it: runs in a process of its own.
#[test]
fn steps_match_pytorch() {
    if common::in_own_process() {
        return;
    }
    let dir = common::scratch();
    let (reference, init, batches) = common::pretrain_reference("pretrain_reference.py", &dir);
    let mut report = Vec::new();
    for (tag, steps, accum_iter, norm_pix_loss, epoch) in CASES {
        let cfg = MaeConfig {
            norm_pix_loss,
            ..MaeConfig::default()
        };
        let n = (steps * accum_iter) as i64;
        let data = (0..n).map(|i| batches.get(i)).collect();
        let common::PretrainRun {
            vs,
            optimizer,
            scaler,
            stats,
        } = common::pretrain_steps(accum_iter, Precision::Fp32, cfg, &init, data, epoch);

        // learning rate and loss of every iteration
        let want_lr = Vec::<f64>::try_from(&reference[&format!("{tag}.lr")]).unwrap();
        let want_loss = Vec::<f64>::try_from(&reference[&format!("{tag}.loss")]).unwrap();
        assert_eq!(stats.steps.len(), want_lr.len());
        for (s, (lr, loss)) in stats.steps.iter().zip(want_lr.iter().zip(&want_loss)) {
            assert!((s.lr - lr).abs() <= 1e-12, "{tag}: lr {} vs {lr}", s.lr);
            let e = (s.loss - loss).abs() / loss.abs();
            assert!(e <= 1e-5, "{tag}: loss {} vs {loss} (rel {e:e})", s.loss);
        }

        // weights, and moments of every trained parameter
        let (mut w_err, mut upd_err, mut m_err) = (0f64, 0f64, 0f64);
        let init: HashMap<_, _> = init.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for (name, w) in named_parameters(&vs) {
            let want = &reference[&format!("{tag}.w.{name}")];
            let e = rel_err(&w, want);
            assert!(e <= 1e-5, "{tag}: weight {name}: relative error {e:e}");
            w_err = w_err.max(e);
            if w.requires_grad() {
                let w0 = init[name.as_str()];
                upd_err = upd_err.max(rel_err(&(&w - w0), &(want - w0)));
            }
        }
        let got = common::adamw_moments(&optimizer);
        assert_eq!(
            got.len(),
            named_parameters(&vs).len() - 2,
            "every trained parameter has state"
        );
        for (name, (m, v, step)) in &got {
            assert_eq!(*step, steps as f64, "{tag}: step of {name}");
            assert_eq!(
                reference[&format!("{tag}.step")].double_value(&[0]),
                steps as f64
            );
            for (t, key) in [(m, "m"), (v, "v")] {
                let e = rel_err(t, &reference[&format!("{tag}.{key}.{name}")]);
                assert!(e <= 1e-5, "{tag}: {key} of {name}: relative error {e:e}");
                m_err = m_err.max(e);
            }
        }
        report.push(format!(
            "{tag}: weights {w_err:.2e}, updates (w - w0) {upd_err:.2e}, moments {m_err:.2e}"
        ));

        // the checkpoint of this state loads in PyTorch (weights_only) into the official
        // model (HF mapped) and torch.optim.AdamW over the official parameter order
        if tag == "s3_a2_pix1_e1" {
            let path = misc::save_model(&dir, cli_args(), epoch, &vs, &optimizer, &scaler).unwrap();
            let back = dir.join("from_torch.pth");
            let out =
                common::run_python_code(PY_LOAD, &[path.to_str().unwrap(), back.to_str().unwrap()]);
            assert!(out.contains("loaded"), "{out}");
            report.push(out.trim().to_string());

            // resuming from the file torch wrote restores the same moments, lr and epoch
            let mut vs2 = nn::VarStore::new(Device::Cpu);
            let _m2 = models_mae::build("mae_vit_tiny_patch4", &vs2.root(), MaeConfig::default())
                .unwrap();
            let groups = add_weight_decay(named_parameters(&vs2), 0.05, &[]);
            let mut opt2 = AdamW::new(groups, 0., (0.9, 0.95));
            let mut scaler2 = NativeScalerWithGradNormCount::new(false);
            let start = misc::load_model(&back, &mut vs2, &mut opt2, &mut scaler2).unwrap();
            assert_eq!(start, Some(epoch + 1));
            assert_eq!(opt2.param_groups[0].lr, optimizer.param_groups[0].lr);
            let (a, b) = (
                common::adamw_moments(&optimizer),
                common::adamw_moments(&opt2),
            );
            for (name, (m, v, step)) in &a {
                let (m2, v2, step2) = &b[name];
                assert!(
                    m.equal(m2) && v.equal(v2) && step == step2,
                    "{name} after torch round trip"
                );
            }
            for ((k, w), (k2, w2)) in named_parameters(&vs).iter().zip(&named_parameters(&vs2)) {
                assert!(k == k2 && w.equal(w2), "{k}");
            }
        }
    }
    println!("{}", report.join("\n"));
}

const PY_LOAD: &str = r#"
import sys, torch
sys.path.insert(0, "tools/fixtures")
from make_parity_fixtures import hf_mae, official_to_hf
ck = torch.load(sys.argv[1], weights_only=True)
assert set(ck) == {"model", "optimizer", "epoch", "scaler", "args"}, ck.keys()
assert isinstance(ck["args"], dict) and ck["scaler"] == {}
sd = ck["model"]
model = hf_mae("mae_vit_tiny_patch4", 0.75, True)
model.load_state_dict(official_to_hf(sd, 2, 2), strict=True)
# the official model's named_parameters order is the state_dict order (no buffers)
params = {k: torch.nn.Parameter(v.clone()) for k, v in sd.items()}
for k in ("pos_embed", "decoder_pos_embed"):
    params[k].requires_grad_(False)
no_decay = [p for k, p in params.items() if p.requires_grad and (p.ndim == 1 or k.endswith(".bias"))]
decay = [p for k, p in params.items() if p.requires_grad and not (p.ndim == 1 or k.endswith(".bias"))]
opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.}, {"params": decay, "weight_decay": 0.05}], lr=1e-3, betas=(0.9, 0.95))
opt.load_state_dict(ck["optimizer"])
for p in no_decay + decay:
    st = opt.state[p]
    assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
print("checkpoint loaded in PyTorch: epoch", ck["epoch"], "lr", opt.param_groups[0]["lr"], "steps", int(opt.state[decay[0]]["step"]))
# and back: saved by torch as the official save_model does (args an argparse.Namespace)
import argparse
torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": ck["epoch"], "scaler": {},
            "args": argparse.Namespace(**ck["args"])}, sys.argv[2])
"#;

/// `args` as `mae pretrain` saves them in a checkpoint.
fn cli_args() -> mae::torch::serialization::pickle::Value {
    #[derive(clap::Parser)]
    struct Pretrain {
        #[command(flatten)]
        args: mae::main_pretrain::Args,
    }
    let flags = ["pretrain", "--lr", "1e-3", "--device", "cpu"];
    let cli = <Pretrain as clap::Parser>::parse_from(flags);
    cli.args.to_value().unwrap()
}
