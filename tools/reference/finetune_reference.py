#!/usr/bin/env python3
"""References for tests/training/finetune_steps.rs (written from the official main_finetune.py /
engine_finetune.py / util/lr_decay.py / util/lr_sched.py semantics, on timm's ViT under the
official keys).

Usage:
  finetune_reference.py lrd OUT.json
      util/lr_decay.param_groups_lrd on timm's vit_base_patch16 (global pool), weight_decay 0.05,
      no_weight_decay_list = model.no_weight_decay(), layer_decay 0.65: for every parameter in
      named_parameters order its group name, lr_scale and weight_decay; and the group order.
  finetune_reference.py steps OUT.safetensors
      fine-tuning iterations of engine_finetune.train_one_epoch on one process (CPU, GradScaler
      disabled, drop path 0, no augmentation): the initial weights (init.KEY), the batches, and
      per case TAG the per-iteration lr and loss and the weights after (TAG.w.KEY).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/
from make_parity_fixtures import randomize, save_io, timm_vit  # noqa: E402
from official import adjust_learning_rate, param_groups_lrd  # noqa: E402


def lrd(out):
    model = timm_vit("vit_base_patch16", 224, True)
    _, names = param_groups_lrd(model, 0.05, model.no_weight_decay(), 0.65)
    table = {}
    for g, spec in names.items():
        for n in spec["params"]:
            # floats as repr strings: exact whatever the JSON reader
            table[n] = {"group": g, "lr_scale": repr(spec["lr_scale"]), "weight_decay": repr(spec["weight_decay"])}
    order = [n for n, _ in model.named_parameters()]
    with open(out, "w") as f:
        json.dump({"params": table, "order": order, "groups": list(names)}, f, indent=1)


# (tag, iterations, accum_iter, global_pool, smoothing, clip_grad, epoch, soft targets)
CASES = [
    ("s1_a1_gp_ls", 1, 1, True, 0.1, None, 1, False),
    ("s3_a1_gp_ls", 3, 1, True, 0.1, None, 3, False),
    ("s3_a1_cls_ce_clip", 3, 1, False, 0.0, 0.05, 1, False),
    ("s4_a2_gp_soft_clip", 4, 2, True, 0.0, 1.0, 3, True),
]
LR, MIN_LR, WARMUP_EPOCHS, EPOCHS, WEIGHT_DECAY, LAYER_DECAY, BATCH, CLASSES = 1e-3, 1e-6, 2, 4, 0.05, 0.75, 4, 10


class Args:
    lr, min_lr, warmup_epochs, epochs = LR, MIN_LR, WARMUP_EPOCHS, EPOCHS


def steps(out):
    import torch
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    gen = torch.Generator().manual_seed(3)
    n_iter = max(c[1] for c in CASES)
    tensors = {}
    for i in range(n_iter):
        tensors[f"batch{i}.images"] = torch.randn(BATCH, 3, 32, 32, generator=gen)
        tensors[f"batch{i}.target"] = torch.randint(0, CLASSES, (BATCH,), generator=gen)
        soft = torch.rand(BATCH, CLASSES, generator=gen)
        tensors[f"batch{i}.soft"] = soft / soft.sum(1, keepdim=True)
    for gp in (True, False):
        init = randomize(timm_vit("vit_tiny_patch4", 32, gp, CLASSES).state_dict(), gen)
        tensors.update({f"init.{'gp' if gp else 'cls'}.{k}": v for k, v in init.items()})
    for tag, iters, accum_iter, gp, smoothing, clip_grad, epoch, soft in CASES:
        model = timm_vit("vit_tiny_patch4", 32, gp, CLASSES)
        model.load_state_dict({k[len("init.gp."):] if gp else k[len("init.cls."):]: v
                               for k, v in tensors.items() if k.startswith("init.gp." if gp else "init.cls.")})
        model.train(True)
        groups, _ = param_groups_lrd(model, WEIGHT_DECAY, model.no_weight_decay(), LAYER_DECAY)
        optimizer = torch.optim.AdamW(groups, lr=LR)
        if soft:
            criterion = SoftTargetCrossEntropy()
        elif smoothing > 0.:
            criterion = LabelSmoothingCrossEntropy(smoothing=smoothing)
        else:
            criterion = torch.nn.CrossEntropyLoss()
        optimizer.zero_grad()
        lrs, losses = [], []
        for it in range(iters):
            if it % accum_iter == 0:
                adjust_learning_rate(optimizer, it / iters + epoch, Args)
            samples = tensors[f"batch{it}.images"]
            targets = tensors[f"batch{it}.soft" if soft else f"batch{it}.target"]
            outputs = model(samples)
            loss = criterion(outputs, targets)
            losses.append(loss.item())
            loss /= accum_iter
            loss.backward()
            if (it + 1) % accum_iter == 0:
                if clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
                optimizer.zero_grad()
            lrs.append(max(g["lr"] for g in optimizer.param_groups))
        tensors[f"{tag}.lr"] = torch.tensor(lrs, dtype=torch.float64)
        tensors[f"{tag}.loss"] = torch.tensor(losses, dtype=torch.float64)
        for k, v in model.state_dict().items():
            tensors[f"{tag}.w.{k}"] = v
    save_io(out, tensors)


if __name__ == "__main__":
    {"lrd": lrd, "steps": steps}[sys.argv[1]](sys.argv[2])
