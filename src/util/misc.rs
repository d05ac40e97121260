//! The model-loading parts of util/misc.py and main_*.py: PyTorch's `load_state_dict` semantics
//! on a tch VarStore, and the loaders that feed official checkpoints to the Rust models
//! (`misc.load_model`'s `model_without_ddp.load_state_dict(checkpoint['model'])`, and the
//! pre-trained → fine-tuning path of `main_finetune.py`).

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, ensure, Result};
use tch::{nn, Tensor};

use crate::models_mae::MaskedAutoencoderViT;
use crate::models_vit::VisionTransformer;
use crate::timm::trunc_normal_;
use crate::util::pos_embed::interpolate_pos_embed;

/// What `load_state_dict(strict=False)` returns (`_IncompatibleKeys`), plus the keys whose shape
/// differs (PyTorch raises on those even when not strict; here they are reported and skipped).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub missing_keys: Vec<String>,
    pub unexpected_keys: Vec<String>,
    /// (key, shape in the checkpoint, shape in the model)
    pub mismatched_keys: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing_keys.is_empty()
            && self.unexpected_keys.is_empty()
            && self.mismatched_keys.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "missing_keys={:?}, unexpected_keys={:?}",
            self.missing_keys, self.unexpected_keys
        )?;
        for (k, from, to) in &self.mismatched_keys {
            write!(f, ", size mismatch for {k}: copying a param with shape {from:?} from checkpoint, the shape in current model is {to:?}")?;
        }
        Ok(())
    }
}

/// `model.load_state_dict(sd, strict)` on a VarStore: copies tensor for tensor under no_grad
/// (casting dtype / moving device as needed) and reports what did not match. Strict: any
/// missing, unexpected or mismatched key is an error that lists them, and nothing is copied.
pub fn load_state_dict(
    vs: &mut nn::VarStore,
    sd: Vec<(String, Tensor)>,
    strict: bool,
) -> Result<LoadReport> {
    let (report, pairs) = match_state_dict(vs, sd, strict)?;
    tch::no_grad(|| pairs.into_iter().try_for_each(|(mut v, t)| v.f_copy_(&t)))?;
    Ok(report)
}

/// The (parameter, checkpoint tensor) pairs whose keys and shapes match, and what did not.
fn match_state_dict(
    vs: &nn::VarStore,
    sd: Vec<(String, Tensor)>,
    strict: bool,
) -> Result<(LoadReport, Vec<(Tensor, Tensor)>)> {
    let mut vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut report = LoadReport::default();
    let mut pairs = Vec::new();
    for (k, t) in sd {
        match vars.remove(&k) {
            None => report.unexpected_keys.push(k),
            Some(v) if v.size() != t.size() => report.mismatched_keys.push((k, t.size(), v.size())),
            Some(v) => pairs.push((v, t)),
        }
    }
    report.missing_keys = vars.into_keys().collect();
    if strict && !report.is_clean() {
        bail!("Error(s) in loading state_dict: {report}");
    }
    Ok((report, pairs))
}

/// [`load_state_dict`] strictly, for a model built to receive a whole checkpoint (`init:
/// false`): a checkpoint tensor of the parameter's dtype and device, contiguous and sharing
/// memory with no other entry, becomes the parameter's storage (`param.set_(t)`, as
/// `param.data = t`) instead of being copied; the rest is copied. The model then holds the
/// checkpoint's bytes once, and no second buffer is ever written.
fn adopt_state_dict(vs: &mut nn::VarStore, sd: Vec<(String, Tensor)>) -> Result<LoadReport> {
    let (report, pairs) = match_state_dict(vs, sd, true)?;
    let span = |t: &Tensor| {
        let start = t.data_ptr() as usize;
        (start, start + t.numel() * t.kind().elt_size_in_bytes())
    };
    // entries whose bytes overlap (views of one storage) stay distinct parameters: copied
    let mut spans: Vec<(usize, usize)> = pairs.iter().map(|(_, t)| span(t)).collect();
    spans.sort_unstable();
    let mut shared = std::collections::HashSet::new();
    let mut reach: Option<(usize, usize)> = None; // (end, start) of the span reaching furthest
    for &(start, end) in &spans {
        if let Some((far, owner)) = reach.filter(|&(far, _)| start < far) {
            shared.extend([start, owner]);
            if end <= far {
                continue;
            }
        }
        reach = Some((end, start));
    }
    tch::no_grad(|| {
        pairs.into_iter().try_for_each(|(mut v, t)| {
            let adopt = t.numel() > 0
                && t.kind() == v.kind()
                && t.device() == v.device()
                && t.is_contiguous()
                && !shared.contains(&span(&t).0);
            match adopt {
                true => v.f_set_source_tensor_(&t).map(drop),
                false => v.f_copy_(&t),
            }
        })
    })?;
    Ok(report)
}

