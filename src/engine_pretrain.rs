//! Port of engine_pretrain.py: one epoch of MAE pre-training.

use anyhow::{bail, Result};
use tch::{Device, Tensor};

use crate::cli::pyfmt::py_float;
use crate::models_mae::MaskedAutoencoderViT;
use crate::torch::amp::{self, Precision};
use crate::torch::distributed;
use crate::torch::optim::AdamW;
use crate::torch::tensorboard::{epoch_1000x, SummaryWriter};
use crate::util::lr_sched::{self, LrArgs};
use crate::util::misc::{
    self, MetricLogger, NativeScalerWithGradNormCount, SmoothedValue, Step, TrainStats,
};

/// The `args` fields `train_one_epoch` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Args {
    pub accum_iter: usize,
    pub mask_ratio: f64,
    /// `--precision` resolved for the device (the official: `torch.cuda.amp.autocast()`)
    pub precision: Precision,
    /// what `lr_sched.adjust_learning_rate` reads
    pub lr: LrArgs,
}

/// `train_one_epoch(model, data_loader, optimizer, device, epoch, loss_scaler, log_writer,
/// args=args)`; `data_loader` yields the batches of the epoch (its length is `len(data_loader)`).
/// The forward runs under `args.precision`'s autocast; weights, gradients and AdamW state stay
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
    let metric_logger = MetricLogger::new("  ");
    metric_logger.add_meter(
        "lr",
        SmoothedValue::with_fmt(1, |m| format!("{:.6}", m.value())),
    );
    let header = format!("Epoch: [{epoch}]");
    let print_freq = 20;

    let accum_iter = args.accum_iter;
    let len = data_loader.len();
    let mut steps = Vec::with_capacity(len); // not in the reference: train_steps.csv

    optimizer.zero_grad();

    if let Some(w) = &log_writer {
        println!("log_dir: {}", w.log_dir.display());
    }

    let batches = metric_logger.log_every(data_loader, print_freq, &header);
    for (data_iter_step, samples) in batches.enumerate() {
        let samples = samples?;

        // we use a per iteration (instead of per epoch) lr scheduler
        let epoch_f = data_iter_step as f64 / len as f64 + epoch as f64;
        if data_iter_step % accum_iter == 0 {
            lr_sched::adjust_learning_rate(&mut optimizer.param_groups, epoch_f, &args.lr);
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
            let _amp = amp::autocast(device, args.precision);
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

        metric_logger.update("loss", loss_value);

        let lr = optimizer.param_groups[0].lr;
        metric_logger.update("lr", lr);

        if (data_iter_step + 1) % accum_iter == 0 {
            // on every rank (a collective); rank 0 logs it
            let loss_value_reduce = misc::all_reduce_mean(loss_value)?;
            if let Some(w) = log_writer.as_deref_mut() {
                // We use epoch_1000x as the x-axis in tensorboard. This calibrates different
                // curves when batch size changes.
                let epoch_1000x = epoch_1000x(epoch_f);
                w.add_scalar("train_loss", loss_value_reduce, epoch_1000x)?;
                w.add_scalar("lr", lr, epoch_1000x)?;
            }
        }
        steps.push(Step {
            epoch: epoch_f,
            loss: loss_value,
            lr,
        });
    }

    // gather the stats from all processes
    metric_logger.synchronize_between_processes()?;
    println!("Averaged stats: {metric_logger}");
    Ok(TrainStats::new(&metric_logger, steps))
}
