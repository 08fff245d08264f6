#!/usr/bin/env python3
"""GGUF models, our engine vs llama.cpp side by side in one run (docs/benchmarks.md, "GGUF").

For each model and thread count: prefill tok/s of a 512-token prompt and decode tok/s of 128
tokens (batch 1) after it, both engines on the same number of threads, interleaved A B A B over
--rounds rounds, medians. Several `qwen` builds may be compared in the same run
(--qwen LABEL=PATH, repeatable). A --model may also be OURS::GGUF: our engine runs OURS (e.g. a
Hugging Face folder) and llama.cpp runs GGUF (e.g. that folder's `qwen export`), as in the
124.7M Qwen2 comparison of docs/benchmarks.md ("### llama.cpp"). --prompt-len takes a list.
  ours:      `qwen bench --model M --prompt-len 512 --gen-len 128 --reps R --threads T --json`
  llama.cpp: pip llama-cpp-python (its bundled llama.cpp, built with GGML_NATIVE=ON): eval of a
             512-token prompt (n_batch = n_ubatch = 512), then 128 single-token evals
Run under `chrt -f 50` when permitted (OpenMP spin-waits collapse under contention).

  chrt -f 50 /work/venv/bin/python bench/bench_gguf.py --qwen build/bin/qwen --threads 2,1 \
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
    ap.add_argument("--qwen", action="append", help="PATH or LABEL=PATH of a qwen binary (repeatable)")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, e.g. 2,1")
    ap.add_argument("--prompt-len", default="512", help="comma-separated prompt lengths, e.g. 128,512")
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    qwens = [(q.split("=", 1) if "=" in q else ("ours", q)) for q in (a.qwen or ["build/bin/qwen"])]
    threads = [int(t) for t in a.threads.split(",")]
    plens = [int(t) for t in a.prompt_len.split(",")]
    print(f"threads {threads}, prompt {plens}, decode {a.gen_len}, load average {os.getloadavg()[0]:.2f}")
    rows = []
    for spec in a.model:
        m_ours, m = spec.split("::", 1) if "::" in spec else (spec, spec)
        for th, pl in [(th, pl) for th in threads for pl in plens]:
            llm = Llama(model_path=m, n_ctx=pl + a.gen_len + 8, n_batch=pl, n_ubatch=pl, n_threads=th,
                        n_threads_batch=th, logits_all=False, verbose=False)
            res = {label: [] for label, _ in qwens}
            res["llama.cpp"] = []
            for _ in range(a.rounds):
                for label, path in qwens:
                    res[label].append(ours(path, m_ours, th, pl, a.gen_len, a.reps))
                res["llama.cpp"].append(llama(llm, pl, a.gen_len, a.reps))
            del llm
            med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in res.items()}
            l = med["llama.cpp"]
            for label, _ in qwens:
                o = med[label]
                rows.append((os.path.basename(m), th, pl, label, o, l))
                print(f"{os.path.basename(m)} threads {th} prompt {pl}: {label} prefill {o[0]:.0f} decode {o[1]:.1f} | "
                      f"llama.cpp prefill {l[0]:.0f} decode {l[1]:.1f} | "
                      f"ratio prefill {o[0] / l[0]:.2f}x decode {o[1] / l[1]:.2f}x", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("\n| model (llama.cpp) | threads | prompt | engine | prefill tok/s | llama.cpp prefill tok/s | ratio | "
          "decode tok/s | llama.cpp decode tok/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, th, pl, label, o, l in rows:
        print(f"| {name} | {th} | {pl} | {label} | {o[0]:.0f} | {l[0]:.0f} | {o[0] / l[0]:.2f}x | {o[1]:.1f} | {l[1]:.1f} | "
              f"{o[1] / l[1]:.2f}x |")


if __name__ == "__main__":
    main()
