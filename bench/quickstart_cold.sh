#!/usr/bin/env bash
# The README's quick start, cold, for an older commit and this checkout, alternated round by round:
#
#   bench/quickstart_cold.sh [OLD_COMMIT (default 0a8064c)] [ROUNDS (default 2)]
#
# Each run takes a fresh `git archive` of its commit (no numba cache, no .pyc) and a fresh
# GROUNDED_CACHE holding only the weights (so an encoder export, where the code makes one, is paid in
# the run), and times `bin/grounded run pipelines/auto_masks.yaml samples/`. Each commit runs in the
# environment of its own constraints.txt (bin/env builds it on first use). Prints seconds and masks found.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
old=${1:-0a8064c}
rounds=${2:-2}
weights=${GROUNDED_CACHE:-$HOME/.cache/grounded}/weights
work=$(mktemp -d "${TMPDIR:-/tmp}/grounded-quickstart.XXXXXX")
trap 'rm -rf "$work"' EXIT
for round in $(seq "$rounds"); do
  for commit in "$old" HEAD; do
    code="$work/code" cache="$work/cache"
    rm -rf "$code" "$cache" && mkdir -p "$code" "$cache"
    git -C "$repo" archive "$commit" | tar -x -C "$code"
    ln -s "$weights" "$cache/weights"
    start=$(date +%s.%N)
    (cd "$code" && GROUNDED_CACHE="$cache" HF_HUB_OFFLINE=1 \
       bin/grounded run pipelines/auto_masks.yaml samples/ --out "$code/out" >"$work/log.txt" 2>&1) \
      || { echo "round $round $commit failed:"; tail -5 "$work/log.txt"; exit 1; }
    seconds=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
    masks=$(python3 -c "import json; print(len(json.load(open('$code/out/coco.json'))['annotations']))")
    echo "round $round  $commit  ${seconds} s  $masks masks"
  done
done
