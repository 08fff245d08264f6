#!/usr/bin/env python3
"""Training throughput side by side: `qwen train` (this project) and PyTorch (Hugging Face
Qwen2ForCausalLM + torch.optim.AdamW, float32, torch.set_num_threads(N)), same shapes, same
batch, same machine, one script run. For each config it reports training tokens/s, MFU
(6 * parameters * tokens/s over the measured fp32 FMA peak), peak RSS of the process, and for
qwen also activation memory and time with activation recomputation on and off.

Configs (the training issue's):
  small   vocab 8192,  hidden 256, 4 layers,  8 heads, 4 KV heads, ffn 704,  seq 256, batch 8
  medium  vocab 32000, hidden 768, 12 layers, 12 heads, 4 KV heads, ffn 2048, seq 512, batch 4

Usage (from the repository root, after `make build`):
  /work/venv/bin/python bench/bench_train_pytorch.py [--configs small,medium] [--threads 2]
      [--qwen build/bin/qwen] [--peak GFLOPS | --measure-peak] [--skip-torch] [--skip-qwen]
      [--steps N] [--json FILE]
The peak defaults to 199.6 GFLOP/s, the AVX2 FMA peak at 2 threads measured by
build/bench/bench_machine on a quiet machine (docs/benchmarks.md); --measure-peak re-measures it.
Each engine runs in its own process (peak RSS: getrusage of that process); the first step of each run is a
warm-up and is not timed; the figure is the median over the timed steps.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "small": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, intermediate_size=704, seq=256, batch=8, steps=8),
    "medium": dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   num_key_value_heads=4, intermediate_size=2048, seq=512, batch=4, steps=4),
}


def hf_config(c):
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": c["vocab_size"], "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"], "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"], "max_position_embeddings": c["seq"],
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "initializer_range": 0.02, "hidden_act": "silu", "torch_dtype": "float32",
    }


def run_checked(cmd):
    """Run cmd, return its stdout; stop with its stderr if it fails. Peak RSS comes from each
    worker's own report (qwen: train_summary.json; torch: getrusage in the worker)."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p.stdout


# ---------------------------------------------------------------------------------------------
# The PyTorch worker (runs in its own process).

def torch_worker(args):
    import resource
    import torch
    import torch.nn.functional as F
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = json.loads(args.torch_worker)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(**{k: v for k, v in hf_config(c).items()
                         if k not in ("architectures", "model_type", "torch_dtype")})
    model = Qwen2ForCausalLM(cfg).float().train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    B, T, V = c["batch"], c["seq"], c["vocab_size"]
    g = torch.Generator().manual_seed(1)
    times = []
    losses = []
    for step in range(c["steps"]):
        w = torch.randint(0, V, (B, T + 1), generator=g)
        x, y = w[:, :T], w[:, 1:]
        t0 = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    timed = sorted(times[1:] if len(times) > 1 else times)
    med = timed[len(timed) // 2]
    print(json.dumps({
        "engine": f"PyTorch {torch.__version__} + transformers "
                  f"{__import__('transformers').__version__}",
        "params": n_params, "tokens_per_s": B * T / med, "step_s": med,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "losses": losses}))


# ---------------------------------------------------------------------------------------------

def measure_peak(root, threads):
    exe = os.path.join(root, "build", "bench", "bench_machine")
    if not os.path.exists(exe):
        return None
    out = subprocess.run([exe, "--json"], capture_output=True, text=True, check=True).stdout
    j = json.loads(out)
    return j["fma_peak_gflops_2t"] if threads >= 2 else j["fma_peak_gflops_1t"]


def run_qwen(qwen, c, threads, recompute, work):
    name = "rc" if recompute else "norc"
    cfg_path = os.path.join(work, "config.json")
    data = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "meta.json")):
        with open(cfg_path, "w") as f:
            json.dump(hf_config(c), f)
        rnd = random.Random(1)
        n = (c["steps"] + 2) * c["batch"] * (c["seq"] + 1) * 2
        with open(os.path.join(work, "ids.txt"), "w") as f:
            f.write(" ".join(str(rnd.randrange(c["vocab_size"])) for _ in range(n)))
        subprocess.run([qwen, "data", "prepare", "--ids-file", os.path.join(work, "ids.txt"),
                        "--out", data, "--val-fraction", "0"], check=True, capture_output=True)
    out = os.path.join(work, "out-" + name)
    cmd = [qwen, "train", "--config", cfg_path, "--data", data, "--out", out,
           "--steps", str(c["steps"]), "--batch", str(c["batch"]), "--seq", str(c["seq"]),
           "--lr", "3e-4", "--weight-decay", "0.1", "--beta2", "0.95", "--clip-grad-norm", "1",
           "--eval-every", "0", "--save-every", "0", "--threads", str(threads), "--quiet"]
    if recompute:
        cmd.append("--recompute")
    run_checked(cmd)
    with open(os.path.join(out, "train_summary.json")) as f:
        s = json.load(f)
    losses = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            if j.get("type") == "train":
                losses.append(j["loss"])
    return {"engine": "qwen" + (" --recompute" if recompute else ""), "params": s["params"],
            "tokens_per_s": s["tokens_per_s_median"],
            "step_s": s["tokens_per_step"] / s["tokens_per_s_median"],
            "peak_rss_bytes": s["peak_rss_bytes"], "activation_bytes": s["activation_bytes"],
            "losses": losses}


