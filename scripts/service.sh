#!/usr/bin/env bash
# Start Attune's whole service locally: PostgreSQL and Redis (started or installed by
# scripts/services.sh), a release build, the web dashboard's build (scripts/build-frontend.sh),
# the migrations, the api on http://127.0.0.1:8080 (dashboard at /) and one cpu worker.
#
#   scripts/service.sh          run in the foreground; Ctrl-C stops the api and the worker
#   scripts/service.sh start    run in the background (logs and pids in var/)
#   scripts/service.sh stop     stop what `start` started
#
# Settings (environment): DATABASE_URL (default postgres://postgres@127.0.0.1:5432/attune),
# REDIS_URL (redis://127.0.0.1:6379), ATTUNE_LISTEN (127.0.0.1:8080), ATTUNE_DATA_DIR (the data
# scripts/fetch-data.sh fetched), ATTUNE_OBJECT_STORE (var/objects: checkpoint bytes),
# ATTUNE_WORK_DIR (var/work). Paths inside job specs are read by the worker, whose working
# directory is the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-foreground}
mkdir -p var
pids=var/service.pids

stop() {
  if [[ -f $pids ]]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$pids"
    while read -r pid; do
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done <"$pids"
    rm -f "$pids"
    echo "[service] stopped"
  else
    echo "[service] not running (no $pids)"
  fi
}

case "$mode" in
  stop) stop; exit 0 ;;
  start | foreground) ;;
  *) echo "usage: scripts/service.sh [start|stop]" >&2; exit 2 ;;
esac
[[ -f $pids ]] && { echo "[service] already started (scripts/service.sh stop first)" >&2; exit 1; }

scripts/setup.sh
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
scripts/services.sh
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/attune}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export ATTUNE_LISTEN=${ATTUNE_LISTEN:-127.0.0.1:8080}
export ATTUNE_OBJECT_STORE=${ATTUNE_OBJECT_STORE:-$root/var/objects}
export ATTUNE_WORK_DIR=${ATTUNE_WORK_DIR:-$root/var/work}
# ATTUNE_BUILD_PROFILE=dev uses a debug build (faster to compile, slower to run).
profile=${ATTUNE_BUILD_PROFILE:-release}
echo "[service] building ($profile)"
SQLX_OFFLINE=true cargo build --profile "$profile" -q -p attune-api -p attune-worker -p attune-cli
scripts/build-frontend.sh
export ATTUNE_DASHBOARD_DIR=${ATTUNE_DASHBOARD_DIR:-$root/frontend/dist}
dir=$profile; [[ $profile == dev ]] && dir=debug
bin=${CARGO_TARGET_DIR:-$root/target}/$dir
"$bin/attune-api" migrate

if [[ $mode == start ]]; then
  nohup "$bin/attune-api" >var/api.log 2>&1 &
  echo $! >"$pids"
  nohup "$bin/attune-worker" >var/worker.log 2>&1 &
  echo $! >>"$pids"
else
  "$bin/attune-api" &
  echo $! >"$pids"
  "$bin/attune-worker" &
  echo $! >>"$pids"
  trap 'stop' INT TERM EXIT
fi
for _ in $(seq 1 100); do
  curl -fsS "http://$ATTUNE_LISTEN/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
if ! curl -fsS "http://$ATTUNE_LISTEN/readyz" >/dev/null; then
  echo "[service] the api did not become ready; see var/api.log" >&2
  stop
  exit 1
fi
echo "[service] api on http://$ATTUNE_LISTEN (dashboard at /, Swagger UI at /docs), one cpu worker"
echo "[service] make an API key: $bin/attune admin create-key --name me"
[[ $mode == start ]] && { echo "[service] logs: var/api.log, var/worker.log; stop: scripts/service.sh stop"; exit 0; }
wait
