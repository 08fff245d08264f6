#!/usr/bin/env python3
"""GGUF models, our engine vs llama.cpp side by side in one run (docs/benchmarks.md, "GGUF").

For each model: prefill tok/s of a 512-token prompt and decode tok/s of 128 tokens (batch 1),
both engines on the same number of threads, interleaved A B A B over --rounds rounds, medians.
  ours:      `qwen bench --model M --prompt-len 512 --gen-len 128 --reps R --threads T --json`
  llama.cpp: pip llama-cpp-python (its bundled llama.cpp, built with GGML_NATIVE=ON): eval of a
             512-token prompt (n_batch = n_ubatch = 512), then 128 single-token evals
Run under `chrt -f 50` when permitted (OpenMP spin-waits collapse under contention).

  /work/venv/bin/python bench/bench_gguf.py --qwen build/bin/qwen \
      --model build/cache/SmolLM2-135M-Instruct.Q4_1.gguf --model /tmp/smollm2-q8_0.gguf
The Q8_0 file can be made with `qwen export --model <Q4_1 file> --format gguf --type q8_0 --out F`.
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
from llama_cpp import Llama


def ours(qwen, model, threads, prompt_len, gen_len, reps):
    r = subprocess.run([qwen, "bench", "--model", model, "--prompt-len", str(prompt_len), "--gen-len",
                        str(gen_len), "--reps", str(reps), "--threads", str(threads), "--json"],
                       check=True, capture_output=True, text=True)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    return j["prefill_tok_s"], j["decode_tok_s"]


def llama(llm, prompt_len, gen_len, reps):
    rng = np.random.default_rng(1234)
    V = llm.n_vocab()

    def last_logits():  # logits_all=False: only the last token of each eval has logits
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,))

    pre, dec = [], []
    for r in range(reps + 1):  # first run warms up, not counted
        prompt = [int(t) for t in rng.integers(100, llm.n_vocab() - 100, prompt_len)]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        tok = int(np.argmax(last_logits()))
        t2 = time.perf_counter()
        for _ in range(gen_len):
            llm.eval([tok])
            tok = int(np.argmax(last_logits()))
        t3 = time.perf_counter()
        if r == 0:
            continue
        pre.append(prompt_len / (t1 - t0))
        dec.append(gen_len / (t3 - t2))
    return statistics.median(pre), statistics.median(dec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qwen", default="build/bin/qwen")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    print(f"threads {a.threads}, prompt {a.prompt_len}, decode {a.gen_len}, load average {os.getloadavg()[0]:.2f}")
    rows = []
    for m in a.model:
        llm = Llama(model_path=m, n_ctx=a.prompt_len + a.gen_len + 8, n_batch=a.prompt_len, n_ubatch=a.prompt_len,
                    n_threads=a.threads, n_threads_batch=a.threads, logits_all=False, verbose=False)
        res = {"ours": [], "llama": []}
        for _ in range(a.rounds):
            res["ours"].append(ours(a.qwen, m, a.threads, a.prompt_len, a.gen_len, a.reps))
            res["llama"].append(llama(llm, a.prompt_len, a.gen_len, a.reps))
        del llm
        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in res.items()}
        rows.append((os.path.basename(m), med))
        print(f"{os.path.basename(m)}: ours prefill {med['ours'][0]:.0f} decode {med['ours'][1]:.1f} | "
              f"llama.cpp prefill {med['llama'][0]:.0f} decode {med['llama'][1]:.1f} | "
              f"ratio prefill {med['ours'][0] / med['llama'][0]:.2f}x decode {med['ours'][1] / med['llama'][1]:.2f}x",
              flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("\n| model | ours prefill tok/s | llama.cpp prefill tok/s | ratio | ours decode tok/s | llama.cpp decode tok/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, med in rows:
        o, l = med["ours"], med["llama"]
        print(f"| {name} | {o[0]:.0f} | {l[0]:.0f} | {o[0] / l[0]:.2f}x | {o[1]:.1f} | {l[1]:.1f} | {o[1] / l[1]:.2f}x |")


if __name__ == "__main__":
    main()
