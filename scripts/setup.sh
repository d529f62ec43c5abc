#!/usr/bin/env bash
# System prerequisites for building and testing Attune on Debian (run as root, or with sudo
# available). Installs what is missing; does nothing when everything is present.
set -euo pipefail
log() { printf '[setup] %s\n' "$*" >&2; }

need=()
command -v cc >/dev/null || need+=(build-essential)
command -v python3 >/dev/null || need+=(python3)
command -v pip >/dev/null || command -v pip3 >/dev/null || need+=(python3-pip)
command -v gzip >/dev/null || need+=(gzip)
command -v sha256sum >/dev/null || need+=(coreutils)
command -v curl >/dev/null || need+=(curl)
# The web dashboard's toolchain (frontend/) and its end-to-end test's browser.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
  log "installing Debian packages: ${need[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [[ -x "$d/cargo" ]] && export PATH="$d:$PATH"
  done
fi
if ! command -v cargo >/dev/null; then
  log "cargo not found: install a Rust toolchain (1.89 or newer) with rustup, then re-run"
  exit 1
fi
ver=$(cargo --version | awk '{print $2}')
if [[ "$(printf '%s\n1.89.0\n' "$ver" | sort -V | head -n1)" != "1.89.0" ]]; then
  log "cargo $ver is too old: Attune needs Rust 1.89 or newer"
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null; then
    rustup component add rustfmt clippy
  else
    log "cargo fmt / cargo clippy missing and no rustup to add them"; exit 1
  fi
fi
node_ver=$(node --version | tr -d v)
if [[ "$(printf '%s\n20.19.0\n' "$node_ver" | sort -V | head -n1)" != "20.19.0" ]]; then
  log "Node.js $node_ver is too old: the dashboard's toolchain (Vite 8, playwright-core) needs 20.19 or newer"
  log "(Debian 13's nodejs package, or a newer Node.js on PATH), then re-run"
  exit 1
fi
log "ok: $(cargo --version), node $node_ver, npm $(npm --version)"
