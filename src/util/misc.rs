//! Port of util/misc.py: `SmoothedValue` and `MetricLogger` (with `log_every`, the loop both
//! engines run), the distributed helpers (torch.distributed's part is src/torch/distributed/mod.rs),
//! `NativeScalerWithGradNormCount`, `save_model` / `load_model`, `all_reduce_mean`; then, not in
//! misc.py, what main_*.py write inline and every entry point shares (`torch.device`, appending
//! to `log.txt`, `args` as saved in checkpoints). Python's number formatting is util/pyfmt.rs.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

use crate::cli::pyfmt::{timedelta, Stat};
use crate::torch::amp;
use crate::torch::distributed;
pub use crate::torch::distributed::{
    get_rank, get_world_size, init_distributed_mode, is_main_process,
};
use crate::torch::optim::{by_device_and_dtype, Optimizer, ParamGroup};
use crate::torch::serialization;
use crate::torch::serialization::pickle::Value;
use crate::torch::state_dict::{load_state_dict, state_dict};

/// Track a series of values and provide access to smoothed values over a window or the global
/// series average.
#[derive(Debug, Clone)]
pub struct SmoothedValue {
    pub deque: VecDeque<f64>,
    pub window_size: usize,
    pub total: f64,
    pub count: usize,
    /// `fmt`, default `"{median:.4f} ({global_avg:.4f})"`
    pub fmt: fn(&SmoothedValue) -> String,
}

impl SmoothedValue {
    pub fn new(window_size: usize) -> Self {
        SmoothedValue {
            deque: VecDeque::with_capacity(window_size),
            window_size,
            total: 0.,
            count: 0,
            fmt: |m| format!("{:.4} ({:.4})", m.median(), m.global_avg()),
        }
    }

    /// `SmoothedValue(window_size, fmt=...)`.
    pub fn with_fmt(window_size: usize, fmt: fn(&SmoothedValue) -> String) -> Self {
        SmoothedValue {
            fmt,
            ..SmoothedValue::new(window_size)
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

    /// Warning: does not synchronize the deque!
    pub fn synchronize_between_processes(&mut self) -> Result<()> {
        let t = distributed::all_reduce_sum(&[self.count as f64, self.total])?;
        self.count = t[0] as usize;
        self.total = t[1];
        Ok(())
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
}

impl fmt::Display for SmoothedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&(self.fmt)(self))
    }
}

/// `MetricLogger(delimiter)`: named meters in the order they were added, updated through `&self`
/// so that the loop body can update them while [`MetricLogger::log_every`] holds the logger.
#[derive(Debug)]
pub struct MetricLogger {
    pub meters: RefCell<Vec<(String, SmoothedValue)>>,
    pub delimiter: &'static str,
}

impl MetricLogger {
    pub fn new(delimiter: &'static str) -> Self {
        MetricLogger {
            meters: RefCell::new(Vec::new()),
            delimiter,
        }
    }

    /// `metric_logger.update(name=value)`: a meter not added yet is `SmoothedValue()`.
    pub fn update(&self, name: &str, value: f64) {
        let mut meters = self.meters.borrow_mut();
        match meters.iter_mut().find(|(n, _)| n == name) {
            Some((_, meter)) => meter.update(value),
            None => {
                let mut meter = SmoothedValue::new(20);
                meter.update(value);
                meters.push((name.to_string(), meter));
            }
        }
    }

    /// `metric_logger.<name>.global_avg` (NaN for a meter never updated).
    pub fn global_avg(&self, name: &str) -> f64 {
        let meters = self.meters.borrow();
        let meter = meters.iter().find(|(n, _)| n == name);
        meter.map_or(f64::NAN, |(_, m)| m.global_avg())
    }

    pub fn synchronize_between_processes(&self) -> Result<()> {
        let mut meters = self.meters.borrow_mut();
        meters
            .iter_mut()
            .try_for_each(|(_, m)| m.synchronize_between_processes())
    }

    pub fn add_meter(&self, name: &str, meter: SmoothedValue) {
        self.meters.borrow_mut().push((name.to_string(), meter));
    }

