#!/usr/bin/env bash
# The demo: set up the environment, prepare Fashion-MNIST as WebDataset shards, verify them, run a
# short 2-process TiDAL experiment on the CPU (gloo), and print where the results are.
# Re-running it resumes the experiment instead of starting over.
set -euo pipefail
source "$(dirname "$0")/env.sh"
SHARDS=data/shards/fashion_mnist
RUN_DIR="${RUN_DIR:-runs/fashion_mnist_demo}"

echo "[demo] preparing Fashion-MNIST from $FMNIST_SOURCE"
tidal-dist prepare --source "$FMNIST_SOURCE" --out "$SHARDS"
tidal-dist inspect "$SHARDS" --verify

echo "[demo] running TiDAL with 2 processes (accelerate launch, gloo) into $RUN_DIR"
# ACCELERATE_USE_CPU keeps accelerate launch from looking for GPUs on a CPU-only machine.
ACCELERATE_USE_CPU=1 accelerate launch --config_file launch/accelerate/cpu_2proc.yaml \
  -m tidal_dist run --config configs/fashion_mnist_demo.yaml "run.dir=$RUN_DIR" "$@"
echo "[demo] done: see $RUN_DIR/results.md"
