#!/usr/bin/env python3
"""Parity fixtures for the Rust ports of models_mae.py, models_vit.py and util/pos_embed.py.

References (installed by tools/requirements.txt, nothing from the official repo is imported):
- MAE pre-training model: HuggingFace transformers `ViTMAEForPreTraining`, configured as each
  official size, weights mapped to / from the official state_dict key names;
- fine-tuning ViT: timm `VisionTransformer(global_pool='avg', fc_norm=True)` (the official
  global-pool model) and `global_pool='token'` (cls token); timm's keys are the official ones;
- `get_2d_sincos_pos_embed` / `interpolate_pos_embed`: ported below from util/pos_embed.py.

Usage: make_parity_fixtures.py OUT_DIR GROUP...   (groups: tiny mae_base mae_large mae_huge
vit_base vit_large vit_huge). Each group writes OUT_DIR/GROUP.stamp holding the hash of this
script last; a group whose stamp matches is skipped before torch is even imported.
Checkpoints are written as torch.save({'model': state_dict}) (.pth); inputs and reference
outputs as safetensors (GROUP_*.safetensors).
"""
import hashlib
import os
import sys

HERE = os.path.abspath(__file__)
SCRIPT_HASH = hashlib.sha256(open(HERE, "rb").read()).hexdigest()
GROUPS = ["tiny", "mae_base", "mae_large", "mae_huge", "vit_base", "vit_large", "vit_huge"]


def stamp_ok(out, group):
    try:
        return open(os.path.join(out, group + ".stamp")).read().strip() == SCRIPT_HASH
    except OSError:
        return False


def main():
    if len(sys.argv) < 3 or any(g not in GROUPS for g in sys.argv[2:]):
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR GROUP...  (groups: {' '.join(GROUPS)})")
    out = sys.argv[1]
    todo = [g for g in sys.argv[2:] if not stamp_ok(out, g)]
    if not todo:
        return
    os.makedirs(out, exist_ok=True)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    for g in todo:
        print(f"[fixtures] generating {g} in {out}", flush=True)
        globals()["group_" + g](out)
        with open(os.path.join(out, g + ".stamp"), "w") as f:
            f.write(SCRIPT_HASH + "\n")


# --------------------------------------------------------------------------
# util/pos_embed.py, ported (np.float -> np.float64: the alias numpy removed)
def get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=False):
    import numpy as np

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)
    grid = grid.reshape([2, 1, grid_size, grid_size])
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    pos_embed = np.concatenate([emb_h, emb_w], axis=1)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
    import numpy as np

    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    pos = pos.reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def interpolate_pos_embed(num_patches, num_extra_tokens, pos_embed_checkpoint):
    """util/pos_embed.interpolate_pos_embed on one state-dict entry."""
    import torch

    embedding_size = pos_embed_checkpoint.shape[-1]
    orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
    new_size = int(num_patches**0.5)
    if orig_size == new_size:
        return pos_embed_checkpoint
    extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
    pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
    pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
    pos_tokens = torch.nn.functional.interpolate(
        pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False
    )
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra_tokens, pos_tokens), dim=1)


def sincos_f32(embed_dim, grid_size):
    import torch

    return torch.from_numpy(get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=True)).float().unsqueeze(0)


# --------------------------------------------------------------------------
# model configurations (mirror the Rust constructors)
MAE = {  # name: (img, patch, embed_dim, depth, heads, dec_dim, dec_depth, dec_heads)
    "mae_vit_tiny_patch4": (32, 4, 64, 2, 4, 32, 2, 4),
    "mae_vit_base_patch16": (224, 16, 768, 12, 12, 512, 8, 16),
    "mae_vit_large_patch16": (224, 16, 1024, 24, 16, 512, 8, 16),
    "mae_vit_huge_patch14": (224, 14, 1280, 32, 16, 512, 8, 16),
}
VIT = {  # name: (patch, embed_dim, depth, heads)
    "vit_tiny_patch4": (4, 64, 2, 4),
    "vit_base_patch16": (16, 768, 12, 12),
    "vit_large_patch16": (16, 1024, 24, 16),
    "vit_huge_patch14": (14, 1280, 32, 16),
}


def randomize(sd, gen, keep=()):
    """Random weights with the statistics of a trained model (non-trivial LayerNorm and biases)."""
    import torch

    out = {}
    for k, v in sd.items():
        if k in keep:
            out[k] = v.clone()
        elif k.endswith(".bias"):
            out[k] = 0.05 * torch.randn(v.shape, generator=gen)
        elif v.dim() == 1:  # LayerNorm weight
            out[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=gen)
        else:
            out[k] = 0.02 * torch.randn(v.shape, generator=gen)
    return out


