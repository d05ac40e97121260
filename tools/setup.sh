#!/usr/bin/env bash
# Idempotent set-up for mae: the pinned Python reference environment (which also provides
# libtorch 2.11 for tch) and the Debian packages the tests use. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
REQ="$ROOT/tools/requirements.txt"
STAMP="$VENV/.requirements.sha256"

say() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 not found: install Python 3.10+ first"
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi

want=$(sha256sum "$REQ" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  say "installing pinned packages from tools/requirements.txt (torch 2.11.0 is ~4.7 GB, first time only)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip || die "pip upgrade failed"
  "$VENV/bin/python" -m pip install --quiet -r "$REQ" || die "pip install -r tools/requirements.txt failed"
  echo "$want" > "$STAMP"
else
  say "Python packages already match tools/requirements.txt"
fi

tv=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)') || die "torch does not import from $VENV"
case "$tv" in 2.11.0*) say "torch $tv";; *) die "torch $tv installed, tch 0.24 needs 2.11.0";; esac

# Pillow 13.0.0 beside the pinned 12 (its resize may run the vertical pass first): the parity
# test of `--pillow 13` (tests/pipeline/preprocess_table.rs) imports it with
# PYTHONPATH=.venv/pillow13.
P13="$VENV/pillow13"
if PYTHONPATH="$P13" "$VENV/bin/python" -c 'import PIL, sys; sys.exit(PIL.__version__ != "13.0.0")' 2>/dev/null; then
  say "Pillow 13.0.0 present in $P13"
else
  say "installing Pillow 13.0.0 into $P13"
  "$VENV/bin/python" -m pip install --quiet --no-deps --upgrade --target "$P13" pillow==13.0.0 \
    || die "pip install --target $P13 pillow==13.0.0 failed"
fi

# libtorch for tch: point a stable path at the wheel's torch directory (.cargo/config.toml uses it).
TORCH_DIR=$("$VENV/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
ln -sfn "$TORCH_DIR" "$ROOT/.libtorch"
say "libtorch: .libtorch -> $TORCH_DIR"

# Debian packages: cmake and nasm build the vendored libjpeg-turbo (Pillow-exact JPEG decoding).
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: $*"
    (apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }) \
      || die "apt-get install $* failed"
  else
    die "missing $*: install them (Debian: sudo apt-get install $*) and re-run"
  fi
}
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v nasm >/dev/null || missing+=(nasm)
[ ${#missing[@]} -eq 0 ] && say "cmake and nasm present" || apt_install "${missing[@]}"

# Fashion-MNIST (pre-training / fine-tuning tests).
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  say "Fashion-MNIST present"
else
  apt_install dataset-fashion-mnist
fi

# c10d for data-parallel training (csrc/c10d.cpp, src/torch/distributed/): ProcessGroupGloo.hpp
# includes gloo's headers, which the torch wheel does not ship (only c10d:: symbols are called,
# those resolve in libtorch_cpu, so Debian's gloo version does not matter).
if [ -f /usr/include/gloo/algorithm.h ]; then
  say "gloo headers present"
else
  apt_install libgloo-dev
fi

# The NCCL build (`cargo build --release --features nccl`): nccl.h comes with torch's nvidia-nccl
# wheel, the CUDA runtime headers with nvidia-cuda-runtime; the crt/ and cccl/ headers they need
# are pinned here, beside the venv's packages (not imported by Python).
CUDA_HEADERS="$VENV/cuda-headers"
if [ -f "$CUDA_HEADERS/nvidia/cu13/include/crt/host_config.h" ] && [ -d "$CUDA_HEADERS/nvidia/cu13/include/cccl/cuda" ]; then
  say "CUDA crt/cccl headers present in $CUDA_HEADERS"
else
  say "installing the CUDA crt/cccl headers into $CUDA_HEADERS"
  "$VENV/bin/python" -m pip install --quiet --no-deps --upgrade --target "$CUDA_HEADERS" \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85 \
    || die "pip install --target $CUDA_HEADERS nvidia-cuda-crt nvidia-cuda-cccl failed"
fi

# The demo checkpoint README's first command inspects, written in the official format.
mkdir -p "$ROOT/target/fixtures"
if [ ! -f "$ROOT/target/fixtures/demo_vit_base_patch16.pth" ]; then
  say "writing demo checkpoint target/fixtures/demo_vit_base_patch16.pth (official format, random weights)"
  "$VENV/bin/python" "$ROOT/tools/fixtures/make_demo_checkpoint.py" "$ROOT/target/fixtures/demo_vit_base_patch16.pth" \
    || die "tools/fixtures/make_demo_checkpoint.py failed"
fi
say "done"
