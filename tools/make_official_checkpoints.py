"""Fixtures for tests/checkpoint.rs: checkpoints shaped like the official MAE ones, written by
torch.save exactly as util/misc.py `save_model` does, and checks of files Rust wrote.

  generate OUT_DIR            write every missing fixture (NAME.pth + NAME.manifest.json, and for
                              the base models NAME.contig.safetensors of the state dict)
  compare A.pth B.pth         torch.load both (weights_only=True) and require bit-identical trees
  check-rust PTH SAFETENSORS  a Rust `save_state_dict` file: {'model': OrderedDict}, equal to the
                              safetensors (read by the safetensors package) and to the pattern

The manifest maps each tensor's path (dict keys and list indices joined by '/') to its dtype,
shape, stride, storage offset, storage id and the CRC-32 of its contiguous bytes.
"""
import argparse
import collections
import json
import os
import sys
import zlib

import torch
from safetensors.torch import load_file, save_file

FIXTURE_VERSION = "4"
REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "reference")
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
ALL_DTYPES = {
    "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64,
    "i64": torch.int64, "i32": torch.int32, "i16": torch.int16, "i8": torch.int8,
    "u8": torch.uint8, "bool": torch.bool,
}
# name -> (official model, dtype, training checkpoint with optimizer/args/views, safetensors copy)
FIXTURES = {
    **{f"mae_vit_base_patch16_{d}": ("mae_vit_base_patch16", d, True, True) for d in DTYPES},
    **{f"vit_base_patch16_{d}": ("vit_base_patch16", d, False, True) for d in DTYPES},
    "mae_vit_large_patch16_bf16": ("mae_vit_large_patch16", "bf16", False, False),
    "vit_large_patch16_f32": ("vit_large_patch16", "f32", False, False),
    "mae_vit_huge_patch14_f16": ("mae_vit_huge_patch14", "f16", False, False),
    "vit_huge_patch14_bf16": ("vit_huge_patch14", "bf16", False, False),
}


def reference():
    path = os.environ.get("MAE_REFERENCE_DIR", REF)
    with open(os.path.join(path, "official_state_dicts.json")) as f:
        sds = json.load(f)
    with open(os.path.join(path, "official_args.json")) as f:
        args = json.load(f)
    return sds, args


def state_dict(shapes, dtype, gen, views):
    sd = collections.OrderedDict()
    for k, shape in shapes.items():
        sd[k] = torch.randn(shape, generator=gen).to(dtype)
    if views:
        # Non-contiguous and storage-sharing entries with the official shapes.
        w = sd["blocks.0.attn.qkv.weight"]
        sd["blocks.0.attn.qkv.weight"] = w.t().contiguous().t()  # column-major
        n1, n2 = sd["blocks.0.attn.qkv.bias"].numel(), sd["blocks.0.attn.proj.bias"].numel()
        flat = torch.randn(n1 + n2 + 7, generator=gen).to(dtype)
        sd["blocks.0.attn.qkv.bias"] = flat[3:3 + n1]
        sd["blocks.0.attn.proj.bias"] = flat[3 + n1:3 + n1 + n2]
        fc1 = sd["blocks.1.mlp.fc1.weight"]
        big = torch.randn(fc1.shape[0] + 10, fc1.shape[1] * 2, generator=gen).to(dtype)
        sd["blocks.1.mlp.fc1.weight"] = big[5:5 + fc1.shape[0], ::2]  # sliced, strided
    return sd


def specials(dtype, gen):
    if dtype == torch.bool:
        return torch.rand(37, generator=gen) > 0.5
    if dtype.is_floating_point:
        v = [0.0, -0.0, 1.0, -1.5, float("inf"), float("-inf"), float("nan"), 1e-40, 3e38, 6e-8, 65504.0]
        return torch.cat([torch.tensor(v, dtype=torch.float64).to(dtype), torch.randn(29, generator=gen).to(dtype)])
    info = torch.iinfo(dtype)
    ends = torch.tensor([info.min, info.max, 0, 1], dtype=dtype)
    return torch.cat([ends, torch.randint(info.min, info.max, (33,), generator=gen, dtype=torch.int64).to(dtype)])


def training_extras(sd, dtype, gen, all_args):
    """optimizer/scaler/epoch/args as main_pretrain.py's save_model writes them."""
    params = [torch.nn.Parameter(v.float().contiguous()) for v in list(sd.values())[:6]]
    opt = torch.optim.AdamW(
        [{"params": params[:3], "weight_decay": 0.05}, {"params": params[3:], "weight_decay": 0.0}],
        lr=1.5e-4, betas=(0.9, 0.95))
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 17}
    args = argparse.Namespace(**{k: v["default"] for k, v in all_args["main_pretrain"].items()})
    base = torch.randn(64, 48, generator=gen).to(dtype)
    views = {
        "base": base,
        "transposed": base.t(),
        "sliced": base[3:40:2, 5:17],
        "row": base[7],
        "tail": base.view(-1)[100:],
        "expanded": base[0:1, :5].expand(4, 5),
        "scalar": torch.tensor(3.5, dtype=dtype),
        "empty": torch.zeros(0, 3, dtype=dtype),
        "dtypes": {name: specials(d, gen) for name, d in ALL_DTYPES.items()},
        "nested": [1, (2, 3.25, "x"), {"k": None, 7: True, "bytes": b"\x00\xffab"}, [base[1:3]]],
        "param": torch.nn.Parameter(torch.randn(3, generator=gen).to(dtype)),
        "param_with_state": torch.nn.Parameter(torch.randn(2, 2, generator=gen).to(dtype), requires_grad=False),
    }
    views["param_with_state"].note = "an attribute: pickled by _rebuild_parameter_with_state"
    return {"optimizer": opt.state_dict(), "epoch": 399, "scaler": scaler, "args": args, "views": views}


