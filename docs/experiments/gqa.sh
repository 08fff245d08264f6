#!/bin/bash
# docs/experiments/gqa.sh — grouped-query attention vs multi-head and multi-query attention on
# one shape (docs/gqa.md): the 124.7M preset (C 768, 12 layers, 12 query heads of 64) with 12
# (MHA), 4 (GQA, the preset) and 1 (MQA) KV heads, BF16 weights, random init. For each: the
# parameters, the KV-cache bytes per token, and prefill / decode speed at a long prompt (where
# reading the cache weighs most) from `qwen bench`.
# Usage: gqa.sh QWEN_BIN WORK_DIR [PROMPT_LEN] [THREADS]
set -euo pipefail
QWEN=$1 WORK=$2 P=${3:-1536} THREADS=${4:-2}
mkdir -p "$WORK"
"$QWEN" init --preset 125m --dtype bf16 --out "$WORK/kv4" >/dev/null
for kv in 12 1; do
  python3 - "$WORK/kv4/config.json" "$WORK/cfg_kv$kv.json" "$kv" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["num_key_value_heads"] = int(sys.argv[3])
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
  "$QWEN" init --config "$WORK/cfg_kv$kv.json" --dtype bf16 --out "$WORK/kv$kv" >/dev/null
done
printf '%-10s %12s %16s %20s %14s %12s\n' "KV heads" "parameters" "KV bytes/token" "KV cache at $((P + 32))" "prefill tok/s" "decode tok/s"
for kv in 12 4 1; do
  python3 - "$WORK/kv$kv/config.json" "$P" <<'PY' > "$WORK/kv$kv.info"
import json, sys
c = json.load(open(sys.argv[1])); P = int(sys.argv[2])
d = c["hidden_size"] // c["num_attention_heads"]
per_tok = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * d * 4   # K and V, f32
print(per_tok, per_tok * (P + 32))
PY
  read -r per_tok total < "$WORK/kv$kv.info"
  params=$("$QWEN" info --model "$WORK/kv$kv" 2>/dev/null | sed -n 's/^parameters *\([0-9,.A-Za-z ]*\).*/\1/p' | head -1)
  json=$("$QWEN" bench --model "$WORK/kv$kv" --threads "$THREADS" --prompt-len "$P" --gen-len 32 --reps 2 --json)
  python3 - "$kv" "$params" "$per_tok" "$total" "$json" <<'PY'
import json, sys
kv, params, per_tok, total, j = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
print("%-10s %12s %13.1f KiB %16.1f MiB %14.0f %12.1f" % (kv, params, per_tok / 1024, total / 2**20,
      j["prefill_tok_s"], j["decode_tok_s"]))
PY
done
