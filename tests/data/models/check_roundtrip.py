#!/usr/bin/env python3
"""Checks that model folders written by our `qwen` CLI load in Hugging Face transformers unchanged
(AutoModelForCausalLM, no extra arguments) and give the same logits as our engine.

For each config below: `qwen init --config C --dtype D --out DIR` writes random weights, `qwen forward`
dumps our logits, then transformers loads DIR (strictly: no missing or unexpected keys) and runs
the same ids in float32. Prints the max abs difference; exits 1 if any exceeds 1e-4.
Run:  venv/bin/python tests/data/models/check_roundtrip.py build/bin/qwen
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [("qwen2_gqa", "f32"), ("qwen2_tied_mha", "bf16"), ("qwen3_headdim", "f32"),
         ("qwen3_bias_tied", "f16"), ("llama_gqa8", "f32"), ("rope_yarn", "f32"),
         ("rope_llama3", "bf16")]


def main():
    qwen = sys.argv[1]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, dtype in CASES:
            out = os.path.join(tmp, name + "_" + dtype)
            subprocess.run([qwen, "init", "--config", os.path.join(HERE, name, "config.json"),
                            "--dtype", dtype, "--seed", "11", "--out", out], check=True,
                           stdout=subprocess.DEVNULL)
            ids = [3, 17, 99, 5, 140, 64, 2, 0, 31, 77, 120, 9]
            subprocess.run([qwen, "forward", "--model", out, "--prompt-ids",
                            ",".join(map(str, ids)), "--out", os.path.join(tmp, "ours.f32")],
                           check=True, stdout=subprocess.DEVNULL)
            ours = np.fromfile(os.path.join(tmp, "ours.f32"), dtype="<f4")
            model, info = AutoModelForCausalLM.from_pretrained(
                out, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
            bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
            if bad:
                print(f"{name}/{dtype}: loading info {bad}")
                sys.exit(1)
            with torch.no_grad():
                ref = model(torch.tensor([ids])).logits[0].numpy().reshape(-1)
            err = float(np.abs(ref - ours).max())
            worst = max(worst, err)
            cfg = json.load(open(os.path.join(out, "config.json")))
            print(f"{name:16s} {dtype:5s} {type(model).__name__:18s} torch_dtype={cfg.get('torch_dtype')}"
                  f"  max|dlogit| = {err:.2e}")
    print(f"worst {worst:.2e}")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
