#!/usr/bin/env bash
# Cold start on real Fashion-MNIST (docs/results.md, "Cold start: TypiClust vs random initial
# sets"): SimCLR-pretrain small_cnn on the pool (no labels), then 3 seeds x {random, typiclust}
# initial sets with the simulated oracle, both classifiers starting from the same weights, one run
# at a time; then the report, and the initial sets' class coverage with the paired differences.
# Resumes: a finished pretrain, run or report is not redone.
#
#   bash launch/typiclust_cold_start.sh [DATA_ROOT]    (default data/shards/fashion_mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data/shards/fashion_mnist}
TD=${TIDAL_DIST:-python -m tidal_dist}
CONFIG=configs/fashion_mnist_typiclust.yaml
WEIGHTS=runs/pretrained/fashion_mnist_small_cnn16_simclr.safetensors
OUT=runs/fashion_mnist_typiclust

$TD pretrain --config $CONFIG data.root="$DATA" --out $WEIGHTS \
    --epochs 4 --batch-size 128 --max-images 6400
for arm in random typiclust; do
    $TD sweep --config $CONFIG --strategies random --seeds 0,1,2 --jobs 1 \
        --out $OUT/${arm}_initial data.root="$DATA" model.weights=$WEIGHTS al.initial_strategy=$arm
done
$TD report $OUT/random_initial $OUT/typiclust_initial --out $OUT/report
python launch/typiclust_initial_sets.py $OUT/random_initial $OUT/typiclust_initial \
    --weights $WEIGHTS --out $OUT/report/initial_sets.md
