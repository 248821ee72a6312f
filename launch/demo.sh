#!/usr/bin/env bash
# The demo: set up the environment, prepare Fashion-MNIST as WebDataset shards, verify them, run
# TiDAL and Random on the CPU (2 processes each, gloo, same seed) as one sweep, compare them with
# `tidal-dist report`, and print where the comparison plot is.
# Re-running it resumes (a finished run is skipped) instead of starting over.
set -euo pipefail
source "$(dirname "$0")/env.sh"
SHARDS=data/shards/fashion_mnist
SWEEP_DIR="${SWEEP_DIR:-runs/fashion_mnist_demo}"

echo "[demo] preparing Fashion-MNIST from $FMNIST_SOURCE"
tidal-dist prepare --source "$FMNIST_SOURCE" --out "$SHARDS"
tidal-dist inspect "$SHARDS" --verify

echo "[demo] TiDAL and Random, seed 0, 2 processes each (accelerate launch, gloo) into $SWEEP_DIR"
# ACCELERATE_USE_CPU keeps accelerate launch from looking for GPUs on a CPU-only machine. The
# sweep runs its runs one after another inside these 2 processes.
ACCELERATE_USE_CPU=1 accelerate launch --config_file launch/accelerate/cpu_2proc.yaml \
  -m tidal_dist sweep --config configs/fashion_mnist_demo.yaml \
  --strategies tidal_entropy,random --seeds 0 --out "$SWEEP_DIR" "$@"

echo "[demo] comparing them"
tidal-dist report "$SWEEP_DIR" --out "$SWEEP_DIR/report"
echo "[demo] done: comparison plot $SWEEP_DIR/report/fashion_mnist/accuracy.png"
echo "[demo]       report (tables, class histograms, timings) $SWEEP_DIR/report/report.md"
