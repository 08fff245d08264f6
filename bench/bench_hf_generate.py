#!/usr/bin/env python3
"""PyTorch + Hugging Face transformers on the same model folder as `qwen bench`, for side-by-side
ratios: prefill tok/s (one forward over the prompt) and decode tok/s (greedy generate with the
KV cache), float32 compute, N threads. Usage:
  venv/bin/python bench/bench_hf_generate.py MODEL_DIR [--prompt-len 128] [--gen-len 64] [--threads 2]
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, model.config.vocab_size, (1, a.prompt_len), generator=g)
    pre, dec = [], []
    with torch.no_grad():
        for r in range(a.reps + 1):
            t0 = time.perf_counter()
            model(ids)
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=a.gen_len, min_new_tokens=a.gen_len, do_sample=False,
                           pad_token_id=0)
            t2 = time.perf_counter()
            if r == 0:
                continue  # warm-up
            pre.append(a.prompt_len / (t1 - t0))
            # generate = prefill + (gen_len - 1) decode steps
            dec.append((a.gen_len - 1) / max(1e-9, (t2 - t1) - (t1 - t0)))
    pre.sort()
    dec.sort()
    print(json.dumps({"engine": f"transformers {__import__('transformers').__version__} / torch {torch.__version__}",
                      "prefill_tok_s": pre[len(pre) // 2], "decode_tok_s": dec[len(dec) // 2],
                      "threads": a.threads, "prompt_len": a.prompt_len, "gen_len": a.gen_len}))


if __name__ == "__main__":
    main()
