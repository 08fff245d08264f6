#!/bin/bash
# Reproduces docs/mhc.md §12 (about 15 CPU-minutes on 2 cores). BUILD = a CMake build folder.
set -euo pipefail
BUILD=${BUILD:-build}; OUT=${OUT:-/tmp/mhc_exp}; DOC=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"; cd "$OUT"
"$BUILD/bin/qwen" data prepare --tokenizer demo-out/tokenizer --input austen.txt --out data  # paths: adjust
run() {  # variant lr steps
  "$BUILD/bin/qwen" train --config "$DOC/cfg_$1.json" --data data --out "run_$1_lr$2" --steps "$3" \
    --batch 8 --seq 64 --lr "$2" --warmup 10 --eval-every 25 --eval-batches 4 --save-every 0 \
    --threads 1 --quiet --seed 1
}
for v in base hc mhc; do run $v 3e-3 250; run $v 1e-2 150; done
for lr in 3e-3 1e-2; do
  "$BUILD/bench/bench_mhc_experiment" --data data --svg "$DOC" --prefix "lr$lr" \
    baseline=run_base_lr$lr HC=run_hc_lr$lr mHC=run_mhc_lr$lr | tee "$DOC/summary_lr$lr.txt"
done