/// Resizes `key` of a checkpoint to the model's patch grid (`interpolate_pos_embed`).
fn interpolate_to(
    sd: &mut [(String, Tensor)],
    key: &str,
    pos_embed: &Tensor,
    num_patches: i64,
) -> Result<()> {
    interpolate_pos_embed(sd, key, num_patches, pos_embed.size()[1] - num_patches)
}

/// A pre-training checkpoint (`checkpoint['model']` of main_pretrain.py) into `model`, strictly
/// (its tensors become the parameters: [`adopt_state_dict`]); `pos_embed` / `decoder_pos_embed`
/// are interpolated when the checkpoint's resolution differs.
pub fn load_mae_checkpoint(
    vs: &mut nn::VarStore,
    model: &MaskedAutoencoderViT,
    mut sd: Vec<(String, Tensor)>,
) -> Result<LoadReport> {
    let n = model.patch_embed.num_patches;
    interpolate_to(&mut sd, "pos_embed", &model.pos_embed, n)?;
    interpolate_to(&mut sd, "decoder_pos_embed", &model.decoder_pos_embed, n)?;
    adopt_state_dict(vs, sd)
}

/// A fine-tuned checkpoint (main_finetune.py `--resume` / `--eval`) into `model`, strictly
/// (its tensors become the parameters: [`adopt_state_dict`]); `pos_embed` is interpolated when
/// the checkpoint's resolution differs.
pub fn load_vit_checkpoint(
    vs: &mut nn::VarStore,
    model: &VisionTransformer,
    mut sd: Vec<(String, Tensor)>,
) -> Result<LoadReport> {
    interpolate_to(
        &mut sd,
        "pos_embed",
        &model.pos_embed,
        model.patch_embed.num_patches,
    )?;
    adopt_state_dict(vs, sd)
}

/// main_finetune.py `--finetune`: a pre-training checkpoint into a fresh VisionTransformer.
/// Drops `head.*` when its shape differs, interpolates `pos_embed`, loads non-strictly (the
/// decoder keys come back as unexpected), requires the missing keys to be exactly the new head
/// (and `fc_norm` with global pool), then `trunc_normal_(model.head.weight, std=2e-5)`.
pub fn load_pretrained_for_finetune(
    vs: &mut nn::VarStore,
    model: &mut VisionTransformer,
    mut sd: Vec<(String, Tensor)>,
) -> Result<LoadReport> {
    let state_dict: HashMap<String, Tensor> = vs.variables();
    sd.retain(|(k, t)| {
        let drop = (k == "head.weight" || k == "head.bias")
            && state_dict.get(k).is_some_and(|v| v.size() != t.size());
        if drop {
            println!("Removing key {k} from pretrained checkpoint");
        }
        !drop
    });

    // interpolate position embedding
    interpolate_to(
        &mut sd,
        "pos_embed",
        &model.pos_embed,
        model.patch_embed.num_patches,
    )?;

    // load pre-trained model
    let msg = load_state_dict(vs, sd, false)?;
    println!("{msg}");
    ensure!(
        msg.mismatched_keys.is_empty(),
        "pre-trained checkpoint does not fit the model: {msg}"
    );
    let mut want = vec!["head.bias", "head.weight"];
    if model.global_pool {
        want.extend(["fc_norm.bias", "fc_norm.weight"]);
    }
    let mut missing: Vec<&str> = msg.missing_keys.iter().map(String::as_str).collect();
    missing.sort();
    want.sort();
    ensure!(
        missing == want,
        "pre-trained checkpoint: missing keys {missing:?}, expected exactly {want:?}"
    );

    // manually initialize fc layer
    if let Some(head) = &mut model.head {
        trunc_normal_(&mut head.ws, 2e-5);
    }
    Ok(msg)
}

// --------------------------------------------------------
// Training utilities of util/misc.py: SmoothedValue / MetricLogger, NativeScalerWithGradNormCount,
// save_model / load_model (training checkpoints, resumable).

