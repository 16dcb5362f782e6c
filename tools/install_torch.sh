#!/usr/bin/env bash
# Install torch into a venv for `make setup`, choosing what fits the disk.
#   install_torch.sh PYTHON "TORCH_PIN" [INDEX_URL]
# - a torch >= 2.4 that imports is kept (with or without torchvision: torchvision is optional);
# - INDEX_URL given: the pinned torch + torchvision from that index;
# - else, with room for it: the pinned torch + torchvision from the plain index. On x86_64 that is the
#   CUDA build, about 5.5 GB installed, since PyPI has no CPU-only x86_64 wheel;
# - else, a CPU-only torch wheel kept on this machine's disk (/opt/wheels or $TORCH_WHEEL_DIR), about
#   0.9 GB, without torchvision: PyPI's torchvision is built against the CUDA torch and cannot import
#   beside a CPU one, so `torchvision:NAME` models, image folders and their tests are left out (the
#   tests say "skipped: torchvision").
# Why: a CI machine ran out of disk installing the CUDA build (errno 28), which failed the whole suite.
set -euo pipefail
py=$1
pin=$2
index=${3:-}
need_kb=$((7 * 1024 * 1024))  # the CUDA build plus pip's unpacking room

if "$py" -c "import torch, sys; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 4))" 2>/dev/null; then
  exit 0
fi
if [ -n "$index" ]; then
  exec "$py" -m pip install -q --no-cache-dir --index-url "$index" $pin
fi
venv_dir=$(dirname "$(dirname "$py")")
free_kb=$(df -Pk "$venv_dir" | awk 'NR == 2 {print $4}')
if [ "$free_kb" -ge "$need_kb" ]; then
  exec "$py" -m pip install -q --no-cache-dir $pin
fi
tag=$("$py" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
wheel=$(ls -1 "${TORCH_WHEEL_DIR:-/opt/wheels}"/torch-*+cpu-"$tag"-"$tag"-*"$(uname -m)".whl 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$wheel" ]; then
  echo "install_torch: $((free_kb / 1024)) MB free beside $venv_dir, and torch ($pin) needs about $((need_kb / 1024)) MB;" \
       "free some disk, or install a torch >= 2.4 into the venv yourself, then run make again" >&2
  exit 2
fi
echo "install_torch: only $((free_kb / 1024)) MB free, so the CPU-only $(basename "$wheel") without torchvision" \
     "(torchvision:NAME models, image folders and their tests are skipped)" >&2
exec "$py" -m pip install -q --no-cache-dir "$wheel"
