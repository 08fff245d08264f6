#!/bin/bash
# docs/experiments/lora_memory.sh — memory and step time of full training vs LoRA vs QLoRA on
# the 124.7M preset shape (docs/guide.md, docs/troubleshooting.md): one process per mode
# (build/bench/bench_lora_memory), so each peak RSS is that mode's alone.
# Usage: lora_memory.sh BUILD_DIR WORK_DIR [THREADS]
set -euo pipefail
B=$1 WORK=$2 THREADS=${3:-2}
mkdir -p "$WORK"
[ -f "$WORK/f32/config.json" ] || "$B/bin/qwen" init --preset 125m --seed 1 --out "$WORK/f32" >/dev/null
[ -f "$WORK/nf4/config.json" ] || "$B/bin/qwen" quantize --model "$WORK/f32" --type nf4 --out "$WORK/nf4" >/dev/null
for mode in full lora qlora; do
  dir=$WORK/f32; [ "$mode" = qlora ] && dir=$WORK/nf4
  "$B/bench/bench_lora_memory" --model "$dir" --mode "$mode" --steps 3 --batch 4 --seq 128 --rank 8 --threads "$THREADS"
done
