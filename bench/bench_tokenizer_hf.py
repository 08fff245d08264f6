#!/usr/bin/env python3
"""Reference side of bench/bench_tokenizer.cpp: Hugging Face's Rust `tokenizers` (Python binding)
on the same text. Prints one JSON line: seconds (best of --reps) for encoding the whole text as
one string and for encode_batch of its paragraphs (text.split("\\n\\n"), empty ones dropped),
plus id counts and checksums so the caller can check that both sides produce the same ids; with
--train-vocab N also the seconds of BpeTrainer (byte-level, Qwen regex) for that vocabulary.
The thread count of encode_batch is RAYON_NUM_THREADS (set it before starting Python)."""
import argparse
import json
import time

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def checksum(ids):
    h = 0
    for i in ids:
        h = (h * 1000003 + i + 1) % (1 << 61)
    return h


def best(f, reps):
    t = float("inf")
    out = None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = f()
        t = min(t, time.perf_counter() - t0)
    return t, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json")
    ap.add_argument("--text", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--whole-reps", type=int, default=1)
    ap.add_argument("--train-vocab", type=int, default=0)
    a = ap.parse_args()
    tok = Tokenizer.from_file(a.tokenizer)
    text = open(a.text, encoding="utf-8").read()
    paras = [p for p in text.split("\n\n") if p]
    res = {}
    tok.encode_batch(paras[:200], add_special_tokens=False)  # warm up the thread pool
    t, enc = best(lambda: tok.encode(text, add_special_tokens=False), a.whole_reps)
    res.update(whole_s=t, whole_ids=len(enc.ids), whole_checksum=checksum(enc.ids))
    t, encs = best(lambda: tok.encode_batch(paras, add_special_tokens=False), a.reps)
    flat = [i for e in encs for i in e.ids]
    res.update(batch_s=t, batch_ids=len(flat), batch_checksum=checksum(flat))
    if a.train_vocab:
        def train():
            t = Tokenizer(models.BPE())
            t.normalizer = normalizers.NFC()
            t.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(QWEN_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            t.decoder = decoders.ByteLevel()
            tr = trainers.BpeTrainer(vocab_size=a.train_vocab, min_frequency=2, show_progress=False,
                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                     special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
            t.train([a.text], tr)
            return t
        t, _ = best(train, 1)
        res.update(train_s=t)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
