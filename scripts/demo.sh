#!/usr/bin/env bash
# The main job on a fresh machine, embedded mode (no servers):
#   1. system prerequisites, 2. real Fashion-MNIST and MNIST (sha256-checked), 3. release build,
#   4. train the Fashion-MNIST source model once (cached in runs/fmnist-train; delete it to
#      retrain), 5. continual Fashion-MNIST-C at severity 5: Source vs test-time BN vs TENT.
# Prints the per-corruption table; results land in runs/fmnist-c-tent/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
scripts/fetch-data.sh
cargo build --release -p attune-cli
attune=target/release/attune
if [[ -f runs/fmnist-train/model.safetensors && -f runs/fmnist-train/model.json ]]; then
  echo "[demo] using the cached source model runs/fmnist-train/model.safetensors"
else
  echo "[demo] training the source model (once; cached in runs/fmnist-train)"
  $attune run examples/fmnist-train.toml
fi
$attune run examples/fmnist-c-tent.toml
