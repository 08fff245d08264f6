#!/usr/bin/env bash
# `make demo`: the main job on the embedded default. For now (core engine + tokenizer): train a
# byte-level BPE tokenizer on the Jargon File (Debian's jargon-text), write a random-weight Qwen2
# model folder around it, inspect it, generate from a text prompt, and measure tokens/s.
# (The training issue turns this into "pretrain on a real corpus, then generate".)
set -euo pipefail
cd "$(dirname "$0")/.."
Q=build/bin/qwen
OUT=demo-out
mkdir -p "$OUT"
CORPUS=$OUT/jargon.txt
[ -s "$CORPUS" ] || zcat /usr/share/doc/jargon-text/jargon.txt.gz > "$CORPUS"
echo "== qwen tokenizer train: 4096-token byte-level BPE on the Jargon File ($(du -h "$CORPUS" | cut -f1))"
$Q tokenizer train --input "$CORPUS" --vocab-size 4096 --out "$OUT/tokenizer"
echo
echo "== qwen init: a random-weight Qwen2 model (26M parameters, BF16, Hugging Face folder)"
$Q init --preset 26m --dtype bf16 --seed 1 --tokenizer "$OUT/tokenizer" --out "$OUT/model-26m"
echo
echo "== qwen info"
$Q info --model "$OUT/model-26m"
echo
echo "== qwen generate (top-p 0.9, temperature 0.8; the weights are random, so the text is too)"
$Q generate --model "$OUT/model-26m" --prompt "The hacker ethic" --max-new-tokens 32 \
  --temperature 0.8 --top-p 0.9 --seed 7 --ignore-eos
echo
echo "== qwen bench (prompt 128 tokens, generate 64)"
$Q bench --model "$OUT/model-26m" --prompt-len 128 --gen-len 64