def walk(obj, path, out):
    if isinstance(obj, torch.Tensor):
        out[path] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            walk(v, f"{path}/{k}" if path else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            walk(v, f"{path}/{i}", out)
    elif isinstance(obj, argparse.Namespace):
        walk(vars(obj), path, out)
    return out


def tensor_bytes(t):
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def manifest(obj):
    ids = {}
    entries = {}
    for path, t in walk(obj, "", {}).items():
        sid = ids.setdefault(t.untyped_storage().data_ptr(), len(ids))
        entries[path] = {
            "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "stride": list(t.stride()),
            "storage_offset": t.storage_offset(), "storage": sid, "crc32": zlib.crc32(tensor_bytes(t)),
        }
    return entries


def generate(out):
    os.makedirs(out, exist_ok=True)
    stamp = os.path.join(out, "VERSION")
    if not os.path.exists(stamp) or open(stamp).read().strip() != FIXTURE_VERSION:
        for f in os.listdir(out):
            if f.endswith((".pth", ".json", ".safetensors")):
                os.remove(os.path.join(out, f))
    sds, all_args = reference()
    for i, (name, (model, d, training, st)) in enumerate(FIXTURES.items()):
        man = os.path.join(out, f"{name}.manifest.json")
        if os.path.exists(man):
            continue
        gen = torch.Generator().manual_seed(1000 + i)
        dtype = DTYPES[d]
        sd = state_dict(sds[model], dtype, gen, views=training)
        ckpt = {"model": sd}
        if training:
            ckpt.update(training_extras(sd, dtype, gen, all_args))
        torch.save(ckpt, os.path.join(out, f"{name}.pth"))
        if st:
            save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(out, f"{name}.contig.safetensors"))
        with open(man + ".tmp", "w") as f:
            json.dump({"model": model, "dtype": d, "tensors": manifest(ckpt)}, f)
        os.replace(man + ".tmp", man)
        print(f"wrote {name}", file=sys.stderr)
    with open(stamp, "w") as f:
        f.write(FIXTURE_VERSION + "\n")


def load(path):
    torch.serialization.add_safe_globals([argparse.Namespace])
    return torch.load(path, weights_only=True)


def same(a, b, path=""):
    """Bit-identical trees; dict and OrderedDict are the same, tuples must stay tuples."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: tensor vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        assert tensor_bytes(a) == tensor_bytes(b), f"{path}: values differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a.keys()) == list(b.keys()), f"{path}: keys differ"
        for k in a:
            same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{path}: {type(a)} vs {type(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}/{i}")
    elif isinstance(a, argparse.Namespace):
        assert isinstance(b, argparse.Namespace), f"{path}: Namespace vs {type(b)}"
        same(vars(a), vars(b), path)
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} vs {b!r}"


def shared_storages(obj):
    groups = collections.defaultdict(list)
    for path, t in walk(obj, "", {}).items():
        groups[t.untyped_storage().data_ptr()].append(path)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def compare(a_path, b_path):
    a, b = load(a_path), load(b_path)
    same(a, b)
    sa, sb = shared_storages(a), shared_storages(b)
    assert sa == sb, f"storage sharing differs: {sa} vs {sb}"
    print(f"{b_path}: {len(walk(a, '', {}))} tensors bit-identical to {a_path}, sharing kept: {len(sa)} groups")


def pattern(dtype, shape):
    """The values Rust's test writes: ((i * 7) % 251 - 125) / 8 for floats, mod-251 ints, i % 2 bools."""
    n = 1
    for s in shape:
        n *= s
    i = torch.arange(n, dtype=torch.int64)
    k = (i * 7) % 251
    if dtype == torch.bool:
        v = (i % 2).to(torch.bool)
    elif dtype == torch.uint8:
        v = k.to(dtype)
    elif dtype.is_floating_point:
        v = ((k - 125).to(torch.float64) / 8).to(dtype)
    else:
        v = (k - 125).to(dtype)
    return v.reshape(shape)


def check_rust(pth, st, model=None):
    obj = torch.load(pth, weights_only=True)
    assert list(obj.keys()) == ["model"] and type(obj["model"]) is collections.OrderedDict, type(obj["model"])
    sd = obj["model"]
    ref = load_file(st)
    assert sorted(sd.keys()) == sorted(ref.keys()), (sorted(sd.keys()), sorted(ref.keys()))
    for k, t in sd.items():
        same(ref[k], t, k)
        if not k.startswith("views."):
            same(pattern(t.dtype, list(t.shape)), t, k)
    if "views.base" in sd:
        t, v = sd["views.base"], sd["views.transposed"]
        assert v.untyped_storage().data_ptr() == t.untyped_storage().data_ptr(), "transposed view lost its sharing"
        assert v.stride() == (1, t.shape[1]), v.stride()
        assert sd["views.narrow"].untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
    if model:
        # What the reference model's load_state_dict(strict=True) checks: same keys, same shapes.
        official = reference()[0][model]
        assert sorted(sd.keys()) == sorted(official.keys()), "keys differ from the official state_dict"
        for k, shape in official.items():
            assert list(sd[k].shape) == shape, f"{k}: {list(sd[k].shape)} vs official {shape}"
    print(f"{pth}: {len(sd)} tensors bit-identical to {st} and the pattern")


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {"generate": generate, "compare": compare, "check-rust": check_rust}[cmd](*rest)
