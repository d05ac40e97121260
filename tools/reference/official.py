"""The pieces of the official recipe (facebookresearch/mae) that several references in this folder
run, restated once: util/lr_sched.py, util/lr_decay.py, util/lars.py, the eval transform of
util/datasets.py; and the state the parity tests compare after a run of AdamW steps.

Nothing from the official repository is imported (it pins timm 0.3.2): each function is its
official code, under its official name.
"""
import math

import torch


# --------------------------------------------------------------------------
# util/lr_sched.py
def adjust_learning_rate(optimizer, epoch, args):
    """Decay the learning rate with half-cycle cosine after warmup"""
    if epoch < args.warmup_epochs:
        lr = args.lr * epoch / args.warmup_epochs
    else:
        lr = args.min_lr + (args.lr - args.min_lr) * 0.5 * \
            (1. + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
    for param_group in optimizer.param_groups:
        if "lr_scale" in param_group:
            param_group["lr"] = lr * param_group["lr_scale"]
        else:
            param_group["lr"] = lr
    return lr


# --------------------------------------------------------------------------
# util/lr_decay.py
def param_groups_lrd(model, weight_decay=0.05, no_weight_decay_list=[], layer_decay=.75):
    """Parameter groups for layer-wise lr decay. Returns the optimizer's groups (all the official
    returns) and, for checking them, the same groups by name with parameter names (the official
    builds these for its commented-out print)."""
    param_group_names = {}
    param_groups = {}
    num_layers = len(model.blocks) + 1
    layer_scales = list(layer_decay ** (num_layers - i) for i in range(num_layers + 1))
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # no decay: all 1D parameters and model specific ones
        if p.ndim == 1 or n in no_weight_decay_list:
            g_decay = "no_decay"
            this_decay = 0.
        else:
            g_decay = "decay"
            this_decay = weight_decay
        layer_id = get_layer_id_for_vit(n, num_layers)
        group_name = "layer_%d_%s" % (layer_id, g_decay)
        if group_name not in param_group_names:
            this_scale = layer_scales[layer_id]
            param_group_names[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
            param_groups[group_name] = {"lr_scale": this_scale, "weight_decay": this_decay, "params": []}
        param_group_names[group_name]["params"].append(n)
        param_groups[group_name]["params"].append(p)
    return list(param_groups.values()), param_group_names


def get_layer_id_for_vit(name, num_layers):
    """Assign a parameter with its layer id"""
    if name in ["cls_token", "pos_embed"]:
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    else:
        return num_layers


# --------------------------------------------------------------------------
# util/lars.py
class LARS(torch.optim.Optimizer):
    """LARS optimizer, no rate scaling or weight decay for parameters <= 1D."""
    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, trust_coefficient=0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g['params']:
                dp = p.grad

                if dp is None:
                    continue

                if p.ndim > 1:  # if not normalization gamma/beta or bias
                    dp = dp.add(p, alpha=g['weight_decay'])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.,
                                    torch.where(update_norm > 0,
                                                (g['trust_coefficient'] * param_norm / update_norm), one),
                                    one)
                    dp = dp.mul(q)

                param_state = self.state[p]
                if 'mu' not in param_state:
                    param_state['mu'] = torch.zeros_like(p)
                mu = param_state['mu']
                mu.mul_(g['momentum']).add_(dp)
                p.add_(mu, alpha=-g['lr'])


# --------------------------------------------------------------------------
# util/datasets.py
def build_eval_transform(input_size=224):
    """build_transform(is_train=False, args): resize to keep the 224/256 ratio, center crop,
    normalise (bicubic: the official passes PIL.Image.BICUBIC, which torchvision reads as this)."""
    from torchvision import transforms

    IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
    IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    size = int(input_size / crop_pct)
    return transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    ])


# --------------------------------------------------------------------------
# what the parity tests compare
def state_by_name(model, optimizer):
    """`optimizer.state` by the model's parameter names (the parameters that have state)."""
    return {n: optimizer.state[p] for n, p in model.named_parameters() if p in optimizer.state}


def adamw_state(model, state, to_official):
    """The weights (`w.KEY`) and AdamW moments (`m.KEY`: exp_avg, `v.KEY`: exp_avg_sq, from
    `state_by_name`) of `model` after its steps, under the official key names (`to_official` maps
    a dict of tensors by the model's parameter names to them)."""
    out = {}
    for k, v in to_official(model.state_dict()).items():
        out["w." + k] = v
    for short, key in [("m", "exp_avg"), ("v", "exp_avg_sq")]:
        for k, v in to_official({n: s[key] for n, s in state.items()}).items():
            out[f"{short}.{k}"] = v
    return out
