# Sourced by launch/demo.sh and launch/test.sh: makes .venv with the pinned packages, installs the
# package in editable mode, and the Debian Fashion-MNIST files when apt is available.
# Idempotent: a second run only checks.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] creating .venv and installing tidal_dist with its pinned dependencies (a few minutes)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  # pip's log goes to a file, shown only if the install fails.
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[dev]"; } \
       > .venv/pip-install.log 2>&1; then
    tail -n 40 .venv/pip-install.log >&2
    echo "[setup] pip install failed; full log in .venv/pip-install.log" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
    >/dev/null 2>&1 || echo "[setup] apt could not install dataset-fashion-mnist; will try torchvision's download"
fi
if [ -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  FMNIST_SOURCE="fashion-mnist:$FMNIST_DIR"
else
  FMNIST_SOURCE="torchvision:fashion-mnist:data/raw"
fi
export FMNIST_SOURCE
export PATH="$REPO/.venv/bin:$PATH"
