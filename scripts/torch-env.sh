#!/usr/bin/env bash
# A Python environment with PyTorch (CPU use) for the reference scripts: the PyTorch fixtures of
# the methods (scripts/reference/) and the speed benchmark against PyTorch.
#
#   scripts/torch-env.sh        → prints the path of the environment's python, creating it once
#
# The environment lives in $ATTUNE_TORCH_VENV (default ~/.cache/attune/torch-venv), outside the
# repository, and is reused by every later call. torch comes from PyPI with pip; pinned so that
# fixtures and benchmark figures are comparable across machines.
set -euo pipefail
VENV="${ATTUNE_TORCH_VENV:-$HOME/.cache/attune/torch-venv}"
TORCH_VERSION="${ATTUNE_TORCH_VERSION:-2.15.0}"
log() { printf '[torch-env] %s\n' "$*" >&2; }
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import torch, numpy; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null; then
  echo "$VENV/bin/python"; exit 0
fi
command -v python3 >/dev/null || { log "python3 is missing: run scripts/setup.sh"; exit 1; }
python3 -m venv "$VENV" 2>/dev/null || {
  log "python3 -m venv failed; installing python3-venv"
  apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"
}
log "installing torch==$TORCH_VERSION and numpy into $VENV (once; a few minutes)"
"$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy >&2
echo "$VENV/bin/python"
