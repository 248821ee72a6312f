#!/usr/bin/env bash
# Copy what `tidal-dist report` reads from a tree of runs into a small tree that can be committed:
# each run's config.yaml, outcome.json and cycles/*/metrics.json, and each sweep's sweep.json
# (no checkpoints, TD buffers or extracted images: a 5-cycle run's copy is a few tens of KB).
# Reports built from the copy equal those built from the runs, except the data maps, which need
# the TD buffers (pass --cartography-max-classes 0).
#
#   bash launch/compact_runs.sh runs-study docs/results/td_family/runs
#   tidal-dist report docs/results/td_family/runs/imb10_* --out docs/results/imbalanced10 \
#       --cartography-max-classes 0
#
# Rerunning it refreshes the copy (runs that committed more cycles since are updated).
set -euo pipefail
src=${1:?usage: compact_runs.sh RUNS_DIR DEST_DIR}
dest=${2:?usage: compact_runs.sh RUNS_DIR DEST_DIR}
[ -d "$src" ] || { echo "compact_runs.sh: $src is not a folder of runs" >&2; exit 2; }
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
cd "$src"
find . \( -name config.yaml -o -name outcome.json -o -name sweep.json \
          -o -path '*/cycles/cycle_*/metrics.json' \) -type f -print0 |
  xargs -0 -r cp --parents -t "$dest"
echo "compact_runs.sh: $(find "$dest" -name config.yaml | wc -l) runs copied to $dest"
