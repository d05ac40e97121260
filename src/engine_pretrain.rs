//! Port of engine_pretrain.py: one epoch of MAE pre-training.

use std::time::Instant;

use anyhow::{bail, Result};
use tch::{Device, Tensor};

use crate::main_pretrain::Args;
use crate::models_mae::MaskedAutoencoderViT;
use crate::util::amp::{self, Precision};
use crate::util::distributed;
use crate::util::lr_sched;
use crate::util::misc::{
    py_float, timedelta, MetricLogger, NativeScalerWithGradNormCount, SmoothedValue,
};
use crate::util::optim::AdamW;
use crate::util::tensorboard::{epoch_1000x, SummaryWriter};

/// One iteration, as the tensorboard scalars of the official loop record it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub epoch: f64, // data_iter_step / len(data_loader) + epoch
    pub loss: f64,
    pub lr: f64,
}

/// What `train_one_epoch` returns: `{k: meter.global_avg}` (`lr`, `loss`) and every step.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStats {
    pub lr: f64,
    pub loss: f64,
    pub steps: Vec<Step>,
}

/// `train_one_epoch(model, data_loader, optimizer, device, epoch, loss_scaler, log_writer,
/// args=args)`; `data_loader` yields the batches of the epoch (its length is `len(data_loader)`).
/// The forward runs under `--precision`'s autocast; weights, gradients and AdamW state stay
/// float32, and `loss_scaler` scales the loss when it is enabled (fp16). `log_writer` (rank 0)
/// gets `train_loss` (the mean over ranks) and `lr` once per optimizer step.
#[allow(clippy::too_many_arguments)]
pub fn train_one_epoch(
    model: &MaskedAutoencoderViT,
    data_loader: impl ExactSizeIterator<Item = Result<Tensor>>,
    optimizer: &mut AdamW,
    device: Device,
    epoch: i64,
    loss_scaler: &mut NativeScalerWithGradNormCount,
    mut log_writer: Option<&mut SummaryWriter>,
    args: &Args,
) -> Result<TrainStats> {
    let mut metric_logger = MetricLogger::default();
    let header = format!("Epoch: [{epoch}]");
    let print_freq = 20;
    let accum_iter = args.accum_iter;
    let len = data_loader.len();
    let mut steps = Vec::with_capacity(len);
    let precision = Precision::for_device(args.precision, device)?;

    optimizer.zero_grad();

    if let Some(w) = &log_writer {
        println!("log_dir: {}", w.log_dir.display());
    }

    // MetricLogger.log_every
    let (start_time, mut end) = (Instant::now(), Instant::now());
    let (mut iter_time, mut data_time) = (SmoothedValue::new(20), SmoothedValue::new(20));
    let width = len.to_string().len();
    for (data_iter_step, samples) in data_loader.enumerate() {
        let samples = samples?;
        data_time.update(end.elapsed().as_secs_f64());

        // we use a per iteration (instead of per epoch) lr scheduler
        let epoch_f = data_iter_step as f64 / len as f64 + epoch as f64;
        if data_iter_step % accum_iter == 0 {
            lr_sched::adjust_learning_rate(&mut optimizer.param_groups, epoch_f, &args.lr_args());
        }

        let samples = samples.to_device(device);
        // with torch.cuda.amp.autocast(): any device, --precision's dtype; the loss is float32
        // DDP: this rank's rows of the global batch's masking noise (None in one process)
        let noise = distributed::global_batch_noise(
            samples.size()[0],
            model.patch_embed.num_patches,
            device,
        );
        let loss = {
            let _amp = amp::autocast(device, precision);
            (model.forward_with_noise(&samples, args.mask_ratio, noise.as_ref())?).0
        };

        let loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            bail!("Loss is {}, stopping training", py_float(loss_value));
        }

        let loss = loss / accum_iter as f64;
        loss_scaler.call(&loss, optimizer, (data_iter_step + 1) % accum_iter == 0);
        if (data_iter_step + 1) % accum_iter == 0 {
            optimizer.zero_grad();
        }

        metric_logger.loss.update(loss_value);
        let lr = optimizer.param_groups[0].lr;
        metric_logger.lr.update(lr);

        if (data_iter_step + 1) % accum_iter == 0 {
            // misc.all_reduce_mean(loss_value), on every rank (a collective); rank 0 logs it
            let loss_value_reduce = distributed::all_reduce_sum(&[loss_value])?[0]
                / distributed::get_world_size() as f64;
            if let Some(w) = log_writer.as_deref_mut() {
                // We use epoch_1000x as the x-axis in tensorboard. This calibrates different
                // curves when batch size changes.
                let step = epoch_1000x(epoch_f);
                w.add_scalar("train_loss", loss_value_reduce, step)?;
                w.add_scalar("lr", lr, step)?;
            }
        }
        steps.push(Step {
            epoch: epoch_f,
            loss: loss_value,
            lr,
        });

        iter_time.update(end.elapsed().as_secs_f64());
        if data_iter_step % print_freq == 0 || data_iter_step == len - 1 {
            let eta = iter_time.global_avg() * (len - data_iter_step) as f64;
            println!(
                "{header}  [{data_iter_step:>width$}/{len}]  eta: {}  {metric_logger}  time: {:.4}  data: {:.4}  img/s: {:.1}",
                timedelta(eta),
                iter_time.avg(),
                data_time.avg(),
                samples.size()[0] as f64 / iter_time.avg(),
            );
        }
        end = Instant::now();
    }
    let total_time = start_time.elapsed().as_secs_f64();
    println!(
        "{header} Total time: {} ({:.4} s / it)",
        timedelta(total_time),
        total_time / len as f64
    );
    // gather the stats from all processes
    metric_logger.synchronize_between_processes()?;
    println!("Averaged stats: {metric_logger}");
    Ok(TrainStats {
        lr: metric_logger.lr.global_avg(),
        loss: metric_logger.loss.global_avg(),
        steps,
    })
}
