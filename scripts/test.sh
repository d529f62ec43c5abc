#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this): prerequisites, real data for
# the real-data tests, PostgreSQL and Redis for the service's integration tests (started, or
# installed, by scripts/services.sh), formatting, lints, then every test of the workspace, then
# the dashboard's end-to-end test in headless Chromium (scripts/e2e.sh: `npm ci`, the frontend
# build, a running api + worker).
# SQL is checked at compile time against the committed .sqlx/ (SQLX_OFFLINE=true); after
# changing a query or a migration, run scripts/sqlx-prepare.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
scripts/fetch-data.sh
scripts/services.sh
export SQLX_OFFLINE=true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
ATTUNE_REAL_DATA=1 cargo test --workspace
ATTUNE_E2E_NPM_CI=1 scripts/e2e.sh
