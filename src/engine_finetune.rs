//! Port of engine_finetune.py: `train_one_epoch` (fine-tuning and linear probing share it) and
//! `evaluate` (and timm.utils `accuracy`, which it calls).

use std::time::Instant;

use anyhow::{bail, ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};

use crate::cli::pyfmt::{py_float, timedelta, Stat};
use crate::timm::loss::Criterion;
use crate::timm::mixup::Mixup;
use crate::torch::amp::{self, Precision};
use crate::torch::data_loader::{Batch, DataLoaderVal};
use crate::torch::distributed;
use crate::torch::optim::Optimizer;
use crate::torch::tensorboard::{epoch_1000x, SummaryWriter};
use crate::util::lr_sched::{self, LrArgs};
use crate::util::misc::{
    self, MetricLogger, NativeScalerWithGradNormCount, SmoothedValue, Step, TrainStats,
};

/// `train_one_epoch(model, criterion, data_loader, optimizer, device, epoch, loss_scaler,
/// max_norm, mixup_fn, log_writer, args=args)`. `forward(samples, train)` is `model(samples)` in
/// train mode; `data_loader` yields the epoch's batches (its length is `len(data_loader)`). The
/// forward runs under `precision`'s autocast (float32 weights, gradients and optimizer state;
/// `loss_scaler` enabled for fp16). `log_writer` (rank 0) gets `loss` (the mean over ranks) and
/// `lr` (the largest group lr) once per optimizer step.
#[allow(clippy::too_many_arguments)]
pub fn train_one_epoch(
    forward: &dyn Fn(&Tensor) -> Result<Tensor>,
    criterion: Criterion,
    data_loader: impl ExactSizeIterator<Item = Result<Batch>>,
    optimizer: &mut impl Optimizer,
    device: Device,
    precision: Precision,
    epoch: i64,
    loss_scaler: &mut NativeScalerWithGradNormCount,
    max_norm: Option<f64>,
    mixup_fn: Option<&Mixup>,
    mut log_writer: Option<&mut SummaryWriter>,
    accum_iter: usize,
    lr_args: &LrArgs,
) -> Result<TrainStats> {
    let metric_logger = MetricLogger::new("  ");
    metric_logger.add_meter(
        "lr",
        SmoothedValue::with_fmt(1, |m| format!("{:.6}", m.value())),
    );
    let header = format!("Epoch: [{epoch}]");
    let print_freq = 20;

    let len = data_loader.len();
    let mut steps = Vec::with_capacity(len); // not in the reference

    optimizer.zero_grad();

    if let Some(w) = &log_writer {
        println!("log_dir: {}", w.log_dir.display());
    }

    let batches = metric_logger.log_every(data_loader, print_freq, &header);
    for (data_iter_step, batch) in batches.enumerate() {
        let Batch { images, target } = batch?;

        // we use a per iteration (instead of per epoch) lr scheduler
        let epoch_f = data_iter_step as f64 / len as f64 + epoch as f64;
        if data_iter_step % accum_iter == 0 {
            lr_sched::adjust_learning_rate(optimizer.param_groups(), epoch_f, lr_args);
        }

        let mut samples = images.to_device(device);
        let mut targets = target.to_device(device);
        if let Some(mixup_fn) = mixup_fn {
            targets = mixup_fn.call(&mut samples, &targets);
        }

        // with torch.cuda.amp.autocast(): any device, `precision`'s dtype; the criterion runs on
        // float32 logits
        let loss = {
            let _amp = amp::autocast(device, precision);
            criterion.forward(&forward(&samples)?.to_kind(Kind::Float), &targets)
        };

        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            bail!("Loss is {}, stopping training", py_float(loss_value));
        }

        let loss = loss / accum_iter as f64;
        let update_grad = (data_iter_step + 1) % accum_iter == 0;
        loss_scaler.call_clip(&loss, optimizer, max_norm, update_grad);
        if update_grad {
            optimizer.zero_grad();
        }

        metric_logger.update("loss", loss_value);
        let max_lr = optimizer
            .param_groups()
            .iter()
            .map(|g| g.lr)
            .fold(0., f64::max);
        metric_logger.update("lr", max_lr);

        if update_grad {
            // on every rank (a collective); rank 0 logs it
            let loss_value_reduce = misc::all_reduce_mean(loss_value)?;
            if let Some(w) = log_writer.as_deref_mut() {
                // We use epoch_1000x as the x-axis in tensorboard. This calibrates different
                // curves when batch size changes.
                let epoch_1000x = epoch_1000x(epoch_f);
                w.add_scalar("loss", loss_value_reduce, epoch_1000x)?;
                w.add_scalar("lr", max_lr, epoch_1000x)?;
            }
        }
        steps.push(Step {
            epoch: epoch_f,
            loss: loss_value,
            lr: max_lr,
        });
    }

    // gather the stats from all processes
    metric_logger.synchronize_between_processes()?;
    println!("Averaged stats: {metric_logger}");
    Ok(TrainStats::new(&metric_logger, steps))
}

