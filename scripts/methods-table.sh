#!/usr/bin/env bash
# The methods table of docs/methods.md: every TTA method against Source on Fashion-MNIST-C and
# MNIST-C (15 corruptions, severity 5; continual, mixed_domains, correlated), one command.
# Trains the two source models first if they are not cached in runs/.
#   scripts/methods-table.sh            → runs/methods/<spec>/result.json + the markdown table
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
scripts/fetch-data.sh
cargo build --release -p attune-cli
attune=target/release/attune
for ds in fmnist mnist; do
  if [[ ! -f runs/$ds-train/model.safetensors ]]; then
    $attune run examples/$ds-train.toml
  fi
done
results=()
for spec in examples/methods/{fmnist,mnist}-c-{continual,mixed_domains,correlated}.toml; do
  name=$(basename "$spec" .toml)
  $attune run "$spec" --out "runs/methods/$name"
  results+=("runs/methods/$name/result.json")
done
python3 scripts/methods_table.py "${results[@]}"
