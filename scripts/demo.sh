#!/usr/bin/env bash
# `make demo`: pretrain a small Qwen2-style model from scratch on Jane Austen's six novels, on
# the CPU, in a few minutes, and show what it learned:
#   1. corpus: the novels from Debian's r-cran-janeaustenr (read through Rscript); the last 2% of
#      every novel is held out as unseen in-domain text; the Jargon File (jargon-text) is the
#      out-of-domain text
#   2. `qwen tokenizer train`: a 4096-token byte-level BPE on the training text
#   3. `qwen data prepare`: token shards with a validation split
#   4. `qwen train`: a 4M-parameter model for about 7 minutes, AdamW + cosine schedule, validation
#      perplexity every 100 steps, checkpoints, metrics.jsonl and loss.svg
#   5. `qwen eval --text`: perplexity on held-out Austen and on the Jargon File
#   6. `qwen generate`: a sample from the trained model
# Environment: DEMO_OUT (default demo-out), DEMO_TRAIN_SECONDS (training time, default 420: the
# run measures its first steps and fixes its length to fit, at most DEMO_STEPS = 3000 steps; 420 s
# leaves the whole demo under 10 minutes on 2 cores),
# DEMO_THREADS (default all cores), QWEN (the binary, default build/bin/qwen). Everything lands in $DEMO_OUT; the trained model is $DEMO_OUT/run/checkpoint, a Hugging
# Face folder (transformers loads it too).
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${QWEN:-build/bin/qwen}
OUT=${DEMO_OUT:-demo-out}
STEPS=${DEMO_STEPS:-3000}
SECONDS_BUDGET=${DEMO_TRAIN_SECONDS:-420}
THREADS=${DEMO_THREADS:-$(nproc)}
mkdir -p "$OUT/corpus"
t_start=$(date +%s)
stamp() { echo "[$(($(date +%s) - t_start))s]"; }

echo "== 1. corpus: Jane Austen's novels (r-cran-janeaustenr), Jargon File (jargon-text)"
if [ ! -s "$OUT/corpus/heldout-austen.txt" ]; then
  command -v Rscript >/dev/null || { echo "Rscript is missing: run 'make deps' (r-cran-janeaustenr)"; exit 1; }
  Rscript --vanilla -e '
    library(janeaustenr)
    out <- commandArgs(trailingOnly = TRUE)[1]
    held <- character(0)
    for (b in c("sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                "northangerabbey", "persuasion")) {
      x <- get(b)
      cut <- floor(length(x) * 0.98)
      writeLines(x[1:cut], file.path(out, paste0(b, ".txt")))
      held <- c(held, x[(cut + 1):length(x)])
    }
    writeLines(held, file.path(out, "heldout-austen.txt"))' "$OUT/corpus"
fi
if [ ! -s "$OUT/corpus/jargon-sample.txt" ]; then
  # 1000 lines (32 KB) from the middle of the lexicon (the file is 1.7 MB; a sample keeps the
  # evaluation quick).
  zcat /usr/share/doc/jargon-text/jargon.txt.gz | sed -n '14000,15000p' > "$OUT/corpus/jargon-sample.txt"
fi
NOVELS=$(ls "$OUT"/corpus/{sensesensibility,prideprejudice,mansfieldpark,emma,northangerabbey,persuasion}.txt)
du -ch $NOVELS | tail -1 | sed 's/total/of training text (six novels, 98% each)/'
echo

echo "== 2. qwen tokenizer train: 4096-token byte-level BPE $(stamp)"
if [ ! -s "$OUT/tokenizer/tokenizer.json" ]; then
  $Q tokenizer train --input $NOVELS --vocab-size 4096 --out "$OUT/tokenizer"
else
  echo "(kept $OUT/tokenizer)"
fi
echo

echo "== 3. qwen data prepare: token shards, 2% of every novel for validation $(stamp)"
$Q data prepare --tokenizer "$OUT/tokenizer" --input $NOVELS --out "$OUT/data" --val-fraction 0.02
echo

echo "== 4. qwen train: Qwen2 shape, hidden 256, 4 layers, 8 heads (4 KV), tied embeddings $(stamp)"
cat > "$OUT/model.json" <<'EOF'
{
  "architectures": ["Qwen2ForCausalLM"],
  "model_type": "qwen2",
  "vocab_size": 4096,
  "hidden_size": 256,
  "intermediate_size": 704,
  "num_hidden_layers": 4,
  "num_attention_heads": 8,
  "num_key_value_heads": 4,
  "max_position_embeddings": 256,
  "rms_norm_eps": 1e-6,
  "rope_theta": 10000.0,
  "tie_word_embeddings": true,
  "initializer_range": 0.02,
  "hidden_act": "silu"
}
EOF
rm -rf "$OUT/run"
$Q train --config "$OUT/model.json" --data "$OUT/data" --out "$OUT/run" \
  --steps "$STEPS" --time-budget "$SECONDS_BUDGET" --batch 8 --seq 256 --lr 3e-3 --warmup 30 --lr-schedule cosine \
  --min-lr-ratio 0.1 --weight-decay 0.1 --beta2 0.95 --clip-grad-norm 1 \
  --eval-every 100 --eval-batches 4 --save-every 200 --log-every 20 --seed 1 --threads "$THREADS"
echo

echo "== 5. qwen eval --text: perplexity per token, context 256 $(stamp)"
echo -n "in-domain   (held-out Austen, never trained on): "
$Q eval --model "$OUT/run/checkpoint" --text "$OUT/corpus/heldout-austen.txt" --context 256 --threads "$THREADS"
echo -n "out-of-domain (the Jargon File, 32 KB sample):  "
$Q eval --model "$OUT/run/checkpoint" --text "$OUT/corpus/jargon-sample.txt" --context 256 --threads "$THREADS"
echo

echo "== 6. qwen generate: a sample (temperature 0.7, top-p 0.9) $(stamp)"
$Q generate --model "$OUT/run/checkpoint" --prompt "It is a truth universally acknowledged, that" \
  --max-new-tokens 120 --temperature 0.7 --top-p 0.9 --seed 3 --threads "$THREADS"
echo
echo "done in $(($(date +%s) - t_start))s. Model: $OUT/run/checkpoint (Hugging Face folder);" \
  "curves: $OUT/run/loss.svg; metrics: $OUT/run/metrics.jsonl"
