//! The optimiser main_pretrain.py builds: `torch.optim.AdamW` (torch/optim/adam.py with
//! `decoupled_weight_decay=True`: `_single_tensor_adam`, the CPU default; `_multi_tensor_adam`,
//! the CUDA default; `_fused_adam` with `fused=True`), written on tensors so that its state can be
//! saved and resumed in `optimizer.state_dict()`'s layout; and the parameter groups of timm
//! 0.3.2's `optim_factory.add_weight_decay`. The ATen calls tch lacks are in csrc/optim.cpp.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::os::raw::c_int;

use anyhow::{bail, ensure, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::torch::serialization::pickle::Value;

/// One entry of `optimizer.param_groups`; `names` are the `named_parameters` names of `params`.
#[derive(Debug)]
pub struct ParamGroup {
    pub names: Vec<String>,
    pub params: Vec<Tensor>,
    pub lr: f64,
    pub weight_decay: f64,
    /// util/lr_decay.py's layer-wise scale, applied by `adjust_learning_rate`.
    pub lr_scale: Option<f64>,
}

extern "C" {
    fn mae_set_grad_to_none(tensor: *mut c_void) -> c_int;
    fn mae_adamw_update(
        param: *mut c_void,
        grad: *mut c_void,
        exp_avg: *mut c_void,
        exp_avg_sq: *mut c_void,
        lr: f64,
        weight_decay: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        step_size: f64,
        bias_correction2_sqrt: f64,
    ) -> c_int;
    fn mae_adamw_multi_tensor(
        params: *const *mut c_void,
        grads: *const *mut c_void,
        exp_avgs: *const *mut c_void,
        exp_avg_sqs: *const *mut c_void,
        steps: *const *mut c_void,
        n: c_int,
        lr: f64,
        weight_decay: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        fused: c_int,
    ) -> c_int;
}

/// tch's `C_tensor` pointer of a tensor, for the csrc/optim.cpp calls.
pub(crate) fn c_tensor(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// Splits `0..n` by the (device, dtype) of `key(i)`, keeping the order inside each part:
/// `Optimizer._group_tensors_by_device_and_dtype`, which the multi-tensor kernels need.
pub(crate) fn by_device_and_dtype(
    n: usize,
    key: impl Fn(usize) -> (Device, Kind),
) -> Vec<Vec<usize>> {
    let mut parts: Vec<((Device, Kind), Vec<usize>)> = Vec::new();
    for i in 0..n {
        let k = key(i);
        match parts.iter_mut().find(|(pk, _)| *pk == k) {
            Some((_, v)) => v.push(i),
            None => parts.push((k, vec![i])),
        }
    }
    parts.into_iter().map(|(_, v)| v).collect()
}

/// Which of torch.optim.AdamW's implementations runs the step (its `foreach=` / `fused=`).
/// All three give the same update up to float rounding; they differ in kernel launches: one
/// per parameter and operation (single), one per operation over a list of tensors (foreach),
/// one per step (fused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdamImpl {
    /// `_single_tensor_adam`: torch's default on the CPU.
    Single,
    /// `_multi_tensor_adam` (`foreach=True`): torch's default when the parameters are on CUDA.
    Foreach,
    /// `_fused_adam` (`fused=True`), opt-in in torch as here (`--fused_optimizer`).
    Fused,
}

impl AdamImpl {
    /// What `torch.optim.AdamW(..., fused=fused or None)` runs for parameters on `device`
    /// (torch's `_default_to_fused_or_foreach`: foreach on CUDA, single-tensor elsewhere).
    pub fn for_device(device: Device, fused: bool) -> Self {
        match (fused, device) {
            (true, _) => AdamImpl::Fused,
            (false, Device::Cuda(_)) => AdamImpl::Foreach,
            (false, _) => AdamImpl::Single,
        }
    }
}

/// `param.grad = None` (csrc/autocast.cpp), what torch 2.x's `optimizer.zero_grad()` does
/// (`set_to_none=True`). tch's `zero_grad` fills the gradient with zeros instead, so each
/// backward then adds into it: one more pass over every gradient per step. The optimizers and
/// `clip_grad_norm_` skip parameters without a gradient, as torch does.
pub fn set_grad_to_none(param: &mut Tensor) {
    let rc = unsafe { mae_set_grad_to_none(param.as_mut_ptr() as *mut c_void) };
    assert_eq!(rc, 0, "libtorch failed to reset a gradient");
}

/// What the training loop and checkpoints need of a `torch.optim.Optimizer` (AdamW when
/// pre-training and fine-tuning, LARS when linear probing).
pub trait Optimizer {
    fn param_groups(&mut self) -> &mut [ParamGroup];
    fn step(&mut self);
    /// `optimizer.zero_grad()` (torch 2.x: `set_to_none=True`).
    fn zero_grad(&mut self) {
        for p in self.param_groups().iter_mut().flat_map(|g| &mut g.params) {
            set_grad_to_none(p);
        }
    }
    fn state_dict(&self) -> Value;
    fn load_state_dict(&mut self, sd: &Value) -> Result<()>;
}

impl Optimizer for AdamW {
    fn param_groups(&mut self) -> &mut [ParamGroup] {
        &mut self.param_groups
    }
    fn step(&mut self) {
        AdamW::step(self)
    }
    fn state_dict(&self) -> Value {
        AdamW::state_dict(self)
    }
    fn load_state_dict(&mut self, sd: &Value) -> Result<()> {
        AdamW::load_state_dict(self, sd)
    }
}

/// `optimizer.state[p]` of Adam: `step` is a float32 scalar tensor, as in torch.
#[derive(Debug)]
struct AdamState {
    step: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// `torch.optim.AdamW(param_groups, lr, betas, eps=1e-8)` (amsgrad, maximize: off).
#[derive(Debug)]
pub struct AdamW {
    pub param_groups: Vec<ParamGroup>,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Single-tensor unless set (`AdamImpl::for_device` gives torch's choice).
    pub implementation: AdamImpl,
    state: Vec<Vec<Option<AdamState>>>, // [group][param]
}

impl AdamW {
    pub fn new(mut param_groups: Vec<ParamGroup>, lr: f64, betas: (f64, f64)) -> Self {
        for g in &mut param_groups {
            g.lr = lr;
        }
        let state = param_groups
            .iter()
            .map(|g| g.params.iter().map(|_| None).collect())
            .collect();
        AdamW {
            param_groups,
            betas,
            eps: 1e-8,
            implementation: AdamImpl::Single,
            state,
        }
    }

    /// The same optimizer running `implementation`'s kernels.
    pub fn with_implementation(mut self, implementation: AdamImpl) -> Self {
        self.implementation = implementation;
        self
    }

    /// `optimizer.zero_grad()` (torch 2.x: `set_to_none=True`).
    pub fn zero_grad(&mut self) {
        Optimizer::zero_grad(self)
    }

    /// One AdamW step on every parameter that has a gradient, through `self.implementation`.
    pub fn step(&mut self) {
        match self.implementation {
            AdamImpl::Single => self.step_single_tensor(),
            AdamImpl::Foreach | AdamImpl::Fused => self.step_multi_tensor(),
        }
    }

    /// torch's `_single_tensor_adam`, the default of torch.optim.AdamW on the CPU, with its
    /// tensor operations in csrc/optim.cpp (`mae_adamw_update`).
    fn step_single_tensor(&mut self) {
        let (beta1, beta2) = self.betas;
        let eps = self.eps;
        tch::no_grad(|| {
            for (group, states) in self.param_groups.iter_mut().zip(&mut self.state) {
                let (lr, weight_decay) = (group.lr, group.weight_decay);
                for (param, state) in group.params.iter_mut().zip(states.iter_mut()) {
                    let grad = param.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let st = state.get_or_insert_with(|| AdamState {
                        step: Tensor::zeros([], (Kind::Float, Device::Cpu)),
                        exp_avg: param.zeros_like(),
                        exp_avg_sq: param.zeros_like(),
                    });
                    // update step
                    let _ = st.step.g_add_scalar_(1);
                    let step = st.step.double_value(&[]);
                    let bias_correction1 = 1. - beta1.powf(step);
                    let bias_correction2 = 1. - beta2.powf(step);
                    let step_size = lr / bias_correction1;
                    let bias_correction2_sqrt = bias_correction2.powf(0.5);
                    // stepweight decay, the moments, param.addcdiv_(exp_avg, denom, value=-step_size)
                    let rc = unsafe {
                        mae_adamw_update(
                            c_tensor(param),
                            c_tensor(&grad),
                            c_tensor(&st.exp_avg),
                            c_tensor(&st.exp_avg_sq),
                            lr,
                            weight_decay,
                            beta1,
                            beta2,
                            eps,
                            step_size,
                            bias_correction2_sqrt,
                        )
                    };
                    assert_eq!(
                        rc,
                        0,
                        "libtorch failed in the AdamW update of {:?}",
                        param.size()
                    );
                }
            }
        });
    }

    /// torch's `_multi_tensor_adam` (foreach) or `_fused_adam` (fused), group by group: the
    /// parameters with a gradient, split by device and dtype, each part in one call of
    /// csrc/optim.cpp. Fused keeps the steps on the parameters' device, as torch does.
    fn step_multi_tensor(&mut self) {
        let (beta1, beta2) = self.betas;
        let eps = self.eps;
        let fused = self.implementation == AdamImpl::Fused;
        tch::no_grad(|| {
            for (group, states) in self.param_groups.iter_mut().zip(&mut self.state) {
                let (lr, weight_decay) = (group.lr, group.weight_decay);
                let mut with_grad = Vec::new(); // (param index, grad)
                for (i, param) in group.params.iter().enumerate() {
                    let grad = param.grad();
                    if grad.defined() {
                        with_grad.push((i, grad));
                    }
                }
                for &(i, _) in &with_grad {
                    let param = &group.params[i];
                    let step_device = if fused { param.device() } else { Device::Cpu };
                    states[i].get_or_insert_with(|| AdamState {
                        step: Tensor::zeros([], (Kind::Float, step_device)),
                        exp_avg: param.zeros_like(),
                        exp_avg_sq: param.zeros_like(),
                    });
                }
                let parts = by_device_and_dtype(with_grad.len(), |j| {
                    let p = &group.params[with_grad[j].0];
                    (p.device(), p.kind())
                });
                for part in parts {
                    let (mut p, mut g, mut m, mut v, mut s) =
                        (vec![], vec![], vec![], vec![], vec![]);
                    for j in part {
                        let (i, grad) = &with_grad[j];
                        let st = states[*i].as_ref().expect("state made above");
                        p.push(c_tensor(&group.params[*i]));
                        g.push(c_tensor(grad));
                        m.push(c_tensor(&st.exp_avg));
                        v.push(c_tensor(&st.exp_avg_sq));
                        s.push(c_tensor(&st.step));
                    }
                    let rc = unsafe {
                        mae_adamw_multi_tensor(
                            p.as_ptr(),
                            g.as_ptr(),
                            m.as_ptr(),
                            v.as_ptr(),
                            s.as_ptr(),
                            p.len() as c_int,
                            lr,
                            weight_decay,
                            beta1,
                            beta2,
                            eps,
                            fused.into(),
                        )
                    };
                    assert_eq!(
                        rc,
                        0,
                        "libtorch failed in the {:?} AdamW update of {} tensors",
                        self.implementation,
                        p.len()
                    );
                }
            }
        });
    }

    /// `optimizer.state_dict()`: `{'state': {id: {'step', 'exp_avg', 'exp_avg_sq'}},
    /// 'param_groups': [{..., 'params': [id, ...]}]}`, ids numbered across the groups in order.
    pub fn state_dict(&self) -> Value {
        let s = |k: &str| Value::Str(k.into());
        let mut state = Vec::new();
        let mut groups = Vec::new();
        let mut id = 0i64;
        for (g, states) in self.param_groups.iter().zip(&self.state) {
            let mut ids = Vec::new();
            for st in states {
                if let Some(st) = st {
                    let entry = vec![
                        (s("step"), Value::Tensor(st.step.shallow_clone())),
                        (s("exp_avg"), Value::Tensor(st.exp_avg.shallow_clone())),
                        (
                            s("exp_avg_sq"),
                            Value::Tensor(st.exp_avg_sq.shallow_clone()),
                        ),
                    ];
                    state.push((Value::Int(id), Value::Dict(entry)));
                }
                ids.push(Value::Int(id));
                id += 1;
            }
            let mut group = vec![(s("weight_decay"), Value::Float(g.weight_decay))];
            if let Some(scale) = g.lr_scale {
                group.push((s("lr_scale"), Value::Float(scale)));
            }
            group.extend([
                (s("lr"), Value::Float(g.lr)),
                (
                    s("betas"),
                    Value::Tuple(vec![Value::Float(self.betas.0), Value::Float(self.betas.1)]),
                ),
                (s("eps"), Value::Float(self.eps)),
                (s("amsgrad"), Value::Bool(false)),
                (s("maximize"), Value::Bool(false)),
                (s("foreach"), Value::None),
                (s("capturable"), Value::Bool(false)),
                (s("differentiable"), Value::Bool(false)),
                (
                    s("fused"),
                    if self.implementation == AdamImpl::Fused {
                        Value::Bool(true)
                    } else {
                        Value::None
                    },
                ),
                (s("decoupled_weight_decay"), Value::Bool(true)),
                (s("params"), Value::List(ids)),
            ]);
            groups.push(Value::Dict(group));
        }
        Value::Dict(vec![
            (s("state"), Value::Dict(state)),
            (s("param_groups"), Value::List(groups)),
        ])
    }

    /// `optimizer.load_state_dict(sd)`: the saved groups must hold as many parameters as ours
    /// (matched by position, as torch does); hyper-parameters come from the saved groups.
    pub fn load_state_dict(&mut self, sd: &Value) -> Result<()> {
        let groups = sd
            .get("param_groups")
            .and_then(Value::as_list)
            .context("optimizer state_dict has no 'param_groups' list")?;
        ensure!(
            groups.len() == self.param_groups.len(),
            "loaded state dict has {} parameter groups, the optimizer has {}",
            groups.len(),
            self.param_groups.len()
        );
        let mut where_is = BTreeMap::new(); // saved id -> (group, index)
        for (gi, (saved, group)) in groups.iter().zip(&self.param_groups).enumerate() {
            let ids = saved
                .get("params")
                .and_then(Value::as_list)
                .context("parameter group without 'params'")?;
            ensure!(
                ids.len() == group.params.len(),
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group ({} vs {})",
                ids.len(),
                group.params.len()
            );
            for (pi, id) in ids.iter().enumerate() {
                where_is.insert(id.as_int().context("parameter id is not an int")?, (gi, pi));
            }
        }
        let float = |g: &Value, k: &str| -> Result<f64> {
            g.get(k)
                .and_then(Value::as_float)
                .with_context(|| format!("parameter group without a float '{k}'"))
        };
        let betas = match groups[0].get("betas") {
            Some(Value::Tuple(b) | Value::List(b)) if b.len() == 2 => (
                b[0].as_float().context("betas")?,
                b[1].as_float().context("betas")?,
            ),
            _ => bail!("parameter group without 'betas'"),
        };
        let eps = float(&groups[0], "eps")?;
        let mut state: Vec<Vec<Option<AdamState>>> = self
            .param_groups
            .iter()
            .map(|g| g.params.iter().map(|_| None).collect())
            .collect();
        for (id, entry) in sd.get("state").and_then(Value::as_dict).unwrap_or(&[]) {
            let id = id.as_int().context("state key is not an int")?;
            let &(gi, pi) = where_is
                .get(&id)
                .with_context(|| format!("state for unknown parameter id {id}"))?;
            let p = &self.param_groups[gi].params[pi];
            let t = |k: &str| -> Result<Tensor> {
                entry
                    .get(k)
                    .and_then(Value::as_tensor)
                    .with_context(|| format!("state {id} has no tensor '{k}'"))
                    .map(|t| t.shallow_clone())
            };
            let (exp_avg, exp_avg_sq) = (t("exp_avg")?, t("exp_avg_sq")?);
            ensure!(
                exp_avg.size() == p.size() && exp_avg_sq.size() == p.size(),
                "state {id}: moments of shape {:?}, parameter {} has {:?}",
                exp_avg.size(),
                self.param_groups[gi].names[pi],
                p.size()
            );
            // torch's _process_value_according_to_param_policy: a fused optimizer's steps live
            // on the parameter's device, the others' on the CPU
            let step_device = match self.implementation {
                AdamImpl::Fused => p.device(),
                _ => Device::Cpu,
            };
            state[gi][pi] = Some(AdamState {
                step: t("step")?.to_kind(Kind::Float).to_device(step_device),
                exp_avg: exp_avg.to_kind(p.kind()).to_device(p.device()).copy(),
                exp_avg_sq: exp_avg_sq.to_kind(p.kind()).to_device(p.device()).copy(),
            });
        }
        for (saved, group) in groups.iter().zip(&mut self.param_groups) {
            group.lr = float(saved, "lr")?;
            group.weight_decay = float(saved, "weight_decay")?;
            group.lr_scale = saved.get("lr_scale").and_then(Value::as_float);
        }
        self.betas = betas;
        self.eps = eps;
        self.state = state;
        Ok(())
    }
}

impl std::fmt::Display for AdamW {
    /// `print(optimizer)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "AdamW (")?;
        for (i, g) in self.param_groups.iter().enumerate() {
            writeln!(f, "Parameter Group {i}")?;
            writeln!(f, "    amsgrad: False")?;
            writeln!(f, "    betas: ({}, {})", self.betas.0, self.betas.1)?;
            writeln!(f, "    eps: {:e}", self.eps)?;
            writeln!(f, "    lr: {}", g.lr)?;
            if let Some(s) = g.lr_scale {
                writeln!(f, "    lr_scale: {s}")?;
            }
            writeln!(f, "    weight_decay: {}", g.weight_decay)?;
            if i + 1 < self.param_groups.len() {
                writeln!(f)?;
            }
        }
        write!(f, ")")
    }
}

/// Attribute order of the official modules (`__init__` assignment order), which decides
/// `named_parameters()` order and so the parameter ids of `optimizer.state_dict()`.
const ATTRIBUTE_ORDER: [&str; 26] = [
    "cls_token",
    "pos_embed",
    "mask_token",
    "decoder_pos_embed",
    "patch_embed",
    "blocks",
    "norm1",
    "attn",
    "qkv",
    "proj",
    "norm2",
    "mlp",
    "fc1",
    "fc2",
    "norm",
    "fc_norm",
    "head",
    "decoder_embed",
    "decoder_blocks",
    "decoder_norm",
    "decoder_pred",
    "weight",
    "bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
];

/// `model.named_parameters()` (trainable or not) in PyTorch's order: at each module its own
/// parameters first, then its submodules, each in attribute order; list indices numerically.
pub fn named_parameters(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let key = |name: &str| {
        let parts: Vec<&str> = name.split('.').collect();
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let rank = match p.parse::<usize>() {
                    Ok(n) => n,
                    Err(_) => ATTRIBUTE_ORDER
                        .iter()
                        .position(|a| a == p)
                        .unwrap_or(ATTRIBUTE_ORDER.len()),
                };
                (i != last, rank, p.to_string())
            })
            .collect::<Vec<_>>()
    };
    vars.sort_by_cached_key(|(k, _)| key(k));
    vars
}

/// timm 0.3.2 `optim_factory.add_weight_decay(model, weight_decay, skip_list)`: frozen
/// parameters left out; no decay for 1-D parameters, `.bias` and `skip_list`; groups
/// `[no_decay (weight_decay 0), decay]`.
pub fn add_weight_decay(
    named_parameters: Vec<(String, Tensor)>,
    weight_decay: f64,
    skip_list: &[&str],
) -> Vec<ParamGroup> {
    let group = |wd| ParamGroup {
        names: Vec::new(),
        params: Vec::new(),
        lr: 0.,
        weight_decay: wd,
        lr_scale: None,
    };
    let (mut decay, mut no_decay) = (group(weight_decay), group(0.));
    for (name, param) in named_parameters {
        if !param.requires_grad() {
            continue; // frozen weights
        }
        let g = if param.dim() == 1 || name.ends_with(".bias") || skip_list.contains(&name.as_str())
        {
            &mut no_decay
        } else {
            &mut decay
        };
        g.names.push(name);
        g.params.push(param);
    }
    vec![no_decay, decay]
}