    /// `log_every(iterable, print_freq, header)`: yields `iterable`'s items; after the body of
    /// every `print_freq`-th item (and the last) prints `header  [i/len]  eta: ..  meters  time:
    /// ..  data: ..`, and when exhausted `header Total time: .. (.. s / it)`.
    pub fn log_every<I: ExactSizeIterator>(
        &self,
        iterable: I,
        print_freq: usize,
        header: &str,
    ) -> LogEvery<'_, I> {
        let now = Instant::now();
        LogEvery {
            logger: self,
            len: iterable.len(),
            iterable,
            print_freq,
            header: header.to_string(),
            i: 0,
            start_time: now,
            end: now,
            iter_time: SmoothedValue::with_fmt(20, |m| format!("{:.4}", m.avg())),
            data_time: SmoothedValue::with_fmt(20, |m| format!("{:.4}", m.avg())),
            yielded: false,
            done: false,
        }
    }
}

impl fmt::Display for MetricLogger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meters = self.meters.borrow();
        let loss_str: Vec<String> = meters.iter().map(|(n, m)| format!("{n}: {m}")).collect();
        f.write_str(&loss_str.join(self.delimiter))
    }
}

/// The generator `MetricLogger.log_every` returns: the code after its `yield` runs at the next
/// call of `next`.
pub struct LogEvery<'a, I> {
    logger: &'a MetricLogger,
    iterable: I,
    len: usize,
    print_freq: usize,
    header: String,
    i: usize,
    start_time: Instant,
    end: Instant,
    iter_time: SmoothedValue,
    data_time: SmoothedValue,
    yielded: bool,
    done: bool,
}

impl<I: ExactSizeIterator> Iterator for LogEvery<'_, I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        if std::mem::take(&mut self.yielded) {
            self.iter_time.update(self.end.elapsed().as_secs_f64());
            if self.i.is_multiple_of(self.print_freq) || self.i == self.len - 1 {
                let eta_seconds = self.iter_time.global_avg() * (self.len - self.i) as f64;
                let width = self.len.to_string().len();
                let d = self.logger.delimiter;
                println!(
                    "{}{d}[{:>width$}/{}]{d}eta: {}{d}{}{d}time: {}{d}data: {}",
                    self.header,
                    self.i,
                    self.len,
                    timedelta(eta_seconds),
                    self.logger,
                    self.iter_time,
                    self.data_time
                );
            }
            self.i += 1;
            self.end = Instant::now();
        }
        match self.iterable.next() {
            Some(obj) => {
                self.data_time.update(self.end.elapsed().as_secs_f64());
                self.yielded = true;
                Some(obj)
            }
            None => {
                if !std::mem::replace(&mut self.done, true) {
                    let total_time = self.start_time.elapsed().as_secs_f64();
                    println!(
                        "{} Total time: {} ({:.4} s / it)",
                        self.header,
                        timedelta(total_time),
                        total_time / self.len.max(1) as f64
                    );
                }
                None
            }
        }
    }
}

/// What the engines' `train_one_epoch` return: `{k: meter.global_avg for k, meter in
/// metric_logger.meters.items()}` (`lr`, `loss`) and, not in the reference, every iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStats {
    pub lr: f64,
    pub loss: f64,
    pub steps: Vec<Step>,
}

/// One iteration, as the tensorboard scalars of the official loops record it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub epoch: f64, // data_iter_step / len(data_loader) + epoch
    pub loss: f64,
    pub lr: f64,
}

impl TrainStats {
    /// The meters of `metric_logger` (synchronized) and the iterations seen.
    pub fn new(metric_logger: &MetricLogger, steps: Vec<Step>) -> Self {
        TrainStats {
            lr: metric_logger.global_avg("lr"),
            loss: metric_logger.global_avg("loss"),
            steps,
        }
    }

    /// `{f'{prefix}{k}': v for k, v in train_stats.items()}`, for the `log.txt` line.
    pub fn log_items(&self, prefix: &str) -> Vec<(String, Stat)> {
        vec![
            (format!("{prefix}lr"), Stat::Float(self.lr)),
            (format!("{prefix}loss"), Stat::Float(self.loss)),
        ]
    }
}