def save_pth(path, sd):
    import torch

    sd = {k: v.contiguous() for k, v in sd.items()}
    torch.save({"model": sd}, path)


def save_io(path, tensors):
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path)


# --------------------------------------------------------------------------
# HF ViTMAE <-> official key names
def hf_block_keys(prefix):
    return [
        ("norm1", prefix + "layernorm_before"),
        ("attn.proj", prefix + "attention.o_proj"),
        ("norm2", prefix + "layernorm_after"),
        ("mlp.fc1", prefix + "mlp.fc1"),
        ("mlp.fc2", prefix + "mlp.fc2"),
    ]


def official_to_hf(sd, depth, dec_depth):
    hf = {
        "vit.embeddings.cls_token": sd["cls_token"],
        "vit.embeddings.position_embeddings": sd["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "vit.layernorm.weight": sd["norm.weight"],
        "vit.layernorm.bias": sd["norm.bias"],
        "decoder.mask_token": sd["mask_token"],
        "decoder.decoder_pos_embed": sd["decoder_pos_embed"],
    }
    for name in ["decoder_embed", "decoder_norm", "decoder_pred"]:
        for p in ["weight", "bias"]:
            hf[f"decoder.{name}.{p}"] = sd[f"{name}.{p}"]
    blocks = [(f"blocks.{i}.", f"vit.layers.{i}.") for i in range(depth)]
    blocks += [(f"decoder_blocks.{i}.", f"decoder.decoder_layers.{i}.") for i in range(dec_depth)]
    for ours, theirs in blocks:
        for a, b in hf_block_keys(theirs):
            for p in ["weight", "bias"]:
                hf[f"{b}.{p}"] = sd[f"{ours}{a}.{p}"]
        for p in ["weight", "bias"]:
            q, k, v = sd[f"{ours}attn.qkv.{p}"].chunk(3, dim=0)  # qkv: [3*C, ...] in q, k, v order
            for n, t in zip("qkv", (q, k, v)):
                hf[f"{theirs}attention.{n}_proj.{p}"] = t
    return hf


def hf_to_official(hf, depth, dec_depth):
    import torch

    sd = {}
    back = {v_key: k for k, v_key in _flat_map(depth, dec_depth).items()}
    for k, v in hf.items():
        if k in back:
            sd[back[k]] = v
    blocks = [(f"blocks.{i}.", f"vit.layers.{i}.") for i in range(depth)]
    blocks += [(f"decoder_blocks.{i}.", f"decoder.decoder_layers.{i}.") for i in range(dec_depth)]
    for ours, theirs in blocks:
        for p in ["weight", "bias"]:
            sd[f"{ours}attn.qkv.{p}"] = torch.cat([hf[f"{theirs}attention.{n}_proj.{p}"] for n in "qkv"], 0)
    return sd


def _flat_map(depth, dec_depth):
    m = {
        "cls_token": "vit.embeddings.cls_token",
        "pos_embed": "vit.embeddings.position_embeddings",
        "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
        "norm.weight": "vit.layernorm.weight",
        "norm.bias": "vit.layernorm.bias",
        "mask_token": "decoder.mask_token",
        "decoder_pos_embed": "decoder.decoder_pos_embed",
    }
    for name in ["decoder_embed", "decoder_norm", "decoder_pred"]:
        for p in ["weight", "bias"]:
            m[f"{name}.{p}"] = f"decoder.{name}.{p}"
    blocks = [(f"blocks.{i}.", f"vit.layers.{i}.") for i in range(depth)]
    blocks += [(f"decoder_blocks.{i}.", f"decoder.decoder_layers.{i}.") for i in range(dec_depth)]
    for ours, theirs in blocks:
        for a, b in hf_block_keys(theirs):
            for p in ["weight", "bias"]:
                m[f"{ours}{a}.{p}"] = f"{b}.{p}"
    return m


def hf_mae(name, mask_ratio, norm_pix_loss):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    img, patch, dim, depth, heads, ddim, ddepth, dheads = MAE[name]
    cfg = ViTMAEConfig(
        hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * dim,
        hidden_act="gelu", layer_norm_eps=1e-6, image_size=img, patch_size=patch, num_channels=3,
        qkv_bias=True, decoder_hidden_size=ddim, decoder_num_hidden_layers=ddepth,
        decoder_num_attention_heads=dheads, decoder_intermediate_size=4 * ddim,
        mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
    )
    model = ViTMAEForPreTraining(cfg).eval()
    # transformers 5.24: post_init() marks patch_embeddings.projection initialised first, so
    # ViTMAEEmbeddings.initialize_weights() returns early and _init_weights zeroes
    # decoder_pos_embed: a freshly built model has all-zero sin-cos tables. Run both inits.
    proj = model.vit.embeddings.patch_embeddings.projection
    if hasattr(proj, "_is_hf_initialized"):
        del proj._is_hf_initialized
    model.vit.embeddings.initialize_weights()
    model.decoder.initialize_weights(model.vit.embeddings.patch_embeddings.num_patches)
    return model


def make_mae_fixture(out, name, batch, runs, seed):
    """runs: [(tag, mask_ratio)]; each run records both norm_pix_loss settings."""
    import json

    import torch

    img, patch, dim, depth, heads, ddim, ddepth, dheads = MAE[name]
    grid = img // patch
    torch.manual_seed(seed)
    model = hf_mae(name, runs[0][1], False)
    hf_sd = model.state_dict()
    official = hf_to_official(hf_sd, depth, ddepth)
    # the mapped key set is exactly the official one (shapes included)
    ref_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "reference", "official_state_dicts.json")
    ref = json.load(open(ref_path)).get(name) if os.path.exists(ref_path) else None
    if ref is not None:
        assert set(ref) == set(official), set(ref) ^ set(official)
        assert all(list(official[k].shape) == ref[k] for k in ref), name
    # HF's fixed sin-cos embeddings equal the official numpy formula
    assert torch.equal(official["pos_embed"], sincos_f32(dim, grid)), "HF pos_embed != official"
    assert torch.equal(official["decoder_pos_embed"], sincos_f32(ddim, grid)), "HF decoder_pos_embed != official"
    gen = torch.Generator().manual_seed(seed + 1)
    official = randomize(official, gen, keep=("pos_embed", "decoder_pos_embed"))
    hf = official_to_hf(official, depth, ddepth)
    assert set(hf) == set(hf_sd), set(hf) ^ set(hf_sd)
    model.load_state_dict(hf, strict=True)
    del hf, hf_sd
    save_pth(os.path.join(out, f"{name}.pth"), official)

    imgs = torch.randn(batch, 3, img, img, generator=gen)
    io = {"imgs": imgs}
    with torch.no_grad():
        for tag, mask_ratio in runs:
            noise = torch.rand(batch, grid * grid, generator=gen)
            io[f"{tag}.noise"] = noise
            for npl in (False, True):
                model.config.norm_pix_loss = npl
                model.vit.config.mask_ratio = mask_ratio
                model.config.mask_ratio = mask_ratio
                o = model(pixel_values=imgs, noise=noise)
                enc = model.vit(pixel_values=imgs, noise=noise)
                io[f"{tag}.loss_norm_pix{int(npl)}"] = o.loss.reshape(1)
            io[f"{tag}.mask"] = o.mask
            io[f"{tag}.ids_restore"] = o.ids_restore
            io[f"{tag}.latent"] = enc.last_hidden_state
            io[f"{tag}.pred"] = o.logits
    save_io(os.path.join(out, f"{name}_io.safetensors"), io)
    del model


