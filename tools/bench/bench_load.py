#!/usr/bin/env python3
"""One measurement of tools/bench/bench_load.sh, in a fresh process (the Python side of
examples/bench_load.rs): the time of one checkpoint load and the peak RSS above the process
baseline (VmRSS once `import torch` is done, before the load).

usage: bench_load.py CKPT [load | mmap | mmap_touch | model]
  load        torch.load(weights_only=True, map_location='cpu'): owned tensors
  mmap        torch.load(..., mmap=True): returns storages mapped from the file; no data read yet
  mmap_touch  the same, then every tensor cloned: the data read in from the map, into owned
              tensors (what `load` gives at once)
  model       what main_finetune.py --eval does: build the ViT (timm, random init), torch.load,
              model.load_state_dict(checkpoint['model'], strict=True)
prints `py-<mode> load_s=... base_mb=... peak_above_mb=... file_mb=...`
"""
import os
import sys
import time

import torch


def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc/self/status")


def main():
    path, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "load")
    file_mb = os.path.getsize(path) / 2**20
    torch.zeros(1).sum()
    if mode == "model":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures"))
        from make_parity_fixtures import timm_vit  # noqa: E402  (imports timm: before the clock)
    base = status_mb("VmRSS:")
    t0 = time.perf_counter()
    if mode == "load":
        ck = torch.load(path, map_location="cpu", weights_only=True)
    elif mode in ("mmap", "mmap_touch"):
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if mode == "mmap_touch":
            ck = {"model": {k: t.clone() for k, t in ck["model"].items()}}
    elif mode == "model":
        ck = torch.load(path, map_location="cpu", weights_only=True)
        sd = ck["model"]
        name = {768: "vit_base_patch16", 1024: "vit_large_patch16", 1280: "vit_huge_patch14"}[
            sd["cls_token"].shape[-1]]
        model = timm_vit(name, 224, "fc_norm.weight" in sd, sd["head.weight"].shape[0])
        model.load_state_dict(sd, strict=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    secs = time.perf_counter() - t0
    peak = status_mb("VmHWM:")
    print(f"py-{mode} load_s={secs:.4f} base_mb={base:.0f} peak_above_mb={peak - base:.0f} "
          f"file_mb={file_mb:.0f}")


if __name__ == "__main__":
    main()
