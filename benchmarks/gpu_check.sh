#!/usr/bin/env bash
# The GPU check (docs/gpu-check.md): run on a GPU box that has its own Python 3.12, PyTorch,
# torchvision and accelerate, and no network. Installs the pure-Python packages it lacks from a
# local wheel folder into a temporary folder (never torch, never into the system), runs from this
# source tree, and writes OUT_DIR/gpu_check.json + gpu_check.md. Under 8 minutes.
#
#   bash benchmarks/gpu_check.sh WHEEL_DIR OUT_DIR [--cpu-dry-run] [--force-install]
#
#   --cpu-dry-run    tiny sizes on the CPU: checks the script, not the GPU
#   --force-install  install every listed package from WHEEL_DIR even where one is importable
#                    (how the install step is tested on a machine that has them all)
# Environment: PYTHON (default python3), GPU_CHECK_TIMEOUT (seconds, default 470).
set -euo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh WHEEL_DIR OUT_DIR [--cpu-dry-run] [--force-install]" >&2; exit 2; }
[ $# -ge 2 ] || usage
WHEELS=$1; OUT=$2; shift 2
DRY=""; FORCE=0
for arg in "$@"; do
  case $arg in
    --cpu-dry-run) DRY=--cpu-dry-run ;;
    --force-install) FORCE=1 ;;
    *) usage ;;
  esac
done
PY=${PYTHON:-python3}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -d "$WHEELS" ] || { echo "gpu_check: wheel folder '$WHEELS' does not exist" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# What the box must bring itself: compiled against its CUDA, never installed from the wheels.
"$PY" - <<'PYEOF' || exit 2
import sys
missing = []
for mod in ("torch", "torchvision", "accelerate", "numpy"):
    try:
        __import__(mod)
    except ImportError:
        missing.append(mod)
if missing:
    sys.exit(f"gpu_check: this Python lacks {', '.join(missing)}; the check uses the box's own "
             f"(never installs them)")
import torch, torchvision
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision "
      f"{torchvision.__version__}, cuda {torch.cuda.is_available()}")
PYEOF

# module:distribution pairs the product imports that a bare GPU image may lack.
NEEDED="wids:wids webdataset:webdataset braceexpand:braceexpand yaml:PyYAML tqdm:tqdm psutil:psutil PIL:Pillow matplotlib:matplotlib contourpy:contourpy cycler:cycler fontTools:fonttools kiwisolver:kiwisolver pyparsing:pyparsing dateutil:python-dateutil packaging:packaging"
# What some versions of the packages above import (python-dateutil 2.x: six; 4.x: tzdata):
# installed when missing and the wheel folder has them.
OPTIONAL="six:six tzdata:tzdata"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tidal_gpu_check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
wanted() { [ "$FORCE" = 1 ] || ! "$PY" -c "import $1" 2>/dev/null; }  # module to install?
install=()
for pair in $NEEDED; do
  if wanted "${pair%%:*}"; then install+=("${pair#*:}"); fi
done
for pair in $OPTIONAL; do
  if wanted "${pair%%:*}" && compgen -G "$WHEELS/${pair#*:}-*.whl" > /dev/null; then
    install+=("${pair#*:}")
  fi
done
if [ ${#install[@]} -gt 0 ]; then
  echo "gpu_check: installing from $WHEELS into $TMP/site: ${install[*]}"
  # --no-deps and an explicit list: nothing else (torch above all) is pulled in or replaced.
  "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$TMP/site" \
    "${install[@]}" || { echo "gpu_check: the wheel folder '$WHEELS' lacks a wheel for this Python;" \
                              "fill it as docs/gpu-check.md says" >&2; exit 2; }
fi
export PYTHONPATH="$TMP/site:$SRC${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; assert '$TMP' not in torch.__file__, 'torch must be the box own'"
# Everything the check imports, before it starts: a missing piece is named here, not mid-run.
"$PY" -c "import wids, webdataset, yaml, tqdm, psutil, PIL, matplotlib.pyplot" || {
  echo "gpu_check: a package above does not import; add its wheel to '$WHEELS' (docs/gpu-check.md)" >&2
  exit 2; }

cd "$SRC"
echo "gpu_check: running from $SRC, results into $OUT"
status=0
timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py --out "$OUT" --work "$TMP/work" $DRY || status=$?
if [ $status -eq 124 ]; then echo "gpu_check: stopped after ${GPU_CHECK_TIMEOUT:-470} s" >&2; fi
exit $status
