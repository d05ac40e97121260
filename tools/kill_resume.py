"""kill -9 a `mae pretrain` run that saves every epoch, at random moments and while it writes
checkpoint-N.pth, then resume it from its newest checkpoint, until it finishes.

After every kill, every checkpoint-*.pth in the output directory must be complete:
torch.load(weights_only=True) reads it and it holds the epoch its name says. At the end every
checkpoint must equal, tensor for tensor (model and AdamW state), the checkpoint of the same
epoch of an uninterrupted run, and no temporary file may be left.

    .venv/bin/python tools/kill_resume.py target/release/mae WORKDIR --kills 50
(tests/training/kill_resume.rs runs it with --kills 4; docs/RELIABILITY.md has the long run.)
"""
import argparse
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import torch


def pretrain_cmd(mae, out_dir, epochs, resume=None):
    cmd = [mae, "pretrain", "--model", "mae_vit_tiny_patch4", "--input_size", "32",
           "--dataset", "fashion_mnist", "--train_subset", "16", "--batch_size", "8",
           "--epochs", str(epochs), "--save_freq", "1", "--warmup_epochs", "1",
           "--num_workers", "2", "--device", "cpu", "--seed", "3",
           "--output_dir", out_dir, "--log_dir", out_dir]
    if resume:
        cmd += ["--resume", resume]
    return cmd


def checkpoints(out_dir):
    found = {}
    for p in glob.glob(os.path.join(out_dir, "checkpoint-*.pth")):
        m = re.fullmatch(r"checkpoint-(\d+)\.pth", os.path.basename(p))
        if m:
            found[int(m.group(1))] = p
    return found


def temporaries(out_dir, pid=None):
    """Temporary files in out_dir (of process `pid` only: `.checkpoint-N.pth.tmp<pid>`)."""
    return [n for n in os.listdir(out_dir)
            if ".tmp" in n and (pid is None or n.endswith(f".tmp{pid}"))]


def check_complete(out_dir):
    """Every checkpoint on disk loads with weights_only=True and holds its epoch."""
    for epoch, path in checkpoints(out_dir).items():
        c = torch.load(path, weights_only=True)
        assert c["epoch"] == epoch, f"{path}: epoch {c['epoch']}"
        assert set(c) >= {"model", "optimizer", "epoch", "scaler", "args"}, f"{path}: {list(c)}"


def same(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mae")
    ap.add_argument("workdir")
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    ref_dir, run_dir = (os.path.join(args.workdir, d) for d in ("reference", "killed"))
    for d in (ref_dir, run_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    t0 = time.time()
    subprocess.run(pretrain_cmd(args.mae, ref_dir, args.epochs), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_time = time.time() - t0

    kills = {"random": 0, "during checkpoint write": 0}
    starts = rounds = 0
    while sum(kills.values()) < args.kills:
        # one round: from scratch, killed and resumed until its last checkpoint is written
        rounds += 1
        shutil.rmtree(run_dir)
        os.makedirs(run_dir)
        while True:
            done = checkpoints(run_dir)
            resume = done[max(done)] if done else None
            if resume and max(done) == args.epochs - 1:
                break
            proc = subprocess.Popen(pretrain_cmd(args.mae, run_dir, args.epochs, resume),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            starts += 1
            n_kills = sum(kills.values())
            if n_kills < args.kills:
                # every other kill waits for a checkpoint's temporary file to appear
                # (of a checkpoint drawn from those this start will write)
                on_write = n_kills % 2 == 1
                target = f".checkpoint-{rng.randrange(max(done, default=-1) + 1, args.epochs)}.pth"
                wait = 2 * run_time if on_write else rng.uniform(0.0, run_time)
                deadline = time.time() + wait
                while proc.poll() is None and time.time() < deadline:
                    if on_write and any(n.startswith(target)
                                        for n in temporaries(run_dir, proc.pid)):
                        break
                    time.sleep(0.0005 if on_write else 0.005)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    hit_write = bool(temporaries(run_dir, proc.pid))
                    kills["during checkpoint write" if hit_write else "random"] += 1
            err = proc.communicate()[1]
            if proc.returncode not in (0, -signal.SIGKILL):
                sys.exit(f"mae pretrain failed ({proc.returncode}):\n{err.decode()}")
            check_complete(run_dir)
        compare(ref_dir, run_dir, args.epochs)
    print(f"kills: {sum(kills.values())} ({kills['random']} at random moments, "
          f"{kills['during checkpoint write']} while a checkpoint was being written); "
          f"{starts} starts in {rounds} runs; after each run its {args.epochs} checkpoints "
          f"were bit-identical to the uninterrupted run's ({run_time:.1f} s uninterrupted, "
          f"{time.time() - t0:.0f} s in all)")


def compare(ref_dir, run_dir, epochs):
    """No temporary file left; every checkpoint equals the uninterrupted run's."""
    left = temporaries(run_dir)
    assert not left, f"temporary files left: {left}"
    ref = checkpoints(ref_dir)
    run = checkpoints(run_dir)
    assert sorted(ref) == sorted(run) == list(range(epochs)), (sorted(ref), sorted(run))
    for epoch in ref:
        a = torch.load(ref[epoch], weights_only=True)
        b = torch.load(run[epoch], weights_only=True)
        for key in ("model", "optimizer", "epoch", "scaler"):
            same(a[key], b[key], f"checkpoint-{epoch}.pth['{key}']")


if __name__ == "__main__":
    main()
