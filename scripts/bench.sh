#!/usr/bin/env bash
# `make bench`: every benchmark program plus end-to-end `qwen bench` on the 124.7M-parameter
# Qwen2 shape (F32 and BF16), 2 threads. Figures go to stdout; docs/benchmarks.md records them.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=build/bin/qwen
B=build/bench
OUT=${BENCH_OUT:-build/bench-models}
mkdir -p "$OUT"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for prog in bench_machine bench_matmul bench_attention bench_tokenizer; do
  [ -x "$B/$prog" ] || continue
  echo; echo "## $prog"; "$B/$prog"
done
# Small-M products of batched serving (ours vs OpenBLAS vs oneDNN) and the serving ceiling they
# imply (issue 7): the demo model's shapes and the 124.7M model's.
if [ -x "$B/bench_matmul" ]; then
  for what in small small-big; do
    echo; echo "## bench_matmul --only $what"; "$B/bench_matmul" --only $what
  done
fi
for dt in f32 bf16; do
  [ -d "$OUT/q125m-$dt" ] || $Q init --preset 125m --dtype $dt --seed 1 --out "$OUT/q125m-$dt" >/dev/null
  for pl in 128 512; do
    echo; echo "## qwen bench --model q125m-$dt --prompt-len $pl --gen-len 64 --threads 2"
    $Q bench --model "$OUT/q125m-$dt" --prompt-len $pl --gen-len 64 --threads 2 --reps 3
  done
done
# Serving: aggregate tok/s and TTFT / inter-token latency at 1, 4, 16, 64 concurrent streams.
if [ -x "$B/bench_serve" ]; then
  for dt in f32; do
    echo; echo "## bench_serve --model q125m-$dt --levels 1,4,16,64"
    "$B/bench_serve" --qwen "$Q" --model "$OUT/q125m-$dt" --levels 1,4,16,64
  done
fi