use crate::util::optim::{Optimizer, ParamGroup};
use crate::util::pickle::Value;
// init_distributed_mode, is_main_process, get_rank, get_world_size: torch.distributed's role,
// on c10d (src/util/distributed.rs)
use crate::util::distributed;
pub use crate::util::distributed::{
    get_rank, get_world_size, init_distributed_mode, is_main_process,
};

/// `torch.nn.utils.clip_grad_norm_(parameters, max_norm)` (norm 2): the total norm of the
/// per-parameter gradient norms; every gradient times `min(max_norm / (total + 1e-6), 1)`,
/// computed in float32 as torch does. Returns the total norm.
pub fn clip_grad_norm_(param_groups: &mut [ParamGroup], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = param_groups
            .iter()
            .flat_map(|g| &g.params)
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.;
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total_norm = Tensor::stack(&norms, 0).norm();
        let clip_coef = (total_norm.g_add_scalar(1e-6)).reciprocal() * max_norm;
        let clip_coef_clamped = clip_coef.clamp_max(1.0);
        for mut g in grads {
            let _ = g.g_mul_(&clip_coef_clamped);
        }
        total_norm.double_value(&[])
    })
}

/// Track a series of values and provide access to smoothed values over a window or the global
/// series average.
#[derive(Debug, Clone)]
pub struct SmoothedValue {
    deque: std::collections::VecDeque<f64>,
    window_size: usize,
    pub total: f64,
    pub count: usize,
}

impl SmoothedValue {
    pub fn new(window_size: usize) -> Self {
        SmoothedValue {
            deque: Default::default(),
            window_size,
            total: 0.,
            count: 0,
        }
    }

    pub fn update(&mut self, value: f64) {
        if self.deque.len() == self.window_size {
            self.deque.pop_front();
        }
        self.deque.push_back(value);
        self.count += 1;
        self.total += value;
    }

    /// `torch.tensor(list(deque)).median()`: the lower middle value for an even count.
    pub fn median(&self) -> f64 {
        let mut d: Vec<f64> = self.deque.iter().copied().collect();
        d.sort_by(f64::total_cmp);
        d.get((d.len().max(1) - 1) / 2).copied().unwrap_or(f64::NAN)
    }

    pub fn avg(&self) -> f64 {
        self.deque.iter().sum::<f64>() / self.deque.len() as f64
    }

    pub fn global_avg(&self) -> f64 {
        self.total / self.count as f64
    }

    pub fn value(&self) -> f64 {
        self.deque.back().copied().unwrap_or(f64::NAN)
    }

    /// Warning: does not synchronize the deque!
    pub fn synchronize_between_processes(&mut self) -> Result<()> {
        let t = distributed::all_reduce_sum(&[self.count as f64, self.total])?;
        self.count = t[0] as usize;
        self.total = t[1];
        Ok(())
    }
}

/// `MetricLogger(delimiter="  ")` with the meters `train_one_epoch` uses: `lr` (window 1, printed
/// `{value:.6f}`) and `loss` (`{median:.4f} ({global_avg:.4f})`).
#[derive(Debug, Clone)]
pub struct MetricLogger {
    pub lr: SmoothedValue,
    pub loss: SmoothedValue,
}

impl Default for MetricLogger {
    fn default() -> Self {
        MetricLogger {
            lr: SmoothedValue::new(1),
            loss: SmoothedValue::new(20),
        }
    }
}

impl MetricLogger {
    pub fn synchronize_between_processes(&mut self) -> Result<()> {
        self.lr.synchronize_between_processes()?;
        self.loss.synchronize_between_processes()
    }
}

impl std::fmt::Display for MetricLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lr: {:.6}  loss: {:.4} ({:.4})",
            self.lr.value(),
            self.loss.median(),
            self.loss.global_avg()
        )
    }
}

/// `NativeScalerWithGradNormCount`: backward, then (every `update_grad`) the optimizer step,
/// through `torch.cuda.amp.GradScaler` semantics when enabled (CUDA): the loss is multiplied by
/// `scale`, gradients unscaled before the step, the step skipped and `scale` halved on inf/NaN
/// gradients, `scale` doubled after `growth_interval` good steps. On CPU the official GradScaler
/// disables itself ("CUDA is not available. Disabling") and saves an empty state dict; so here.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeScalerWithGradNormCount {
    pub enabled: bool,
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
    pub growth_tracker: i64,
}

