#!/usr/bin/env bash
# `make demo`: the main job on the embedded default. For now (core engine): write a small
# random-weight Qwen2 model folder, inspect it, generate from it, and print tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=build/bin/qwen
OUT=demo-out
mkdir -p "$OUT"
echo "== qwen init: a random-weight Qwen2 model (26M parameters, Hugging Face folder)"
$Q init --preset 26m --dtype bf16 --seed 1 --out "$OUT/model-26m"
echo
echo "== qwen info"
$Q info --model "$OUT/model-26m"
echo
echo "== qwen generate (top-p 0.9, temperature 0.8; random weights give random ids)"
$Q generate --model "$OUT/model-26m" --prompt-ids 1,2,3,4,5,6,7,8 --max-new-tokens 32 \
  --temperature 0.8 --top-p 0.9 --seed 7 --ignore-eos
echo
echo "== qwen bench (prompt 128, generate 64)"
$Q bench --model "$OUT/model-26m" --prompt-len 128 --gen-len 64
