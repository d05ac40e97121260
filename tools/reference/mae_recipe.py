#!/usr/bin/env python3
"""The MAE recipe of `mae pretrain` / `mae finetune` / `mae linprobe` (this repository's Rust CLI)
on Fashion-MNIST, entirely in PyTorch, on one CPU process: a reference to compare the Rust
port's accuracies and loss curves with, within seed-to-seed spread.

Usage: the same flags as the Rust CLI (and as the official argparse, with its defaults), e.g.
  mae_recipe.py pretrain --dataset fashion_mnist --model mae_vit_mini_patch4 --input_size 32 \
      --batch_size 128 --epochs E --warmup_epochs 1 --blr B --mask_ratio R [--norm_pix_loss] \
      --seed S --device cpu --num_workers 1 --train_subset N --output_dir D
  mae_recipe.py finetune --dataset fashion_mnist --model vit_mini_patch4 --input_size 32 \
      --nb_classes 10 --device cpu --num_workers 1 --train_subset N --batch_size 128 --epochs E \
      --warmup_epochs 1 --aa none [--finetune CKPT] --seed S --output_dir D
  mae_recipe.py linprobe --dataset fashion_mnist --model vit_mini_patch4 --input_size 32 \
      --nb_classes 10 --device cpu --num_workers 1 --train_subset N --batch_size 256 --epochs E \
      --warmup_epochs 1 --lr 6.4 [--finetune CKPT] --seed S --output_dir D

Files written (as the Rust CLI writes them):
  pretrain: D/log.txt (one json line per epoch: train_lr, train_loss, epoch, as the official
            main_pretrain.py and src/main_pretrain.rs), D/train_steps.csv (`epoch_f,loss,lr` per
            iteration, as src/main_pretrain.rs), D/iter_loss.txt (the loss per iteration),
            D/checkpoint-{E-1}.pth = torch.save({'model': state_dict under the official
            models_mae.py key names, 'epoch', 'args'}) (also every 20th epoch, as the official).
  finetune / linprobe: D/log.txt (train_lr, train_loss, test_loss, test_acc1, test_acc5, epoch,
            n_parameters), D/iter_loss.txt, D/checkpoint-{E-1}.pth (last epoch only; the
            official and Rust save every epoch). Printed per epoch: `* Acc@1 .. Acc@5 .. loss ..`,
            `Accuracy of the network on the 10000 test images: ..%`, `Max accuracy: ..%`.

What each part restates (facebookresearch/mae, timm 0.3.2 semantics):
- main_pretrain.py main(): lr = blr * eff_batch / 256, AdamW(betas=(0.9, 0.95)) over timm's
  param_groups_weight_decay(model, 0.05) (= timm 0.3.2 optim_factory.add_weight_decay with no skip
  list: no decay for ndim <= 1 or `.bias`; cls_token / mask_token ARE decayed as in the official
  and the Rust port; pos embeds are frozen). Groups are checked on the official key names.
  transform_train = RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=BICUBIC) +
  RandomHorizontalFlip + ToTensor + Normalize(ImageNet) (torchvision).
- engine_pretrain.py train_one_epoch(): per-iteration util/lr_sched.adjust_learning_rate,
  loss / accum_iter backward, step every accum_iter, MetricLogger global averages.
- models_mae.py MaskedAutoencoderViT: HuggingFace ViTMAEForPreTraining (layer_norm_eps 1e-6),
  weights mapped to / from the official keys by tools/fixtures/make_parity_fixtures.py (hf_to_official /
  official_to_hf, the same mapping the Rust parity tests use); random_masking's noise
  torch.rand(N, L) drawn here and passed as `noise=` (HF's argsort masking = the official one).
  models_mae.initialize_weights() / _init_weights() applied explicitly on the official keys
  (HF's own init differs: normal(0.02) Linear/Conv2d, separate q/k/v): sin-cos pos embeds
  (util/pos_embed.py), xavier_uniform on the flattened patch_embed weight, Conv2d default bias,
  normal(0.02) cls/mask tokens, xavier_uniform Linear (qkv as ONE [3D, D] matrix), zero biases,
  LayerNorm 1/0. `mae_vit_mini_patch4` / `_dec64d1b` as src/models_mae.rs.
- main_finetune.py: models_vit.VisionTransformer = timm VisionTransformer(global_pool='avg',
  fc_norm=True, norm_layer=LayerNorm(eps=1e-6), qkv_bias) with timm 0.3.2's init (trunc_normal
  0.02 Linear / pos_embed / cls_token; timm 1.0 draws cls_token from normal(1e-6): redone here);
  --finetune: drop head.* of a different shape, util/pos_embed.interpolate_pos_embed, load
  strict=False, assert missing == head (+ fc_norm), trunc_normal_(head.weight, std=2e-5).
  util/datasets.build_transform: timm create_transform(is_training=True, ...) / eval
  Resize(int(input_size / (224/256)), bicubic) + CenterCrop + ToTensor + Normalize.
  util/lr_decay.param_groups_lrd (+ get_layer_id_for_vit), AdamW(0.9, 0.999), lr_scale per group,
  LabelSmoothingCrossEntropy (or timm Mixup + SoftTargetCrossEntropy when --mixup/--cutmix > 0),
  NativeScaler's clip_grad_norm_ when --clip_grad.
- engine_finetune.py train_one_epoch() (lr logged = max over groups) / evaluate()
  (cross-entropy, timm accuracy top-1/5; Acc weighted per image, loss averaged per batch).
- main_linprobe.py: timm ViT (cls token + `norm` by default, --global_pool for avg + fc_norm),
  head = Sequential(BatchNorm1d(affine=False, eps=1e-6), Linear), trunc_normal_(std=0.01) on the
  head weight after loading --finetune, all but the head frozen, util/lars.LARS, util/crop.
  RandomResizedCrop(interpolation=3) + flip + normalise, CrossEntropyLoss, lr absolute or blr.

What differs from the Rust port (expected, within seed-to-seed spread):
- RNG streams: torch's global generator (model init, masking noise, drop path), torchvision's
  transforms (torch generator, in the DataLoader worker when --num_workers >= 1, else the main
  one), timm's RandomErasing (python `random`). The Rust side draws augmentations from a
  per-(seed, epoch, sample) generator. Seeding follows the Rust port: torch.manual_seed(seed)
  and np.random.seed(seed) (random.seed(seed) too) at start, torch.manual_seed(seed + epoch)
  before each epoch > 0 (pretrain / finetune), shuffling from a generator seeded seed + epoch
  (DistributedSampler.set_epoch semantics; the official single-process run never calls
  set_epoch, so its order would repeat every epoch), drop_last=True.
- Resampling: Pillow 12 (torchvision) here; the Rust port restates Pillow's bicubic filters.
- Evaluation: the test split goes through the (deterministic) eval transform once, not every
  epoch; linprobe also computes the frozen encoder's pooled test features once and evaluates
  BatchNorm1d (eval mode) + Linear on them each epoch (the same numbers as the full forward).
- finetune / linprobe write only the last epoch's checkpoint; checkpoints hold 'model', 'epoch'
  and 'args' (no optimizer / scaler state: --resume is not supported here).
- pretrain's log.txt has no n_parameters (neither has the official main_pretrain.py nor the Rust
  port); iter_loss.txt is extra (the Rust pretrain writes train_steps.csv, written here too).
"""
import argparse
import gzip
import json
import math
import os
import random
import sys
import time
from functools import partial

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "fixtures")]  # reference/, fixtures/
from make_parity_fixtures import MAE, get_2d_sincos_pos_embed, hf_mae, hf_to_official, official_to_hf  # noqa: E402
from official import LARS, adjust_learning_rate, build_eval_transform, param_groups_lrd  # noqa: E402

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
DEFAULT_DATA_PATH = "/datasets01/imagenet_full_size/061417/"
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# src/models_mae.rs: (img, patch, embed_dim, depth, heads, dec_dim, dec_depth, dec_heads)
MAE.update({
    "mae_vit_mini_patch4": (32, 4, 128, 6, 4, 64, 4, 4),
    "mae_vit_mini_patch4_dec64d1b": (32, 4, 128, 6, 4, 64, 1, 4),
})
# src/models_vit.rs: (patch, embed_dim, depth, heads)
VIT = {
    "vit_tiny_patch4": (4, 64, 2, 4),
    "vit_mini_patch4": (4, 128, 6, 4),
    "vit_base_patch16": (16, 768, 12, 12),
    "vit_large_patch16": (16, 1024, 24, 16),
    "vit_huge_patch14": (14, 1280, 32, 16),
}