/// What `evaluate` returns: the `global_avg` of each MetricLogger meter, as the official code
/// computes them. `acc1`/`acc5` are weighted by batch size (so: over images); `loss` is
/// `metric_logger.update(loss=loss.item())` with n=1, the mean of the per-batch mean losses,
/// which equals the mean over images when the batch size divides the dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    pub acc1: f64,
    pub acc5: f64,
    pub loss: f64,
    pub images: usize,
}

impl EvalStats {
    /// `{f'{prefix}{k}': v for k, v in test_stats.items()}`, for the `log.txt` line.
    pub fn log_items(&self, prefix: &str) -> Vec<(String, Stat)> {
        vec![
            (format!("{prefix}loss"), Stat::Float(self.loss)),
            (format!("{prefix}acc1"), Stat::Float(self.acc1)),
            (format!("{prefix}acc5"), Stat::Float(self.acc5)),
        ]
    }
}

/// timm.utils.accuracy: the percentage of rows whose target is among the `k` largest outputs,
/// for each k in `topk` (`maxk` clipped to the number of classes).
pub fn accuracy(output: &Tensor, target: &Tensor, topk: &[i64]) -> Vec<f64> {
    let maxk = (*topk.iter().max().unwrap_or(&1)).min(output.size()[1]);
    let batch_size = target.size()[0];
    let (_, pred) = output.topk(maxk, 1, true, true);
    let pred = pred.tr(); // [maxk, B]
    let correct = pred.eq_tensor(&target.reshape([1, -1]).expand_as(&pred));
    topk.iter()
        .map(|&k| {
            let c = correct.narrow(0, 0, k.min(maxk)).reshape([-1]);
            // float32 arithmetic, as `.float().sum(0) * 100. / batch_size` on a tensor
            let acc = c.to_kind(Kind::Float).sum(Kind::Float) * 100. / batch_size as f64;
            acc.double_value(&[])
        })
        .collect()
}

/// `@torch.no_grad() evaluate(data_loader, model, device)`: cross-entropy loss, Acc@1 and Acc@5
/// over the loader, printed as the official `* Acc@1 … Acc@5 … loss …` line. The forward runs
/// under `precision`'s autocast (the official `torch.cuda.amp.autocast()` is fp16 on CUDA); its
/// logits are cast back to float32 for the loss and the accuracy. With `keep_logits`, also
/// returns every image's logits [N, num_classes] (float32, CPU).
pub fn evaluate(
    data_loader: &DataLoaderVal,
    model: &dyn Fn(&Tensor) -> Result<Tensor>,
    device: Device,
    precision: Precision,
    keep_logits: bool,
) -> Result<(EvalStats, Option<Tensor>)> {
    evaluate_as("Test:", data_loader, model, device, precision, keep_logits)
}

