#!/usr/bin/env bash
# The speed benchmark: Attune against PyTorch on the same weights, stream and thread count
# (not part of the test suite; figures and how to read them: docs/speed.md).
#
#   scripts/bench.sh                        # CPU, 2 threads: cnn + resnet20 × source/norm_test/tent/eata/cotta × batch 1/64/200, parity
#   scripts/bench.sh --models cnn --batches 200 --methods tent   # any `attune-bench run` flag (--help lists them)
#   scripts/bench.sh memory                 # peak RSS of TENT over a 100 000-image stream (`attune-bench memory` flags follow)
#   ATTUNE_BENCH_DEVICE=cuda:0 scripts/bench.sh   # on a machine with an NVIDIA GPU: builds with --features cuda,
#                                                 # PyTorch runs on the same device (see docs/speed.md)
#
# Results go to runs/bench/ (results.json, results.md, memory-*.json). PyTorch comes from
# scripts/torch-env.sh (a cached venv; override with ATTUNE_TORCH_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
scripts/fetch-data.sh >/dev/null
features=()
if [[ "${ATTUNE_BENCH_DEVICE:-cpu}" == cuda* ]]; then
  features=(--features cuda)
fi
cargo build --release -q -p attune-bench "${features[@]}"
cmd=run
if [[ "${1:-}" == run || "${1:-}" == memory ]]; then
  cmd=$1
  shift
fi
if [[ $cmd == run ]]; then
  ATTUNE_TORCH_PYTHON="${ATTUNE_TORCH_PYTHON:-$(scripts/torch-env.sh)}"
  export ATTUNE_TORCH_PYTHON
fi
echo "[bench] $(date -u '+%F %H:%M UTC'); $(nproc) CPUs: $(lscpu | sed -n 's/^Model name: *//p'); load average $(cut -d' ' -f1-3 /proc/loadavg)"
exec target/release/attune-bench "$cmd" "$@"
