#!/bin/bash
# docs/experiments/sampling.sh — what each sampling setting does to generated text
# (docs/sampling.md). For every setting, generates N_TOKENS tokens after each of five prompts
# (seeds 1..5) with `qwen generate --json` and reports, over all outputs: distinct-2 (unique
# token bigrams / bigrams: low = repetitive), the share of 4-grams that occur more than once in
# their output (loops), the share of generated words that never occur in the training text
# (made-up words: low = coherent), and the decode speed.
# Usage: sampling.sh QWEN_BIN MODEL_DIR TRAINING_TEXT_FILES_GLOB [N_TOKENS] [THREADS]
set -euo pipefail
QWEN=$1 MODEL=$2 CORPUS=$3 N=${4:-200} THREADS=${5:-2}
PROMPTS=("It is a truth universally acknowledged" "Mr. Darcy said" "She could not help"
         "The house was" "Emma was")
run() {  # name, flags...
  local name=$1; shift
  for i in 0 1 2 3 4; do
    "$QWEN" generate --model "$MODEL" --prompt "${PROMPTS[$i]}" --max-new-tokens "$N" \
      --ignore-eos --seed $((i + 1)) --threads "$THREADS" --json "$@"
    echo
  done | python3 -c '
import glob, json, re, sys
name = sys.argv[1]
words = lambda t: re.findall(r"[a-z]+", t.lower())
known = set(w for f in glob.glob(sys.argv[2]) for w in words(open(f, encoding="utf-8").read()))
rows = [json.loads(l) for l in sys.stdin if l.strip()]
bi = tot = rep = n4 = nw = unk = 0; speed = []
for r in rows:
    ids = r["ids"]
    b = list(zip(ids, ids[1:])); bi += len(set(b)); tot += len(b)
    g = [tuple(ids[i:i + 4]) for i in range(len(ids) - 3)]
    from collections import Counter
    c = Counter(g); rep += sum(v for v in c.values() if v > 1); n4 += len(g)
    speed.append(r["decode_tok_s"])
    w = words(r["text"]); nw += len(w); unk += sum(x not in known for x in w)
speed.sort()
print("%-34s distinct-2 %.3f   repeated 4-grams %5.1f%%   unknown words %4.1f%%   decode %.0f tok/s" %
      (name, bi / tot, 100.0 * rep / n4, 100.0 * unk / max(1, nw), speed[len(speed) // 2]))
print("    e.g.: " + rows[0]["text"][:150].replace("\n", " "))' "$name" "$CORPUS"
}
run "greedy"                         --temperature 0
run "greedy, repetition penalty 1.3" --temperature 0 --repetition-penalty 1.3
run "temperature 1 (pure sampling)"  --temperature 1
run "temperature 0.8, top-k 40"      --temperature 0.8 --top-k 40
run "temperature 0.8, top-p 0.9"     --temperature 0.8 --top-p 0.9
run "temperature 1, min-p 0.1"       --temperature 1 --min-p 0.1