/// Not in the reference: [`evaluate`] with another header than `Test:` on its progress bar and
/// time line (which set of several is evaluated).
pub fn evaluate_as(
    header: &str,
    data_loader: &DataLoaderVal,
    model: &dyn Fn(&Tensor) -> Result<Tensor>,
    device: Device,
    precision: Precision,
    keep_logits: bool,
) -> Result<(EvalStats, Option<Tensor>)> {
    let bar = ProgressBar::new(data_loader.num_images() as u64).with_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta} {msg}",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    bar.set_prefix(header.to_string());
    let start = Instant::now();

    let (mut loss_sum, mut acc1_sum, mut acc5_sum) = (0f64, 0f64, 0f64);
    let (mut n, mut batches) = (0usize, 0usize);
    let mut logits = Vec::new();
    for batch in data_loader.iter()? {
        let Batch { images, target } = batch?;
        let images = images.to_device(device);
        let target = target.to_device(device);

        // compute output
        let output = tch::no_grad(|| {
            let _amp = amp::autocast(device, precision);
            model(&images).map(|o| o.to_kind(Kind::Float))
        })?;
        ensure!(
            output.size()[0] == target.size()[0],
            "model returned {:?} for {} targets",
            output.size(),
            target.size()[0]
        );
        let loss = output.cross_entropy_for_logits(&target);

        let acc = accuracy(&output, &target, &[1, 5]);

        let batch_size = images.size()[0] as usize;
        loss_sum += loss.double_value(&[]);
        acc1_sum += acc[0] * batch_size as f64;
        acc5_sum += acc[1] * batch_size as f64;
        n += batch_size;
        batches += 1;
        if keep_logits {
            logits.push(output.to_device(Device::Cpu));
        }
        bar.set_message(format!(
            "acc1 {:.3} acc5 {:.3} loss {:.4}",
            acc1_sum / n as f64,
            acc5_sum / n as f64,
            loss_sum / batches as f64
        ));
        bar.inc(batch_size as u64);
    }
    bar.finish_and_clear();
    if distributed::dist_eval() {
        // gather the stats from all processes (MetricLogger.synchronize_between_processes)
        let t =
            distributed::all_reduce_sum(&[loss_sum, batches as f64, acc1_sum, acc5_sum, n as f64])?;
        (loss_sum, acc1_sum, acc5_sum) = (t[0], t[2], t[3]);
        (batches, n) = (t[1] as usize, t[4] as usize);
    }
    ensure!(n > 0, "the validation set is empty");
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{header} Total time: {} ({:.4} s / it, {:.1} images/s)",
        timedelta(elapsed),
        elapsed / batches.max(1) as f64,
        n as f64 / elapsed
    );
    let stats = EvalStats {
        acc1: acc1_sum / n as f64,
        acc5: acc5_sum / n as f64,
        loss: loss_sum / batches as f64,
        images: n,
    };
    println!(
        "* Acc@1 {:.3} Acc@5 {:.3} loss {:.3}",
        stats.acc1, stats.acc5, stats.loss
    );
    let logits = keep_logits.then(|| Tensor::cat(&logits, 0));
    Ok((stats, logits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_like_timm() {
        let output = Tensor::from_slice(&[
            0.1f32, 0.9, 0.0, 0.0, 0.0, 0.0, // target 1: top-1
            0.5, 0.1, 0.2, 0.3, 0.4, 0.0, // target 5: rank 6, missed by top-5
            0.0, 0.1, 0.2, 0.3, 0.4, 0.5, // target 1: rank 5, top-5 only
        ])
        .view([3, 6]);
        let target = Tensor::from_slice(&[1i64, 5, 1]);
        let acc = accuracy(&output, &target, &[1, 5]);
        assert!((acc[0] - 100. / 3.).abs() < 1e-4 && (acc[1] - 200. / 3.).abs() < 1e-4);
        // fewer classes than k: maxk is clipped, every target is within the top-2
        let acc = accuracy(
            &output.narrow(1, 0, 2),
            &Tensor::from_slice(&[1i64, 0, 1]),
            &[1, 5],
        );
        assert_eq!(acc, [100., 100.]);
    }
}
