//! Port of engine_finetune.py: `evaluate` (and timm.utils `accuracy`, which it calls).
//! `train_one_epoch` comes with fine-tuning.

use std::time::Instant;

use anyhow::{ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};

use crate::models_vit::VisionTransformer;
use crate::util::misc::timedelta;

/// One batch of the validation loader: images [B, 3, H, W] and class indices [B].
pub struct Batch {
    pub images: Tensor,
    pub target: Tensor,
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
/// over the loader, printed as the official `* Acc@1 … Acc@5 … loss …` line. `amp` runs the
/// forward under CUDA autocast (float16) as the official `torch.cuda.amp.autocast()`; a no-op
/// on CPU. With `keep_logits`, also returns every image's logits [N, num_classes] (float32, CPU).
pub fn evaluate(
    data_loader: impl Iterator<Item = Result<Batch>>,
    num_images: usize,
    model: &VisionTransformer,
    device: Device,
    amp: bool,
    keep_logits: bool,
) -> Result<(EvalStats, Option<Tensor>)> {
    let header = "Test:";
    let bar = ProgressBar::new(num_images as u64).with_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta} {msg}",
        )
        .expect("progress template")
        .progress_chars("=> "),
    );
    bar.set_prefix(header);
    let start = Instant::now();

    let (mut loss_sum, mut acc1_sum, mut acc5_sum) = (0f64, 0f64, 0f64);
    let (mut n, mut batches) = (0usize, 0usize);
    let mut logits = Vec::new();
    for batch in data_loader {
        let Batch { images, target } = batch?;
        let images = images.to_device(device);
        let target = target.to_device(device);

        // compute output
        let output = tch::no_grad(|| {
            tch::autocast(amp && device.is_cuda(), || {
                model
                    .forward_t(&images, false)
                    .map(|o| o.to_kind(Kind::Float))
            })
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
