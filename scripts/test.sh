#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this): prerequisites, real data for
# the real-data tests, formatting, lints, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
scripts/fetch-data.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
ATTUNE_REAL_DATA=1 cargo test --workspace