// init_distributed_mode, is_main_process, get_rank, get_world_size: torch.distributed's role,
// on c10d (src/torch/distributed/mod.rs), re-exported above.

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
        let found_inf = self.unscale_(optimizer);
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

    /// `GradScaler.unscale_(optimizer)`: every gradient times `1 / scale` (the reciprocal taken in
    /// double, then float32, as GradScaler does), and whether any of them holds an inf or a NaN.
    /// One `_amp_foreach_non_finite_check_and_unscale_` kernel per device and dtype and one read
    /// back to the host per device, as `GradScaler.step` reads its `found_inf`, instead of a
    /// check and a host synchronisation per parameter.
    pub fn unscale_(&self, optimizer: &mut impl Optimizer) -> bool {
        let grads: Vec<Tensor> = optimizer
            .param_groups()
            .iter()
            .flat_map(|g| &g.params)
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        let inv_scale = (1. / self.scale) as f32;
        let mut devices: Vec<(Device, Tensor, Tensor)> = Vec::new(); // found_inf, inv_scale
        tch::no_grad(|| {
            let parts = by_device_and_dtype(grads.len(), |i| (grads[i].device(), grads[i].kind()));
            for part in parts {
                let device = grads[part[0]].device();
                if !devices.iter().any(|(d, _, _)| *d == device) {
                    devices.push((
                        device,
                        Tensor::zeros([1], (Kind::Float, device)),
                        Tensor::from_slice(&[inv_scale]).to_device(device),
                    ));
                }
                let (_, found_inf, inv) = devices
                    .iter()
                    .find(|(d, _, _)| *d == device)
                    .expect("added above");
                let part: Vec<&Tensor> = part.iter().map(|&i| &grads[i]).collect();
                amp::foreach_non_finite_check_and_unscale_(&part, found_inf, inv);
            }
        });
        devices
            .iter()
            .any(|(_, found_inf, _)| found_inf.double_value(&[0]) != 0.)
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

/// `misc.save_model`: `output_dir/checkpoint-{epoch}.pth` holding `{'model', 'optimizer',
/// 'epoch', 'scaler', 'args'}`; `args` is a plain dict (not an `argparse.Namespace`) so that
/// `torch.load(path, weights_only=True)` reads the whole file. Written atomically.
pub fn save_model(
    output_dir: &Path,
    args: Value,
    epoch: i64,
    vs: &nn::VarStore,
    optimizer: &impl Optimizer,
    loss_scaler: &NativeScalerWithGradNormCount,
) -> Result<PathBuf> {
    let checkpoint_path = output_dir.join(format!("checkpoint-{epoch}.pth"));
    let s = |k: &str| Value::Str(k.into());
    let to_save = Value::Dict(vec![
        (s("model"), state_dict(vs)),
        (s("optimizer"), optimizer.state_dict()),
        (s("epoch"), Value::Int(epoch)),
        (s("scaler"), loss_scaler.state_dict()),
        (s("args"), args),
    ]);
    serialization::save(&checkpoint_path, &to_save)?;
    Ok(checkpoint_path)
}

/// `misc.load_model` with `args.resume` set: the model strictly, then (when the file has them)
/// optimizer, scaler and epoch. Returns the epoch to start from (`checkpoint['epoch'] + 1`).
pub fn load_model(
    resume: &Path,
    vs: &mut nn::VarStore,
    optimizer: &mut impl Optimizer,
    loss_scaler: &mut NativeScalerWithGradNormCount,
) -> Result<Option<i64>> {
    let checkpoint = serialization::load(resume)?;
    // the official reads checkpoint['model']; other containers (timm's, a bare state dict) as
    // timm's load_checkpoint finds them, with no optimizer state to resume
    let model = match checkpoint.get("model") {
        Some(m) => Value::Dict(vec![(Value::Str("model".into()), m.clone())]),
        None => checkpoint.clone(),
    };
    let (sd, source) = serialization::state_dict_from(model)
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

/// `all_reduce_mean(x)`: the mean of `x` over the ranks (a collective: every rank calls it).
pub fn all_reduce_mean(x: f64) -> Result<f64> {
    Ok(distributed::all_reduce_sum(&[x])?[0] / get_world_size() as f64)
}

#[cfg(test)]
mod training_tests {
    use super::*;

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