# --------------------------------------------------------------------------
# data: torchvision.datasets.FashionMNIST from the IDX files, decoded once
def read_idx(root, name):
    plain = os.path.join(root, name)
    if os.path.exists(plain):
        data = open(plain, "rb").read()
    else:
        with gzip.open(plain + ".gz", "rb") as f:
            data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


class FashionMNIST(torch.utils.data.Dataset):
    """Grey 28x28 images as RGB PIL images (the grey value in each channel, as
    src/torchvision/datasets.rs FashionMNIST::rgb), the first `subset` only when given."""

    def __init__(self, root, train, transform, subset=None):
        prefix = "train" if train else "t10k"
        self.images = read_idx(root, f"{prefix}-images-idx3-ubyte")
        self.targets = read_idx(root, f"{prefix}-labels-idx1-ubyte").astype(np.int64)
        if subset is not None and subset < len(self.targets):
            self.images, self.targets = self.images[:subset], self.targets[:subset]
        self.images = np.ascontiguousarray(self.images)
        self.transform = transform
        self.root, self.split = root, "Train" if train else "Test"

    def __len__(self):
        return len(self.targets)

    def pil(self, i):
        return Image.fromarray(self.images[i], mode="L").convert("RGB")

    def __getitem__(self, i):
        return self.transform(self.pil(i)), int(self.targets[i])

    def __repr__(self):
        return (f"Dataset FashionMNIST\n    Number of datapoints: {len(self)}\n"
                f"    Root location: {self.root}\n    Split: {self.split}")