def run_torch(c, threads):
    out = run_checked([sys.executable, os.path.abspath(__file__), "--torch-worker", json.dumps(c),
                        "--threads", str(threads)])
    return json.loads(out.strip().splitlines()[-1])


def mib(b):
    return f"{b / 2**20:,.0f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="small,medium")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--qwen", default="build/bin/qwen")
    ap.add_argument("--peak", type=float, default=199.6,
                    help="fp32 FMA peak GFLOP/s for MFU (default 199.6: docs/benchmarks.md, 2 threads)")
    ap.add_argument("--measure-peak", action="store_true",
                    help="measure the peak with build/bench/bench_machine instead (needs a quiet machine)")
    ap.add_argument("--steps", type=int, default=None, help="override the steps per run")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-qwen", action="store_true")
    ap.add_argument("--json", default=None, help="also write all results to this file")
    ap.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        torch_worker(args)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    peak = (measure_peak(root, args.threads) if args.measure_peak else None) or args.peak
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"{args.threads} threads, fp32 peak {peak:.1f} GFLOP/s")
    results = []
    for name in args.configs.split(","):
        c = dict(CONFIGS[name])
        if args.steps:
            c["steps"] = args.steps
        rows = []
        with tempfile.TemporaryDirectory(prefix=f"bench-train-{name}-") as work:
            if not args.skip_qwen:
                rows.append(run_qwen(args.qwen, c, args.threads, False, work))
                rows.append(run_qwen(args.qwen, c, args.threads, True, work))
            if not args.skip_torch:
                rows.append(run_torch(c, args.threads))
        print(f"\n## {name}: V{c['vocab_size']} C{c['hidden_size']} L{c['num_hidden_layers']} "
              f"H{c['num_attention_heads']} KV{c['num_key_value_heads']} F{c['intermediate_size']}, "
              f"seq {c['seq']} x batch {c['batch']}, {c['steps']} steps (first untimed)")
        print("| engine | params | tok/s | step s | MFU | peak RSS | activations |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            mfu = 6.0 * r["params"] * r["tokens_per_s"] / (peak * 1e9)
            r["mfu"] = mfu
            r["config"] = name
            act = mib(r["activation_bytes"]) if "activation_bytes" in r else "-"
            print(f"| {r['engine']} | {r['params'] / 1e6:.2f}M | {r['tokens_per_s']:,.0f} | "
                  f"{r['step_s']:.2f} | {100 * mfu:.1f}% | {mib(r['peak_rss_bytes'])} | {act} |")
        by = {r["engine"].split(" ")[0] + (" rc" if "recompute" in r["engine"] else ""): r for r in rows}
        if "qwen" in by and "PyTorch" in by:
            q, t = by["qwen"], by["PyTorch"]
            print(f"qwen / PyTorch: {q['tokens_per_s'] / t['tokens_per_s']:.2f}x tokens/s, "
                  f"{q['peak_rss_bytes'] / t['peak_rss_bytes']:.2f}x peak RSS")
        if "qwen" in by and "qwen rc" in by:
            q, rc = by["qwen"], by["qwen rc"]
            print(f"recompute: activations {mib(q['activation_bytes'])} -> {mib(rc['activation_bytes'])} "
                  f"({100 * (1 - rc['activation_bytes'] / max(1, q['activation_bytes'])):.0f}% less), "
                  f"time +{100 * (q['tokens_per_s'] / rc['tokens_per_s'] - 1):.0f}%")
        results.extend(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_gflops": peak, "threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