impl NativeScalerWithGradNormCount {
    pub fn new(enabled: bool) -> Self {
        NativeScalerWithGradNormCount {
            enabled,
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }

    /// `loss_scaler(loss, optimizer, update_grad=...)`; returns whether the optimizer stepped.
    pub fn call(
        &mut self,
        loss: &Tensor,
        optimizer: &mut impl Optimizer,
        update_grad: bool,
    ) -> bool {
        self.call_clip(loss, optimizer, None, update_grad)
    }

    /// `loss_scaler(loss, optimizer, clip_grad=clip_grad, parameters=model.parameters(),
    /// update_grad=...)`: with `clip_grad`, the (unscaled) gradients are clipped to that total
    /// norm (`clip_grad_norm_`) before the step.
    pub fn call_clip(
        &mut self,
        loss: &Tensor,
        optimizer: &mut impl Optimizer,
        clip_grad: Option<f64>,
        update_grad: bool,
    ) -> bool {
        if !self.enabled {
            loss.backward();
            if update_grad {
                distributed::sync_gradients_or_exit(); // DDP: gradients averaged over ranks
                if let Some(max_norm) = clip_grad {
                    clip_grad_norm_(optimizer.param_groups(), max_norm);
                }
                optimizer.step();
            }
            return update_grad;
        }
        (loss * self.scale).backward();
        if !update_grad {
            return false;
        }
        distributed::sync_gradients_or_exit();
        // unscale_: grads *= 1 / scale (computed in double, as GradScaler), inf/NaN check
        let inv_scale = 1. / self.scale;
        let mut found_inf = false;
        tch::no_grad(|| {
            for p in optimizer.param_groups().iter().flat_map(|g| &g.params) {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(inv_scale as f32 as f64);
                    found_inf |= g.isfinite().all().int64_value(&[]) == 0;
                }
            }
        });
        if !found_inf {
            if let Some(max_norm) = clip_grad {
                clip_grad_norm_(optimizer.param_groups(), max_norm);
            }
            optimizer.step();
        }
        // update
        if found_inf {
            self.scale *= self.backoff_factor;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= self.growth_factor;
                self.growth_tracker = 0;
            }
        }
        !found_inf
    }

    /// `GradScaler.state_dict()`: `{}` when disabled.
    pub fn state_dict(&self) -> Value {
        if !self.enabled {
            return Value::Dict(vec![]);
        }
        let s = |k: &str| Value::Str(k.into());
        Value::Dict(vec![
            (s("scale"), Value::Float(self.scale)),
            (s("growth_factor"), Value::Float(self.growth_factor)),
            (s("backoff_factor"), Value::Float(self.backoff_factor)),
            (s("growth_interval"), Value::Int(self.growth_interval)),
            (s("_growth_tracker"), Value::Int(self.growth_tracker)),
        ])
    }

    pub fn load_state_dict(&mut self, sd: &Value) -> Result<()> {
        if sd.as_dict().is_none_or(|d| d.is_empty()) {
            return Ok(()); // saved by a disabled scaler
        }
        let f = |k: &str| sd.get(k).and_then(Value::as_float);
        let i = |k: &str| sd.get(k).and_then(Value::as_int);
        match (f("scale"), i("_growth_tracker")) {
            (Some(scale), Some(tracker)) => {
                self.scale = scale;
                self.growth_tracker = tracker;
            }
            _ => bail!("scaler state dict without 'scale' / '_growth_tracker'"),
        }
        self.growth_factor = f("growth_factor").unwrap_or(self.growth_factor);
        self.backoff_factor = f("backoff_factor").unwrap_or(self.backoff_factor);
        self.growth_interval = i("growth_interval").unwrap_or(self.growth_interval);
        Ok(())
    }
}

/// `model_without_ddp.state_dict()`: every variable, in PyTorch's `named_parameters` order.
pub fn model_state_dict(vs: &nn::VarStore) -> Value {
    Value::Dict(
        crate::util::optim::named_parameters(vs)
            .into_iter()
            .map(|(k, t)| (Value::Str(k), Value::Tensor(t.detach())))
            .collect(),
    )
}