def data_root(args):
    return FASHION_MNIST_ROOT if args.data_path == DEFAULT_DATA_PATH else args.data_path


def build_dataset(args, train, transform, subset=None):
    """Fashion-MNIST from its IDX files, or (--dataset imagefolder) torchvision's ImageFolder on
    DATA_PATH/train or DATA_PATH/val, as the official util/datasets.build_dataset; the first
    `subset` images only when given (as --train_subset in the Rust CLI)."""
    if args.dataset == "fashion_mnist":
        return FashionMNIST(data_root(args), train, transform, subset)
    if args.dataset != "imagefolder":
        sys.exit(f"--dataset {args.dataset}: this reference reads fashion_mnist or imagefolder")
    from torchvision import datasets

    ds = datasets.ImageFolder(os.path.join(args.data_path, "train" if train else "val"), transform=transform)
    if subset is not None and subset < len(ds):
        ds.samples = ds.imgs = ds.samples[:subset]
    ds.targets = np.asarray([t for _, t in ds.samples], dtype=np.int64)  # as FashionMNIST.targets
    return ds


class EpochSampler(torch.utils.data.Sampler):
    """DistributedSampler(shuffle=True) of one process after set_epoch(epoch): randperm from a
    generator seeded seed + epoch."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self):
        return self.n


def train_loader(dataset, args):
    sampler = EpochSampler(len(dataset), args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=args.batch_size, num_workers=args.num_workers,
        pin_memory=False, drop_last=True, persistent_workers=args.num_workers > 0)
    if len(loader) == 0:
        sys.exit(f"{len(dataset)} images make no full batch of {args.batch_size}")
    return loader


def eval_batches(args):
    """The test split through the (deterministic) eval transform, once, as batches of
    args.batch_size in order (SequentialSampler, drop_last=False)."""
    ds = build_dataset(args, False, build_eval_transform(args.input_size))
    print(ds)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.from_numpy(ds.targets)
    return [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, len(ds), args.batch_size)]


# --------------------------------------------------------------------------
# util/misc.py pieces (util/lr_sched.py, util/lr_decay.py, util/lars.py: official.py)
def timedelta(s):
    import datetime
    return str(datetime.timedelta(seconds=int(s)))


def append_line(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def args_dict(args):
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}


def save_model(args, epoch, model_sd):
    path = os.path.join(args.output_dir, f"checkpoint-{epoch}.pth")
    sd = {k: v.detach().clone().contiguous() for k, v in model_sd.items()}
    tmp = path + ".tmp"
    torch.save({"model": sd, "epoch": epoch, "args": args_dict(args)}, tmp)
    os.replace(tmp, path)
    return path


def seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def common_args(p, batch_size, epochs, model, warmup_epochs, num_workers=10):
    p.add_argument("--batch_size", type=int, default=batch_size)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--accum_iter", type=int, default=1)
    p.add_argument("--model", default=model)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min_lr", type=float, default=0.)
    p.add_argument("--warmup_epochs", type=int, default=warmup_epochs)
    p.add_argument("--data_path", default=DEFAULT_DATA_PATH)
    p.add_argument("--dataset", default="imagefolder")
    p.add_argument("--output_dir", default="./output_dir")
    p.add_argument("--log_dir", default="./output_dir")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", default="")
    p.add_argument("--start_epoch", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=num_workers)
    p.add_argument("--pin_mem", action="store_true")
    p.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    p.add_argument("--train_subset", type=int, default=None)
    p.add_argument("--precision", default=None)
    p.add_argument("--fused_optimizer", action="store_true")  # torch.optim.AdamW(fused=True)
    p.add_argument("--world_size", type=int, default=1)
    p.add_argument("--local_rank", type=int, default=-1)
    p.add_argument("--dist_on_itp", action="store_true")
    p.add_argument("--dist_url", default="env://")


def check_args(args):
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda"):
        sys.exit(f"--device {args.device}: expected cpu or cuda")
    if args.device != "cpu":
        print(f"warning: --device {args.device}: this reference runs on the CPU")
    if args.precision not in (None, "fp32"):
        sys.exit("--precision: this reference runs fp32 only")
    if args.resume:
        sys.exit("--resume is not supported by this reference")
    if args.accum_iter < 1 or args.batch_size < 1:
        sys.exit("--batch_size and --accum_iter must be at least 1")


class Meter:
    def __init__(self):
        self.total, self.count = 0.0, 0

    def update(self, v, n=1):
        self.total += v * n
        self.count += n

    @property
    def avg(self):
        return self.total / max(self.count, 1)


# --------------------------------------------------------------------------
# pre-training
def official_mae_init(sd, name, gen=None):
    """models_mae.MaskedAutoencoderViT.initialize_weights() + _init_weights on the official
    state_dict (pos embeds kept: they are the sin-cos tables already, checked)."""
    img, patch, dim, depth, heads, ddim, ddepth, dheads = MAE[name]
    grid = img // patch
    for key, d in (("pos_embed", dim), ("decoder_pos_embed", ddim)):
        want = torch.from_numpy(get_2d_sincos_pos_embed(d, grid, cls_token=True)).float().unsqueeze(0)
        assert torch.equal(sd[key], want), key
    out = {}
    with torch.no_grad():
        for k, v in sd.items():
            t = torch.empty_like(v)
            if k in ("pos_embed", "decoder_pos_embed"):
                t = v.clone()
            elif k == "patch_embed.proj.weight":
                nn.init.xavier_uniform_(t.view([t.shape[0], -1]))
            elif k == "patch_embed.proj.bias":  # nn.Conv2d's default (reset_parameters)
                fan_in = sd["patch_embed.proj.weight"][0].numel()
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(t, -bound, bound)
            elif k in ("cls_token", "mask_token"):
                nn.init.normal_(t, std=.02)
            elif k.endswith(".weight") and v.dim() == 2:  # nn.Linear (qkv as one [3D, D])
                nn.init.xavier_uniform_(t)
            elif k.endswith(".bias"):  # Linear / LayerNorm bias
                nn.init.constant_(t, 0)
            elif k.endswith(".weight") and v.dim() == 1:  # LayerNorm
                nn.init.constant_(t, 1.0)
            else:
                raise KeyError(k)
            out[k] = t
    return out


def build_mae(name, mask_ratio, norm_pix_loss):
    if name not in MAE:
        sys.exit(f"unknown model {name!r}; valid names: {', '.join(MAE)}")
    img, patch, dim, depth, heads, ddim, ddepth, dheads = MAE[name]
    model = hf_mae(name, mask_ratio, norm_pix_loss)
    official = official_mae_init(hf_to_official(model.state_dict(), depth, ddepth), name)
    hf = official_to_hf(official, depth, ddepth)
    model.load_state_dict(hf, strict=True)
    model.train()
    return model, depth, ddepth


def check_weight_decay_groups(model, depth, ddepth, weight_decay):
    """timm param_groups_weight_decay on the HF names == timm 0.3.2 add_weight_decay (official)
    on the official names."""
    from timm.optim import param_groups_weight_decay
    groups = param_groups_weight_decay(model, weight_decay)
    id2name = {id(p): n for n, p in model.named_parameters()}
    hf_sd = {n: p for n, p in model.named_parameters()}
    off = hf_to_official(hf_sd, depth, ddepth)
    # official names of each HF name (q/k/v -> qkv)
    from make_parity_fixtures import _flat_map
    to_off = {}
    fm = {v: k for k, v in _flat_map(depth, ddepth).items()}
    for n in hf_sd:
        if n in fm:
            to_off[n] = fm[n]
        else:  # vit.layers.i.attention.q_proj.weight -> blocks.i.attn.qkv.weight
            pre, rest = n.split(".attention.")
            p = rest.split(".")[1]
            pre = pre.replace("vit.layers.", "blocks.").replace("decoder.decoder_layers.", "decoder_blocks.")
            to_off[n] = f"{pre}.attn.qkv.{p}"
    got = {}
    for g in groups:
        for p in g["params"]:
            got[to_off[id2name[id(p)]]] = g["weight_decay"]
    frozen = {"pos_embed", "decoder_pos_embed"}
    want = {k: (0. if (v.dim() <= 1 or k.endswith(".bias")) else weight_decay)
            for k, v in off.items() if k not in frozen}
    assert got == want, {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
    return groups


def pretrain(args):
    from torchvision import transforms
    print(json.dumps(args_dict(args), indent=1))
    check_args(args)
    seed_all(args.seed)

    transform_train = transforms.Compose([
        transforms.RandomResizedCrop(args.input_size, scale=(0.2, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)])
    dataset_train = build_dataset(args, True, transform_train, args.train_subset)
    print(dataset_train)
    loader = train_loader(dataset_train, args)
    print(f"Sampler_train = shuffled, seed {args.seed} + epoch")

    model, depth, ddepth = build_mae(args.model, args.mask_ratio, args.norm_pix_loss)
    if MAE[args.model][0] != args.input_size:
        sys.exit(f"--model {args.model} takes {MAE[args.model][0]} px images, --input_size is {args.input_size}")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"Model = {args.model} ({n_params} trainable parameters)")
    num_patches = model.vit.embeddings.patch_embeddings.num_patches

    eff_batch_size = args.batch_size * args.accum_iter
    if args.lr is None:  # only base_lr is specified
        args.lr = args.blr * eff_batch_size / 256
    print("base lr: %.2e" % (args.lr * 256 / eff_batch_size))
    print("actual lr: %.2e" % args.lr)
    print("accumulate grad iterations: %d" % args.accum_iter)
    print("effective batch size: %d" % eff_batch_size)

    param_groups = check_weight_decay_groups(model, depth, ddepth, args.weight_decay)
    optimizer = torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95), fused=args.fused_optimizer or None)
    print(optimizer)

    os.makedirs(args.output_dir, exist_ok=True)
    for f in ("log.txt", "train_steps.csv", "iter_loss.txt"):
        if os.path.exists(os.path.join(args.output_dir, f)):
            os.remove(os.path.join(args.output_dir, f))
    print(f"Start training for {args.epochs} epochs")
    start_time = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        if epoch > 0:  # as the Rust port: masking noise of epoch e from seed + e
            torch.manual_seed(args.seed + epoch)
        loader.sampler.set_epoch(epoch)
        stats, steps = pretrain_one_epoch(model, loader, optimizer, epoch, args, num_patches)
        if epoch % 20 == 0 or epoch + 1 == args.epochs:
            sd = hf_to_official(model.state_dict(), depth, ddepth)
            save_model(args, epoch, sd)
        append_line(os.path.join(args.output_dir, "log.txt"),
                    json.dumps({"train_lr": stats["lr"], "train_loss": stats["loss"], "epoch": epoch}))
        with open(os.path.join(args.output_dir, "train_steps.csv"), "a") as f:
            f.writelines(f"{e!r},{l!r},{lr!r}\n" for e, l, lr in steps)
        with open(os.path.join(args.output_dir, "iter_loss.txt"), "a") as f:
            f.writelines(f"{l!r}\n" for _, l, _ in steps)
    print("Training time {}".format(timedelta(time.time() - start_time)))


def pretrain_one_epoch(model, loader, optimizer, epoch, args, num_patches):
    """engine_pretrain.train_one_epoch (GradScaler disabled: fp32 on the CPU)."""
    model.train(True)
    header = f"Epoch: [{epoch}]"
    accum_iter = args.accum_iter
    n_iter = len(loader)
    loss_m, lr_m, steps = Meter(), Meter(), []
    optimizer.zero_grad()
    t0 = end = time.time()
    n_img = 0
    for data_iter_step, (samples, _) in enumerate(loader):
        epoch_f = data_iter_step / n_iter + epoch
        if data_iter_step % accum_iter == 0:
            adjust_learning_rate(optimizer, epoch_f, args)
        noise = torch.rand(samples.shape[0], num_patches)  # random_masking's noise
        loss = model(pixel_values=samples, noise=noise).loss
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            sys.exit(f"Loss is {loss_value}, stopping training")
        loss = loss / accum_iter
        loss.backward()
        if (data_iter_step + 1) % accum_iter == 0:
            optimizer.step()
            optimizer.zero_grad()
        lr = optimizer.param_groups[0]["lr"]
        loss_m.update(loss_value)
        lr_m.update(lr)
        steps.append((epoch_f, loss_value, lr))
        n_img += samples.shape[0]
        if data_iter_step % 20 == 0 or data_iter_step == n_iter - 1:
            dt = time.time() - t0
            print(f"{header}  [{data_iter_step}/{n_iter}]  lr: {lr:.6f}  loss: {loss_value:.4f} ({loss_m.avg:.4f})"
                  f"  img/s: {n_img / dt:.1f}", flush=True)
        end = time.time()
    total = end - t0
    print(f"{header} Total time: {timedelta(total)} ({total / n_iter:.4f} s / it, {n_img / total:.1f} img/s)")
    print(f"Averaged stats: lr: {lr_m.avg:.6f}  loss: {loss_m.avg:.4f}")
    return {"lr": lr_m.avg, "loss": loss_m.avg}, steps


# --------------------------------------------------------------------------
# fine-tuning and linear probing
def timm_vit(name, img_size, num_classes, drop_path, global_pool):
    """models_vit.VisionTransformer (timm ViT, global pool: fc_norm and no norm) with timm
    0.3.2's init (trunc_normal_(.02) on Linear / pos_embed / cls_token, zero biases, LN 1/0)."""
    from timm.layers import trunc_normal_
    from timm.models.vision_transformer import VisionTransformer
    if name not in VIT:
        sys.exit(f"unknown model {name!r}; valid names: {', '.join(VIT)}")
    patch, dim, depth, heads = VIT[name]
    model = VisionTransformer(
        img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4,
        qkv_bias=True, num_classes=num_classes, class_token=True, drop_path_rate=drop_path,
        global_pool="avg" if global_pool else "token", fc_norm=global_pool,
        norm_layer=partial(nn.LayerNorm, eps=1e-6))
    with torch.no_grad():
        trunc_normal_(model.pos_embed, std=.02)
        trunc_normal_(model.cls_token, std=.02)
        for m in model.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.bias, 0)
                nn.init.constant_(m.weight, 1.0)
    return model


