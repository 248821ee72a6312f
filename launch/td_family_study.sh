#!/usr/bin/env bash
# The study of docs/results.md's "Imbalanced pools" and "The training-dynamics family" sections:
# Fashion-MNIST at imbalance ratio 10 and 100, and the measured-TD strategies, dynamicAL and TOD on
# the balanced protocol, 3 seeds, as resumable sweeps run one after another (each `--jobs 2`).
# Most informative first: seed 0 of every IR-10 series, then its other seeds, then IR 100, then
# the balanced additions. Rerunning this script resumes where it stopped (finished runs are
# skipped, unfinished ones resume from their last checkpoint).
#
#   OUT=runs-study nice -n 5 bash launch/td_family_study.sh      # OUT defaults to runs-study
#   tidal-dist report OUT/imb10_* --out docs/results/imbalanced10 --cartography-max-classes 0
#
# TIDAL_DIST (default: tidal-dist) is the command that runs the package.
# On a fresh clone, the finished runs already committed in COMPACT (default
# docs/results/td_family_runs, written by launch/compact_runs.sh) are copied into OUT first, so the
# sweeps skip them: a compacted run keeps every cycle's metrics, which is all a finished run needs.
set -euo pipefail
OUT=${OUT:-runs-study}
TD=${TIDAL_DIST:-tidal-dist}
COMPACT=${COMPACT:-docs/results/td_family_runs}
IMB10="random,margin,tidal_entropy,tidal_margin,td_measured_margin,label_dispersion,td_measured_entropy,dynamical,tod,entropy,badge"
IMB100="random,margin,tidal_entropy,tidal_margin,td_measured_margin"
# Random first (every comparison is paired with it), then the series the questions need most;
# TiDAL-M and TiDAL-H are re-run here so that the TD family is paired with them by seed (the runs are
# deterministic on a machine: docs/results.md, "Reproduce").
BALANCED="random,td_measured_margin,tidal_margin,dynamical,tod,td_measured_entropy,tidal_entropy,label_dispersion"

restore_finished() {  # copy each finished compacted run (and its sweep.json) missing from OUT
  [ -d "$COMPACT" ] || return 0
  local outcome run sweep_dir
  for outcome in "$COMPACT"/*/*/seed_*/outcome.json; do
    [ -f "$outcome" ] && grep -q '"status": "done"' "$outcome" || continue
    run=${outcome#"$COMPACT"/}; run=${run%/outcome.json}
    sweep_dir=${run%%/*}
    [ -e "$OUT/$run" ] && continue
    mkdir -p "$OUT/$run"
    cp -r "$COMPACT/$run/." "$OUT/$run/"
    [ -e "$OUT/$sweep_dir/sweep.json" ] || cp "$COMPACT/$sweep_dir/sweep.json" "$OUT/$sweep_dir/"
    echo "restored finished run $run from $COMPACT"
  done
}

sweep() {  # sweep CONFIG OUT STRATEGIES SEEDS [OVERRIDES...]
  local config=$1 out=$2 strategies=$3 seeds=$4
  shift 4
  echo "== $(date -u +%FT%TZ) sweep $out ($strategies; seeds $seeds)"
  $TD sweep --config "$config" --out "$OUT/$out" --strategies "$strategies" --seeds "$seeds" \
    --jobs 2 "$@"
}

restore_finished
for seeds in 0 1,2; do
  tag=${seeds/,/}
  sweep configs/fashion_mnist_imb10.yaml "imb10_seeds$tag" "$IMB10" "$seeds"
  sweep configs/fashion_mnist_imb10.yaml "imb10_ablation_seeds$tag" entropy,margin "$seeds" \
    train.objective=tidal
done
sweep configs/fashion_mnist_imb100.yaml imb100 "$IMB100" 0,1,2
sweep configs/fashion_mnist_study.yaml balanced_td_family "$BALANCED" 0,1,2 al.td_measure_every=4
echo "== $(date -u +%FT%TZ) done"
