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
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
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