def interpolate_pos_embed(model, checkpoint_model):
    """util/pos_embed.interpolate_pos_embed"""
    if "pos_embed" in checkpoint_model:
        pos_embed_checkpoint = checkpoint_model["pos_embed"]
        embedding_size = pos_embed_checkpoint.shape[-1]
        num_patches = model.patch_embed.num_patches
        num_extra_tokens = model.pos_embed.shape[-2] - num_patches
        orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
        new_size = int(num_patches ** 0.5)
        if orig_size != new_size:
            print("Position interpolate from %dx%d to %dx%d" % (orig_size, orig_size, new_size, new_size))
            extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
            pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
            pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
            pos_tokens = torch.nn.functional.interpolate(
                pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
            pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
            checkpoint_model["pos_embed"] = torch.cat((extra_tokens, pos_tokens), dim=1)


def load_checkpoint_model(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    print("Load pre-trained checkpoint from: %s" % path)
    return checkpoint["model"] if "model" in checkpoint else checkpoint


class RandomResizedCropOneBox:
    """util/crop.RandomResizedCrop: one box drawn (no ten attempts, no fallback), clipped."""

    def __init__(self, size, interpolation, scale=(0.08, 1.0), ratio=(3. / 4., 4. / 3.)):
        self.size, self.interpolation, self.scale, self.ratio = size, interpolation, scale, ratio

    @staticmethod
    def get_params(img, scale, ratio):
        import torchvision.transforms.functional as F
        width, height = F.get_image_size(img)
        area = height * width
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        log_ratio = torch.log(torch.tensor(ratio))
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        w = min(w, width)
        h = min(h, height)
        i = torch.randint(0, height - h + 1, size=(1,)).item()
        j = torch.randint(0, width - w + 1, size=(1,)).item()
        return i, j, h, w

    def __call__(self, img):
        import torchvision.transforms.functional as F
        i, j, h, w = self.get_params(img, self.scale, self.ratio)
        return F.resized_crop(img, i, j, h, w, [self.size, self.size], self.interpolation)


def accuracy(output, target, topk=(1,)):
    """timm.utils.accuracy"""
    maxk = min(max(topk), output.size()[1])
    batch_size = target.size(0)
    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.reshape(1, -1).expand_as(pred))
    return [correct[:min(k, maxk)].reshape(-1).float().sum(0) * 100. / batch_size for k in topk]


@torch.no_grad()
def evaluate(batches, model):
    """engine_finetune.evaluate"""
    criterion = torch.nn.CrossEntropyLoss()
    model.eval()
    t0 = time.time()
    loss_m, acc1_m, acc5_m = Meter(), Meter(), Meter()
    for images, target in batches:
        output = model(images)
        loss = criterion(output, target)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        batch_size = images.shape[0]
        loss_m.update(loss.item())
        acc1_m.update(acc1.item(), n=batch_size)
        acc5_m.update(acc5.item(), n=batch_size)
    dt = time.time() - t0
    print(f"Test: Total time: {timedelta(dt)} ({dt / len(batches):.4f} s / it, {acc1_m.count / dt:.1f} images/s)")
    print("* Acc@1 {top1:.3f} Acc@5 {top5:.3f} loss {losses:.3f}".format(
        top1=acc1_m.avg, top5=acc5_m.avg, losses=loss_m.avg))
    return {"loss": loss_m.avg, "acc1": acc1_m.avg, "acc5": acc5_m.avg, "images": acc1_m.count}


def train_one_epoch(model, criterion, loader, optimizer, epoch, args, mixup_fn=None, max_norm=None):
    """engine_finetune.train_one_epoch (GradScaler disabled: fp32 on the CPU)."""
    model.train(True)
    header = f"Epoch: [{epoch}]"
    accum_iter = args.accum_iter
    n_iter = len(loader)
    loss_m, lr_m, losses = Meter(), Meter(), []
    optimizer.zero_grad()
    t0 = time.time()
    n_img = 0
    for data_iter_step, (samples, targets) in enumerate(loader):
        if data_iter_step % accum_iter == 0:
            adjust_learning_rate(optimizer, data_iter_step / n_iter + epoch, args)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        outputs = model(samples)
        loss = criterion(outputs, targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            sys.exit(f"Loss is {loss_value}, stopping training")
        loss = loss / accum_iter
        loss.backward()
        if (data_iter_step + 1) % accum_iter == 0:
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_norm)
            optimizer.step()
            optimizer.zero_grad()
        max_lr = max(g["lr"] for g in optimizer.param_groups)
        loss_m.update(loss_value)
        lr_m.update(max_lr)
        losses.append(loss_value)
        n_img += samples.shape[0]
        if data_iter_step % 20 == 0 or data_iter_step == n_iter - 1:
            dt = time.time() - t0
            print(f"{header}  [{data_iter_step}/{n_iter}]  lr: {max_lr:.6f}  loss: {loss_value:.4f} ({loss_m.avg:.4f})"
                  f"  img/s: {n_img / dt:.1f}", flush=True)
    total = time.time() - t0
    print(f"{header} Total time: {timedelta(total)} ({total / n_iter:.4f} s / it, {n_img / total:.1f} img/s)")
    print(f"Averaged stats: lr: {lr_m.avg:.6f}  loss: {loss_m.avg:.4f}")
    return {"lr": lr_m.avg, "loss": loss_m.avg}, losses


class HeadOnly(nn.Module):
    """model.head on pre-computed pooled features (linear probing's evaluation)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def train(self, mode=True):
        self.model.train(mode)
        return self

    def forward(self, features):
        return self.model.head(features)


def fit(args, model, criterion, optimizer, loader, val, n_parameters, reseed, mixup_fn=None, max_norm=None,
        eval_model=None):
    os.makedirs(args.output_dir, exist_ok=True)
    for f in ("log.txt", "iter_loss.txt"):
        if os.path.exists(os.path.join(args.output_dir, f)):
            os.remove(os.path.join(args.output_dir, f))
    print(f"Start training for {args.epochs} epochs")
    start_time = time.time()
    max_accuracy = 0.0
    for epoch in range(args.start_epoch, args.epochs):
        if reseed and epoch > 0:  # as the Rust port: drop path / mixup of epoch e from seed + e
            torch.manual_seed(args.seed + epoch)
        loader.sampler.set_epoch(epoch)
        train_stats, losses = train_one_epoch(model, criterion, loader, optimizer, epoch, args, mixup_fn, max_norm)
        if epoch + 1 == args.epochs:
            save_model(args, epoch, model.state_dict())
        test_stats = evaluate(val, eval_model if eval_model is not None else model)
        print(f"Accuracy of the network on the {test_stats['images']} test images: {test_stats['acc1']:.1f}%")
        max_accuracy = max(max_accuracy, test_stats["acc1"])
        print(f"Max accuracy: {max_accuracy:.2f}%")
        log_stats = {"train_lr": train_stats["lr"], "train_loss": train_stats["loss"],
                     "test_loss": test_stats["loss"], "test_acc1": test_stats["acc1"],
                     "test_acc5": test_stats["acc5"], "epoch": epoch, "n_parameters": n_parameters}
        append_line(os.path.join(args.output_dir, "log.txt"), json.dumps(log_stats))
        with open(os.path.join(args.output_dir, "iter_loss.txt"), "a") as f:
            f.writelines(f"{l!r}\n" for l in losses)
    print("Training time {}".format(timedelta(time.time() - start_time)))


def finetune(args):
    from timm.data import Mixup, create_transform
    from timm.layers import trunc_normal_
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    print(json.dumps(args_dict(args), indent=1))
    check_args(args)
    if args.eval:
        sys.exit("--eval is not supported by this reference")
    seed_all(args.seed)

    aa = None if args.aa in ("", "none") else args.aa
    transform = create_transform(
        input_size=args.input_size, is_training=True, color_jitter=args.color_jitter, auto_augment=aa,
        interpolation="bicubic", re_prob=args.reprob, re_mode=args.remode, re_count=args.recount,
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    print(transform)
    dataset_train = build_dataset(args, True, transform, args.train_subset)
    print(dataset_train)
    val = eval_batches(args)
    loader = train_loader(dataset_train, args)
    nb_classes = args.nb_classes if args.nb_classes is not None else 10

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None:
        print("Mixup is activated!")
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=nb_classes)

    model_name = args.model or "vit_large_patch16"
    model = timm_vit(model_name, args.input_size, nb_classes, args.drop_path, global_pool=not args.cls_token)
    if args.finetune:
        checkpoint_model = load_checkpoint_model(args.finetune)
        state_dict = model.state_dict()
        for k in ["head.weight", "head.bias"]:
            if k in checkpoint_model and checkpoint_model[k].shape != state_dict[k].shape:
                print(f"Removing key {k} from pretrained checkpoint")
                del checkpoint_model[k]
        interpolate_pos_embed(model, checkpoint_model)
        msg = model.load_state_dict(checkpoint_model, strict=False)
        print(msg)
        if not args.cls_token:
            assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}, msg
        else:
            assert set(msg.missing_keys) == {"head.weight", "head.bias"}, msg
        # manually initialize fc layer
        trunc_normal_(model.head.weight, std=2e-5)

    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("Model = %s" % model_name)
    print("number of params (M): %.2f" % (n_parameters / 1.e6))
    eff_batch_size = args.batch_size * args.accum_iter
    if args.lr is None:  # only base_lr is specified
        args.lr = args.blr * eff_batch_size / 256
    print("base lr: %.2e" % (args.lr * 256 / eff_batch_size))
    print("actual lr: %.2e" % args.lr)
    print("accumulate grad iterations: %d" % args.accum_iter)
    print("effective batch size: %d" % eff_batch_size)

    # build optimizer with layer-wise lr decay (lrd); timm 0.3.2's no_weight_decay()
    param_groups, _ = param_groups_lrd(model, args.weight_decay,
                                       no_weight_decay_list={"pos_embed", "cls_token", "dist_token"},
                                       layer_decay=args.layer_decay)
    optimizer = torch.optim.AdamW(param_groups, lr=args.lr, fused=args.fused_optimizer or None)
    if mixup_fn is not None:
        criterion = SoftTargetCrossEntropy()  # smoothing is handled with mixup label transform
    elif args.smoothing > 0.:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    print("criterion = %s" % str(criterion))
    fit(args, model, criterion, optimizer, loader, val, n_parameters, reseed=True,
        mixup_fn=mixup_fn, max_norm=args.clip_grad)


def linprobe(args):
    from timm.layers import trunc_normal_
    from torchvision import transforms
    print(json.dumps(args_dict(args), indent=1))
    check_args(args)
    if args.eval:
        sys.exit("--eval is not supported by this reference")
    seed_all(args.seed)

    # linear probe: weak augmentation
    transform_train = transforms.Compose([
        RandomResizedCropOneBox(args.input_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)])
    dataset_train = build_dataset(args, True, transform_train, args.train_subset)
    print(dataset_train)
    val = eval_batches(args)
    loader = train_loader(dataset_train, args)

    model = timm_vit(args.model, args.input_size, args.nb_classes, 0., global_pool=args.global_pool)
    if args.finetune:
        checkpoint_model = load_checkpoint_model(args.finetune)
        state_dict = model.state_dict()
        for k in ["head.weight", "head.bias"]:
            if k in checkpoint_model and checkpoint_model[k].shape != state_dict[k].shape:
                print(f"Removing key {k} from pretrained checkpoint")
                del checkpoint_model[k]
        interpolate_pos_embed(model, checkpoint_model)
        msg = model.load_state_dict(checkpoint_model, strict=False)
        print(msg)
        if args.global_pool:
            assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}, msg
        else:
            assert set(msg.missing_keys) == {"head.weight", "head.bias"}, msg
        # manually initialize fc layer: following MoCo v3
        trunc_normal_(model.head.weight, std=0.01)

    # for linear prob only
    # hack: revise model's head with BN
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6), model.head)
    # freeze all but the head
    for _, p in model.named_parameters():
        p.requires_grad = False
    for _, p in model.head.named_parameters():
        p.requires_grad = True
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("Model = %s" % args.model)
    print("number of params (M): %.2f" % (n_parameters / 1.e6))

    eff_batch_size = args.batch_size * args.accum_iter
    if args.lr is None:  # only base_lr is specified
        args.lr = args.blr * eff_batch_size / 256
    print("base lr: %.2e" % (args.lr * 256 / eff_batch_size))
    print("actual lr: %.2e" % args.lr)
    print("accumulate grad iterations: %d" % args.accum_iter)
    print("effective batch size: %d" % eff_batch_size)

    # Not in the official: the encoder is frozen (and has no dropout / drop path), so the test
    # images' pooled features are the same every epoch; compute them once and evaluate the head
    # (BatchNorm1d in eval mode + Linear) on them: the same numbers as model(images) each epoch.
    with torch.no_grad():
        model.eval()
        val = [(model.forward_head(model.forward_features(x), pre_logits=True), y) for x, y in val]
    head_eval = HeadOnly(model)

    optimizer = LARS(model.head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    print(optimizer)
    criterion = torch.nn.CrossEntropyLoss()
    print("criterion = %s" % str(criterion))
    fit(args, model, criterion, optimizer, loader, val, n_parameters, reseed=False, eval_model=head_eval)


# --------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser("mae_recipe.py")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("pretrain", help="main_pretrain.py")
    common_args(p, 64, 400, "mae_vit_large_patch16", 40)
    p.add_argument("--mask_ratio", type=float, default=0.75)
    p.add_argument("--norm_pix_loss", action="store_true")
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--blr", type=float, default=1e-3)

    p = sub.add_parser("finetune", help="main_finetune.py")
    common_args(p, 64, 50, None, 5)
    p.add_argument("--drop_path", type=float, default=0.1)
    p.add_argument("--clip_grad", type=float, default=None)
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--blr", type=float, default=1e-3)
    p.add_argument("--layer_decay", type=float, default=0.75)
    p.add_argument("--color_jitter", type=float, default=None)
    p.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1")
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--reprob", type=float, default=0.25)
    p.add_argument("--remode", type=str, default="pixel")
    p.add_argument("--recount", type=int, default=1)
    p.add_argument("--resplit", action="store_true", default=False)
    p.add_argument("--mixup", type=float, default=0)
    p.add_argument("--cutmix", type=float, default=0)
    p.add_argument("--cutmix_minmax", type=float, nargs="+", default=None)
    p.add_argument("--mixup_prob", type=float, default=1.0)
    p.add_argument("--mixup_switch_prob", type=float, default=0.5)
    p.add_argument("--mixup_mode", type=str, default="batch")
    p.add_argument("--finetune", default="")
    p.add_argument("--global_pool", action="store_true", default=True)
    p.add_argument("--cls_token", action="store_true")
    p.add_argument("--nb_classes", type=int, default=None)
    p.add_argument("--eval", action="store_true")
    p.add_argument("--dist_eval", action="store_true")

    p = sub.add_parser("linprobe", help="main_linprobe.py")
    common_args(p, 512, 90, "vit_large_patch16", 10)
    p.add_argument("--weight_decay", type=float, default=0.)
    p.add_argument("--blr", type=float, default=0.1)
    p.add_argument("--finetune", default="")
    p.add_argument("--global_pool", action="store_true", default=False)
    p.add_argument("--cls_token", action="store_false", dest="global_pool")
    p.add_argument("--nb_classes", type=int, default=1000)
    p.add_argument("--eval", action="store_true")
    p.add_argument("--dist_eval", action="store_true")

    args = parser.parse_args(argv)
    # one thread unless OMP_NUM_THREADS says otherwise (tools/bench/bench_train.py sets it for both
    # implementations; tools/reproduce.py sets 1)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    {"pretrain": pretrain, "finetune": finetune, "linprobe": linprobe}[args.cmd](args)


if __name__ == "__main__":
    main()
