#!/usr/bin/env bash
# The dashboard's end-to-end test in a real headless Chromium (Debian's `chromium`, installed
# when missing; driven by playwright-core from frontend/node_modules) against a running api +
# worker. Everything is fresh and removed afterwards: a Postgres database with a random name, a
# Redis key prefix, an object store and work folder, a port. A tiny source model is trained
# first (`attune run` of a 2-epoch, 300-image train spec: seconds), then frontend/e2e/run.mjs
# drives the pages. Screenshots of every page go to target/e2e-screenshots/ (ATTUNE_E2E_SHOTS).
#
#   scripts/e2e.sh            build (debug) + frontend, run
#   ATTUNE_E2E_KEEP=1 ...     leave the api, worker and database up afterwards (prints the URL)
#
# Called by scripts/test.sh (so `.ci/run` runs it) after the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log() { printf '[e2e] %s\n' "$*" >&2; }
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v chromium >/dev/null; then
  log "installing Debian's chromium"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
[[ -f frontend/dist/index.html && ${ATTUNE_E2E_NO_BUILD:-} == 1 ]] || scripts/build-frontend.sh ${ATTUNE_E2E_NPM_CI:+--ci}
scripts/services.sh
export SQLX_OFFLINE=true
log "building attune-api, attune-worker, attune (debug)"
cargo build -q -p attune-api -p attune-worker -p attune-cli
bin=${CARGO_TARGET_DIR:-$root/target}/debug

work=$(mktemp -d /tmp/attune-e2e.XXXXXX)
db="attune_e2e_$(basename "$work" | tr -dc 'a-zA-Z0-9' | tr 'A-Z' 'a-z')"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export ATTUNE_REDIS_PREFIX="$db:"
export ATTUNE_LISTEN="127.0.0.1:$port"
export ATTUNE_OBJECT_STORE="$work/objects"
export ATTUNE_WORK_DIR="$work/work"
export ATTUNE_DATA_DIR=${ATTUNE_DATA_DIR:-$HOME/.cache/attune/data}
export ATTUNE_DASHBOARD_DIR="$root/frontend/dist"
export RUST_LOG=${RUST_LOG:-warn}
pids=()
cleanup() {
  local rc=$?
  if [[ ${ATTUNE_E2E_KEEP:-} == 1 ]]; then
    log "kept: http://$ATTUNE_LISTEN (key in $work/key), pids ${pids[*]}, database $db"
    exit $rc
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$ATTUNE_REDIS_PREFIX*" 2>/dev/null | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

log "training the tiny source model"
cat >"$work/train.json" <<JSON
{"kind": "train", "dataset": "fashion_mnist", "epochs": 2, "batch_size": 50, "val_size": 100,
 "max_train_samples": 300, "hflip": false, "architecture": {"arch": "cnn", "channels": [4, 8, 8]},
 "seed": 7}
JSON
"$bin/attune" run "$work/train.json" --out "$work/model" --quiet --data-dir "$ATTUNE_DATA_DIR" >/dev/null

"$bin/attune-api" migrate >/dev/null
"$bin/attune-api" >"$work/api.log" 2>&1 &
pids+=($!)
"$bin/attune-worker" >"$work/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://$ATTUNE_LISTEN/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://$ATTUNE_LISTEN/readyz" >/dev/null || { log "the api did not become ready:"; cat "$work/api.log" >&2; exit 1; }
"$bin/attune" admin create-key --name e2e >"$work/key"

shots=${ATTUNE_E2E_SHOTS:-$root/target/e2e-screenshots}
rm -rf "$shots"
log "driving the dashboard at http://$ATTUNE_LISTEN"
set +e
(cd frontend && ATTUNE_E2E_URL="http://$ATTUNE_LISTEN" ATTUNE_E2E_KEY="$(cat "$work/key")" \
  ATTUNE_E2E_MODEL="$work/model/model.safetensors" ATTUNE_E2E_SHOTS="$shots" \
  timeout 300 node e2e/run.mjs)
rc=$?
set -e
if ((rc != 0)); then
  log "failed (exit $rc); last lines of the api and worker logs:"
  tail -20 "$work/api.log" >&2
  tail -20 "$work/worker.log" >&2
  exit $rc
fi
log "passed; screenshots in ${shots#$root/}/"
