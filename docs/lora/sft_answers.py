#!/usr/bin/env python3
"""Per-kind breakdown of `qwen sft-eval --show` output for docs/lora.md: besides exact match, how
many answers have the `ANSWER: x<|im_end|>` format, how many have the reference's number of
words (the structure of the answer, right or wrong content), and how many distinct answers the
model gave per kind (1 = a constant answer). Standard library only.
Run: python3 docs/lora/sft_answers.py VAL.jsonl LABEL=SHOW.txt [LABEL=SHOW.txt ...]"""
import json
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^(ok |BAD) +(\d+): (.*)$")


def answers(path):
    """{example index: (correct, generated text cut at the first end marker, had an end marker)}"""
    out = {}
    for line in open(path, encoding="utf-8", errors="replace"):
        m = LINE.match(line.rstrip("\n"))
        if not m:
            continue
        g = m.group(3)
        cut = min([g.find(t) for t in ("<|im_end|>", "<|endoftext|>") if t in g], default=-1)
        out[int(m.group(2))] = (m.group(1) == "ok ", g[:cut] if cut >= 0 else g, cut >= 0)
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.splitlines()[-1])
    val = [json.loads(x) for x in open(sys.argv[1], encoding="utf-8") if x.strip()]
    for arg in sys.argv[2:]:
        label, path = arg.split("=", 1)
        got = answers(path)
        if len(got) != len(val):
            sys.exit(f"{path}: {len(got)} answers for {len(val)} val examples; run sft-eval --show")
        rows = defaultdict(lambda: [0, 0, 0, 0, set()])  # n, exact, format, right length, distinct
        for i, ex in enumerate(val):
            ok, g, ended = got[i]
            ref = ex["response"]
            for k in (ex.get("kind", "-"), "all"):
                r = rows[k]
                r[0] += 1
                r[1] += ok
                fmt = ended and re.fullmatch(r"ANSWER: \S.*", g.strip()) is not None
                r[2] += fmt
                r[3] += fmt and len(g.split()) == len(ref.split())
                r[4].add(g.strip())
        print(f"{label}: kind, n, exact match, ANSWER format, reference's word count, distinct answers")
        for k in sorted(rows, key=lambda k: (k == "all", k)):
            n, ex, fmt, ln, d = rows[k]
            print(f"  {k:8s} {n:4d}  exact {ex:4d} ({100 * ex / n:5.1f}%)  format {fmt:4d}"
                  f"  length {ln:4d}  distinct {len(d):4d}")


if __name__ == "__main__":
    main()
