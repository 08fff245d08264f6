#!/usr/bin/env python3
"""Interop check (run by hand, needs pip transformers + bitsandbytes + accelerate): a folder
written by `qwen quantize --type nf4` loads in transformers with bitsandbytes on CPU, and its
logits agree with ours (`qwen forward`) on the same folder; also for --no-double-quant.
Usage: python tests/data/quant/check_interop.py QWEN_BIN MODEL_DIR [MODEL_DIR ...]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
qwen, models = sys.argv[1], sys.argv[2:]
ids = [3, 17, 42, 99, 5, 150, 7, 64, 1, 33, 120, 8]
ok = True
for src in models:
    for extra in ([], ["--no-double-quant"]):
        with tempfile.TemporaryDirectory() as td:
            out = os.path.join(td, "q")
            subprocess.run([qwen, "quantize", "--model", src, "--type", "nf4", "--out", out] + extra,
                           check=True, capture_output=True)
            m = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
            with torch.no_grad():
                ref = m(torch.tensor([ids])).logits[0].float().numpy()
            f = os.path.join(td, "logits.f32")
            subprocess.run([qwen, "forward", "--model", out, "--prompt-ids", ",".join(map(str, ids)),
                            "--out", f], check=True, capture_output=True)
            ours = np.fromfile(f, dtype=np.float32).reshape(ref.shape)
            err = float(np.abs(ours - ref).max())
            n4 = sum(1 for mod in m.modules() if type(mod).__name__ == "Linear4bit")
            print(f"{os.path.basename(src)} {' '.join(extra) or 'double-quant'}: transformers loaded "
                  f"{n4} Linear4bit modules; max |ours - transformers| logit = {err:.3g}")
            ok = ok and err < 1e-4 and n4 > 0
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
