#!/usr/bin/env bash
# Build the web dashboard: frontend/ (Vite + TypeScript + uPlot) → frontend/dist, the static
# assets attune-api serves at / (ATTUNE_DASHBOARD_DIR, default frontend/dist).
#
#   scripts/build-frontend.sh        npm ci only when node_modules is missing or older than the
#                                    lockfile, then type-check and build
#   scripts/build-frontend.sh --ci   always a clean `npm ci` first (what scripts/test.sh does)
#
# Needs Node.js 20.19 or newer and npm (scripts/setup.sh installs or checks them). The packages
# come from whatever npm registry the machine is configured for; package-lock.json pins them by
# integrity hash.
set -euo pipefail
cd "$(dirname "$0")/../frontend"
log() { printf '[frontend] %s\n' "$*" >&2; }
if [[ ${1:-} == --ci || ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
log "type-check and build"
npm run --silent build -- --logLevel warn
log "built $(ls dist/assets | wc -l) assets into frontend/dist"
