#!/usr/bin/env bash
# A Python environment with llama-cpp-python, the reference the sampling benchmark compares
# Attune's batched decoding against (same GGUF file, same prompt, same machine, same run).
#
#   scripts/llama-cpp-env.sh     → prints the path of the environment's python, creating it once
#
# llama-cpp-python is published as a source distribution: pip builds llama.cpp with CMake (pulled
# in as a build dependency from PyPI), which takes 10–30 minutes on two cores. The environment
# lives in $ATTUNE_LLAMA_VENV (default ~/.cache/attune/llama-venv) and is reused by later calls.
# Pinned so that figures are comparable across machines.
set -euo pipefail
VENV="${ATTUNE_LLAMA_VENV:-$HOME/.cache/attune/llama-venv}"
VERSION="${ATTUNE_LLAMA_CPP_VERSION:-0.3.36}"
log() { printf '[llama-cpp-env] %s\n' "$*" >&2; }
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import llama_cpp; assert llama_cpp.__version__ == '$VERSION'" 2>/dev/null; then
  echo "$VENV/bin/python"; exit 0
fi
command -v python3 >/dev/null || { log "python3 is missing: run scripts/setup.sh"; exit 1; }
python3 -m venv "$VENV" 2>/dev/null || {
  log "python3 -m venv failed; installing python3-venv"
  apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$VENV"
}
log "building llama-cpp-python==$VERSION into $VENV (once; 10-30 minutes on two cores)"
# Build jobs: ATTUNE_LLAMA_BUILD_JOBS (default: all cores). The build uses the CPU's vector
# extensions (llama.cpp's default native build), as a user installing it would get.
CMAKE_BUILD_PARALLEL_LEVEL="${ATTUNE_LLAMA_BUILD_JOBS:-$(nproc)}" \
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir "llama-cpp-python==$VERSION" >&2
echo "$VENV/bin/python"