/// `misc.save_model`: `output_dir/checkpoint-{epoch}.pth` holding `{'model', 'optimizer',
/// 'epoch', 'scaler', 'args'}`; `args` is a plain dict (not an `argparse.Namespace`) so that
/// `torch.load(path, weights_only=True)` reads the whole file. Written atomically.
pub fn save_model(
    output_dir: &std::path::Path,
    args: Value,
    epoch: i64,
    vs: &nn::VarStore,
    optimizer: &impl Optimizer,
    loss_scaler: &NativeScalerWithGradNormCount,
) -> Result<std::path::PathBuf> {
    let checkpoint_path = output_dir.join(format!("checkpoint-{epoch}.pth"));
    let s = |k: &str| Value::Str(k.into());
    let to_save = Value::Dict(vec![
        (s("model"), model_state_dict(vs)),
        (s("optimizer"), optimizer.state_dict()),
        (s("epoch"), Value::Int(epoch)),
        (s("scaler"), loss_scaler.state_dict()),
        (s("args"), args),
    ]);
    crate::util::checkpoint::save(&checkpoint_path, &to_save)?;
    Ok(checkpoint_path)
}

/// `misc.load_model` with `args.resume` set: the model strictly, then (when the file has them)
/// optimizer, scaler and epoch. Returns the epoch to start from (`checkpoint['epoch'] + 1`).
pub fn load_model(
    resume: &std::path::Path,
    vs: &mut nn::VarStore,
    optimizer: &mut impl Optimizer,
    loss_scaler: &mut NativeScalerWithGradNormCount,
) -> Result<Option<i64>> {
    use anyhow::Context;
    let checkpoint = crate::util::checkpoint::load(resume)?;
    // the official reads checkpoint['model']; other containers (timm's, a bare state dict) as
    // timm's load_checkpoint finds them, with no optimizer state to resume
    let model = match checkpoint.get("model") {
        Some(m) => Value::Dict(vec![(Value::Str("model".into()), m.clone())]),
        None => checkpoint.clone(),
    };
    let (sd, source) = crate::util::checkpoint::state_dict_from(model)
        .with_context(|| format!("{}: no state dict", resume.display()))?;
    if source.entry != Some("model") || !source.stripped.is_empty() {
        println!("Resume: state dict read from {source}");
    }
    load_state_dict(vs, sd, true).with_context(|| format!("resuming from {}", resume.display()))?;
    println!("Resume checkpoint {}", resume.display());
    let (Some(opt), Some(epoch)) = (
        checkpoint.get("optimizer"),
        checkpoint.get("epoch").and_then(Value::as_int),
    ) else {
        return Ok(None);
    };
    optimizer
        .load_state_dict(opt)
        .with_context(|| format!("{}: 'optimizer'", resume.display()))?;
    if let Some(scaler) = checkpoint.get("scaler") {
        loss_scaler
            .load_state_dict(scaler)
            .with_context(|| format!("{}: 'scaler'", resume.display()))?;
    }
    println!("With optim & sched!");
    Ok(Some(epoch + 1))
}

/// `str(datetime.timedelta(seconds=int(s)))`.
pub fn timedelta(s: f64) -> String {
    let s = s.max(0.) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let hms = format!("{h}:{m:02}:{s:02}");
    match d {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

/// Python's `repr(float)` (also what `json.dumps` and `"{}".format` write): shortest digits,
/// fixed notation for exponents in [-4, 16), else `1.5e-05` style.
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0. { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if v == 0. || (-4..16).contains(&exp) {
        let s = format!("{v}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod training_tests {
    use super::*;

    #[test]
    fn python_float_repr_and_timedelta() {
        let cases = [
            (3.2552083333333326e-05, "3.2552083333333326e-05"),
            (0.0001, "0.0001"),
            (1.0, "1.0"),
            (2.256708025932312, "2.256708025932312"),
            (1e16, "1e+16"),
            (0.0, "0.0"),
            (f64::NAN, "nan"),
        ];
        for (v, want) in cases {
            assert_eq!(py_float(v), want);
        }
        assert_eq!(timedelta(3725.9), "1:02:05");
        assert_eq!(timedelta(90000.), "1 day, 1:00:00");
    }

    #[test]
    fn smoothed_value_median_is_torch_lower_median() {
        let mut v = SmoothedValue::new(4);
        for x in [5., 1., 4., 2., 3.] {
            v.update(x);
        }
        assert_eq!(v.median(), 2.); // window [1, 4, 2, 3] -> lower middle of 1 2 3 4
        assert_eq!(v.global_avg(), 3.);
        assert_eq!(v.value(), 3.);
    }
}