# --------------------------------------------------------------------------
# timm VisionTransformer as the official models_vit.VisionTransformer
def timm_vit(name, img, global_pool, num_classes=1000):
    from functools import partial

    import torch.nn as nn
    from timm.models.vision_transformer import VisionTransformer

    patch, dim, depth, heads = VIT[name]
    return VisionTransformer(
        img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=4,
        qkv_bias=True, num_classes=num_classes, class_token=True,
        global_pool="avg" if global_pool else "token", fc_norm=global_pool,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()


def make_vit_fixture(out, name, batch, seed, global_pool=True, img=224, num_classes=1000, extra_img=None):
    """Checkpoint at `img`; logits at `img` and, with extra_img, at that resolution after
    interpolate_pos_embed of the same checkpoint (as main_finetune.py does)."""
    import torch

    tag = name if global_pool else name + "_cls_token"
    torch.manual_seed(seed)
    model = timm_vit(name, img, global_pool, num_classes)
    gen = torch.Generator().manual_seed(seed + 1)
    sd = randomize(model.state_dict(), gen)
    model.load_state_dict(sd, strict=True)
    save_pth(os.path.join(out, f"{tag}.pth"), sd)
    io = {}
    with torch.no_grad():
        x = torch.randn(batch, 3, img, img, generator=gen)
        io["imgs"] = x
        io["logits"] = model(x)
        io["features"] = model.forward_head(model.forward_features(x), pre_logits=True)
        del model
        if extra_img:
            big = timm_vit(name, extra_img, global_pool, num_classes)
            num_patches = big.patch_embed.num_patches
            sd["pos_embed"] = interpolate_pos_embed(num_patches, big.pos_embed.shape[-2] - num_patches, sd["pos_embed"])
            big.load_state_dict(sd, strict=True)
            x = torch.randn(batch, 3, extra_img, extra_img, generator=gen)
            io[f"imgs_{extra_img}"] = x
            io[f"pos_embed_{extra_img}"] = sd["pos_embed"]
            io[f"logits_{extra_img}"] = big(x)
    save_io(os.path.join(out, f"{tag}_io.safetensors"), io)


# --------------------------------------------------------------------------
# groups
def group_tiny(out):
    import numpy as np
    import torch

    make_mae_fixture(out, "mae_vit_tiny_patch4", 4, [("r75", 0.75), ("r50", 0.5)], seed=0)
    make_vit_fixture(out, "vit_tiny_patch4", 3, seed=10, img=32, num_classes=10, extra_img=48)
    make_vit_fixture(out, "vit_tiny_patch4", 3, seed=11, global_pool=False, img=32, num_classes=10)

    # sin-cos tables, exactly as numpy computes them
    pe = {}
    for dim, grid, cls in [(64, 8, True), (32, 8, True), (16, 4, False), (768, 14, True), (512, 14, True),
                           (1024, 14, True), (1280, 16, True), (512, 16, True), (1280, 32, True)]:
        t = get_2d_sincos_pos_embed(dim, grid, cls_token=cls)
        pe[f"f64_{dim}_{grid}_{int(cls)}"] = torch.from_numpy(np.ascontiguousarray(t))
        pe[f"f32_{dim}_{grid}_{int(cls)}"] = torch.from_numpy(t).float()
    save_io(os.path.join(out, "pos_embed.safetensors"), pe)

    # official random_masking with the global CPU generator: torch.manual_seed(s); torch.rand(N, L)
    masks = {}
    for s in [0, 1, 7, 42, 2024]:
        for n, length, ratio in [(3, 64, 0.75), (2, 196, 0.75), (2, 256, 0.5)]:
            torch.manual_seed(s)
            noise = torch.rand(n, length)
            len_keep = int(length * (1 - ratio))
            ids_shuffle = torch.argsort(noise, dim=1)
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            mask = torch.ones([n, length])
            mask[:, :len_keep] = 0
            masks[f"mask_{s}_{n}_{length}_{ratio}"] = torch.gather(mask, dim=1, index=ids_restore)
            masks[f"ids_restore_{s}_{n}_{length}_{ratio}"] = ids_restore
    save_io(os.path.join(out, "masking.safetensors"), masks)

    # main_finetune.py: the tiny MAE checkpoint into a global-pool / cls-token ViT (head left out)
    ckpt = torch.load(os.path.join(out, "mae_vit_tiny_patch4.pth"), map_location="cpu")["model"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ft = {"imgs": x}
    for gp in (True, False):
        model = timm_vit("vit_tiny_patch4", 32, gp, num_classes=10)
        msg = model.load_state_dict(ckpt, strict=False)
        want = {"head.weight", "head.bias"} | ({"fc_norm.weight", "fc_norm.bias"} if gp else set())
        assert set(msg.missing_keys) == want, msg.missing_keys
        with torch.no_grad():
            ft[f"features_gp{int(gp)}"] = model.forward_head(model.forward_features(x), pre_logits=True)
    save_io(os.path.join(out, "finetune_from_mae_io.safetensors"), ft)


def group_mae_base(out):
    make_mae_fixture(out, "mae_vit_base_patch16", 2, [("r75", 0.75)], seed=100)


def group_mae_large(out):
    make_mae_fixture(out, "mae_vit_large_patch16", 1, [("r75", 0.75)], seed=200)


def group_mae_huge(out):
    make_mae_fixture(out, "mae_vit_huge_patch14", 1, [("r75", 0.75)], seed=300)


def group_vit_base(out):
    make_vit_fixture(out, "vit_base_patch16", 2, seed=400)
    make_vit_fixture(out, "vit_base_patch16", 2, seed=401, global_pool=False)


def group_vit_large(out):
    make_vit_fixture(out, "vit_large_patch16", 1, seed=500)


def group_vit_huge(out):
    make_vit_fixture(out, "vit_huge_patch14", 1, seed=600, extra_img=448)


if __name__ == "__main__":
    main()
