#!/usr/bin/env python3
"""Golden block-format data for tests/test_gguf.cpp, from pip `gguf` (gguf-py, llama.cpp's own
Python implementation of the ggml block formats), independent of our C++ code.

  /work/venv/bin/pip install gguf numpy
  /work/venv/bin/python tests/data/gguf/gen_quant_golden.py   # writes quant_golden.json here

Q4_0 / Q4_1 / Q8_0: seeded random rows (plus an all-zero block, a constant block and a block
with one outlier) quantised by gguf.quants.quantize; we check our quantiser gives the same bytes
and our dequantiser the same floats. Q4_K / Q6_K (read-only formats): random block bytes with
finite fp16 scales, dequantised by gguf.quants.dequantize.
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

rng = np.random.default_rng(20261127)
out = {"generator": "gguf " + getattr(__import__("gguf"), "__version__", "?")}

for name in ("Q4_0", "Q4_1", "Q8_0"):
    qt = getattr(T, name)
    rows, n = 5, 96
    x = rng.standard_normal((rows, n)).astype(np.float32) * np.float32(0.05)
    x[1, 0:32] = 0.0                      # all-zero block
    x[2, 32:64] = np.float32(0.125)       # constant block
    x[3, 64:96] *= np.float32(0.01)
    x[3, 70] = np.float32(3.0)            # one outlier
    q = quants.quantize(x, qt)
    d = quants.dequantize(q, qt).astype(np.float32)
    out[name] = {"rows": rows, "n": n, "x": [float(v) for v in x.ravel()],
                 "bytes": q.tobytes().hex(), "dequant": [float(v) for v in d.ravel()]}

for name, nbytes in (("Q4_K", 144), ("Q6_K", 210)):
    qt = getattr(T, name)
    nblk = 3
    raw = rng.integers(0, 256, size=(nblk, nbytes), dtype=np.uint8)
    for b in range(nblk):
        scales = np.array(rng.uniform(0.002, 0.05, size=2), dtype=np.float16).view(np.uint8)
        if name == "Q4_K":   # d, dmin at the start
            raw[b, 0:4] = scales
        else:                # d at the end
            raw[b, 208:210] = scales[0:2]
    d = quants.dequantize(raw.reshape(1, -1), qt).astype(np.float32)
    out[name] = {"blocks": nblk, "bytes": raw.tobytes().hex(), "dequant": [float(v) for v in d.ravel()]}

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quant_golden.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, os.path.getsize(path), "bytes")
