#!/bin/bash
# docs/experiments/rope_scaling.sh — perplexity beyond the trained context with each RoPE
# scaling type (docs/rope-scaling.md). Takes a model trained at a short context (e.g. the demo's
# 4-layer Austen model, seq 256 = max_position_embeddings 256), writes one copy of its folder per
# scaling type (only config.json changes; the weights are hard-linked), and evaluates each on a
# held-out text at 1x, 2x and 4x the trained context. No fine-tuning at the longer context.
# Usage: rope_scaling.sh QWEN_BIN MODEL_DIR HELDOUT_TEXT WORK_DIR [THREADS]
set -euo pipefail
QWEN=$1 MODEL=$2 TEXT=$3 WORK=$4 THREADS=${5:-2}
mkdir -p "$WORK"
TRAINED=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['max_position_embeddings'])" "$MODEL/config.json")
make_variant() {  # name, python expression editing config dict c
  local d="$WORK/$1"
  rm -rf "$d" && mkdir -p "$d"
  for f in "$MODEL"/*; do ln "$f" "$d/" 2>/dev/null || cp "$f" "$d/"; done
  rm -f "$d/config.json"
  python3 - "$MODEL/config.json" "$d/config.json" "$TRAINED" "$2" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); trained = int(sys.argv[3])
exec(sys.argv[4])
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
}
F=4
make_variant default "c['max_position_embeddings'] = $F * trained"
make_variant linear  "c['max_position_embeddings'] = $F * trained; c['rope_scaling'] = {'rope_type': 'linear', 'factor': $F.0}"
make_variant dynamic "c['rope_scaling'] = {'rope_type': 'dynamic', 'factor': $F.0}"
make_variant yarn    "c['max_position_embeddings'] = $F * trained; c['rope_scaling'] = {'rope_type': 'yarn', 'factor': $F.0, 'original_max_position_embeddings': trained}"
printf '%-8s' "type"; for m in 1 2 4; do printf ' %14s' "ctx $((m * TRAINED))"; done; echo
for v in default linear dynamic yarn; do
  printf '%-8s' "$v"
  for m in 1 2 4; do
    ctx=$((m * TRAINED))
    ppl=$("$QWEN" eval --model "$WORK/$v" --text "$TEXT" --context $ctx --threads "$THREADS" --json |
          python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['perplexity'])")
    printf ' %14s' "$ppl"
  done
  echo
done
