#!/usr/bin/env python3
"""Make the fine-tuning task of docs/finetune-task.md: train/val JSONL for `qwen finetune`.

Every example is a short question with one checkable answer, always written in the fixed
format "ANSWER: <x>", which no pretraining text contains, so a model pretrained by
`qwen train` scores ~0% before fine-tuning. Kinds (the table in docs/finetune-task.md):
  mask     "Replace each word with X: house garden letter" -> "ANSWER: X X X"   (1-6 words)
  copy     "Repeat: house garden letter"                  -> "ANSWER: house garden letter" (2-4 words)
  last     "Last word: house garden letter"               -> "ANSWER: letter"  (3-5 words)
  first    "First word: house garden letter"              -> "ANSWER: house"   (3-5 words)
  count    "How many words: house garden letter"          -> "ANSWER: 3"       (1-6 words)
  parity   "Is 4729 even or odd?"                         -> "ANSWER: odd"     (10-9999)
  next     "What number comes after 47?"                  -> "ANSWER: 48"      (10-9998)
  add      "What is 37 + 45?"                             -> "ANSWER: 82"      (two-digit operands)
  max      "Which number is larger: 37 or 45?"            -> "ANSWER: 45"      (distinct, two-digit)
  reverse  "Reverse the words: red apple sky"             -> "ANSWER: sky apple red" (3-5 words)
--task picks the kinds: one kind, a comma list (e.g. add,max,reverse), "mix" (the default:
mask,copy,last,count,parity, one structural rewrite, two copies, a count and a one-digit lookup;
docs/finetune-task.md says why) or "all"; each example's kind is drawn uniformly from them.
The word kinds use 63 common words that are one token each in the demo's Austen BPE, so they
test copying and counting, not spelling; reverse keeps its earlier word list.
The validation questions never occur in the training file (val is drawn first; train rejects
any prompt already in val), so the val score measures the skill, not memorisation. Each line
is {"prompt", "response", "kind"}; the loader ignores "kind", the scorer reports per kind.

Standard library only; deterministic for a given --seed and --task (Python's random.Random).
    python3 scripts/make_sft_task.py --out data/sft-task            # 4000 train, 300 val, mix
    python3 scripts/make_sft_task.py --out DIR --task add --n-train 8000 --seed 2
    python3 scripts/make_sft_task.py --out DIR --task add,max,reverse  # the mix before 2026-11-28
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

# One token each (with their leading space) in the demo's 4096-token Austen BPE.
COMMON = (
    "house horse table chair light night paper music money road door window garden summer "
    "winter friend letter number simple quiet little happy sun rain wind fire wood book room "
    "hand head heart life time day year morning evening park hall church walk dance ball dinner "
    "tea card sea hill boy girl man child mother father sister brother lady son wife family "
    "town village"
).split()
assert len(set(COMMON)) == len(COMMON)

KINDS = ("copy", "first", "last", "count", "mask", "next", "parity", "add", "max", "reverse")
MIX = ("mask", "copy", "last", "count", "parity")


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
    if kind == "copy":
        w = rng.sample(COMMON, rng.randint(2, 4))
        return "Repeat: " + " ".join(w), "ANSWER: " + " ".join(w)
    if kind == "first":
        w = rng.sample(COMMON, rng.randint(3, 5))
        return "First word: " + " ".join(w), "ANSWER: " + w[0]
    if kind == "last":
        w = rng.sample(COMMON, rng.randint(3, 5))
        return "Last word: " + " ".join(w), "ANSWER: " + w[-1]
    if kind == "count":
        w = rng.sample(COMMON, rng.randint(1, 6))
        return "How many words: " + " ".join(w), f"ANSWER: {len(w)}"
    if kind == "mask":
        w = rng.sample(COMMON, rng.randint(1, 6))
        return "Replace each word with X: " + " ".join(w), "ANSWER: " + " ".join("X" * len(w))
    if kind == "next":
        a = rng.randint(10, 9998)
        return f"What number comes after {a}?", f"ANSWER: {a + 1}"
    if kind == "parity":
        a = rng.randint(10, 9999)
        return f"Is {a} even or odd?", "ANSWER: " + ("odd" if a % 2 else "even")
    if kind == "reverse":
        n = rng.randint(3, 5)
        w = rng.sample(WORDS, n)
        return "Reverse the words: " + " ".join(w), "ANSWER: " + " ".join(reversed(w))
    raise ValueError(kind)


def parse_task(task):
    """The kinds of --task: "mix", "all", one kind or a comma list (order kept: it fixes the draws)."""
    if task == "mix":
        return MIX
    if task == "all":
        return KINDS
    kinds = tuple(k.strip() for k in task.split(","))
    bad = [k for k in kinds if k not in KINDS]
    if bad or len(set(kinds)) != len(kinds):
        sys.exit(f"make_sft_task: --task '{task}': use mix, all, or distinct kinds from "
                 f"{', '.join(KINDS)} separated by commas")
    return kinds


def draw(n, kinds, rng, exclude):
    out, seen = [], set(exclude)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            sys.exit(f"make_sft_task: cannot draw {n} distinct '{','.join(kinds)}' questions; "
                     "ask for fewer")
        kind = rng.choice(kinds) if len(kinds) > 1 else kinds[0]
        prompt, response = make(kind, rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"prompt": prompt, "response": response, "kind": kind})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for train.jsonl and val.jsonl")
    ap.add_argument("--task", default="mix",
                    help="mix (= " + ",".join(MIX) + "), all, one kind or a comma list of: "
                    + ", ".join(KINDS))
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.n_train < 1 or a.n_val < 1:
        sys.exit("make_sft_task: --n-train and --n-val must be >= 1")
    kinds = parse_task(a.task)
    rng = random.Random(a.seed)
    val = draw(a.n_val, kinds, rng, ())
    train = draw(a.n_train, kinds, rng, {r["prompt"] for r in val})
    os.makedirs(a.out, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with open(os.path.join(a.out, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts = {k: sum(r["kind"] == k for r in train) for k in kinds}
    print(f"wrote {len(train)} train ({counts}) and {len(val)} val examples to {a.out}")


if __name__ == "__main__":
    main()
