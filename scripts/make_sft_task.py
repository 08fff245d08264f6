#!/usr/bin/env python3
"""Make the fine-tuning task of docs/finetune-task.md: train/val JSONL for `qwen finetune`.

Every example is a short question with one checkable answer, always written in the fixed
format "ANSWER: <x>", which no pretraining text contains, so a model pretrained by
`qwen train` scores ~0% before fine-tuning. Three kinds (--task mix draws each uniformly):
  add      "What is 37 + 45?"                          -> "ANSWER: 82"   (two-digit operands)
  max      "Which number is larger: 37 or 45?"         -> "ANSWER: 45"   (distinct, two-digit)
  reverse  "Reverse the words: red apple sky"          -> "ANSWER: sky apple red" (3-5 words)
The validation questions never occur in the training file (val is drawn first; train rejects
any prompt already in val), so the val score measures the skill, not memorisation. Each line
is {"prompt", "response", "kind"}; the loader ignores "kind", the scorer reports per kind.

Standard library only; deterministic for a given --seed (Python's random.Random).
    python3 scripts/make_sft_task.py --out data/sft-task            # 4000 train, 300 val, mix
    python3 scripts/make_sft_task.py --out DIR --task add --n-train 8000 --seed 2
"""
import argparse
import json
import os
import random
import sys

WORDS = (
    "red blue green black white apple river stone cloud house horse table chair light night "
    "water paper music glass bread money green tree road ship bird fish king queen door window "
    "garden summer winter friend letter number market silver golden simple quiet little happy "
    "north south east west moon star sun rain snow wind fire earth metal wood sand city field"
).split()
WORDS = sorted(set(WORDS))

KINDS = ("add", "max", "reverse")


def make(kind, rng):
    if kind == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"What is {a} + {b}?", f"ANSWER: {a + b}"
    if kind == "max":
        a = rng.randint(10, 99)
        b = rng.randint(10, 98)
        if b >= a:
            b += 1  # distinct
        return f"Which number is larger: {a} or {b}?", f"ANSWER: {max(a, b)}"
    if kind == "reverse":
        n = rng.randint(3, 5)
        w = rng.sample(WORDS, n)
        return "Reverse the words: " + " ".join(w), "ANSWER: " + " ".join(reversed(w))
    raise ValueError(kind)


def draw(n, task, rng, exclude):
    out, seen = [], set(exclude)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            sys.exit(f"make_sft_task: cannot draw {n} distinct '{task}' questions; ask for fewer")
        kind = rng.choice(KINDS) if task == "mix" else task
        prompt, response = make(kind, rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "response": response, "kind": kind})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for train.jsonl and val.jsonl")
    ap.add_argument("--task", default="mix", choices=("mix",) + KINDS)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.n_train < 1 or a.n_val < 1:
        sys.exit("make_sft_task: --n-train and --n-val must be >= 1")
    rng = random.Random(a.seed)
    val = draw(a.n_val, a.task, rng, ())
    train = draw(a.n_train, a.task, rng, {r["prompt"] for r in val})
    os.makedirs(a.out, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts = {k: sum(r["kind"] == k for r in train) for k in KINDS}
    print(f"wrote {len(train)} train ({counts}) and {len(val)} val examples to {a.out}")


if __name__ == "__main__":
    main()
