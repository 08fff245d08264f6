#!/usr/bin/env python3
"""Golden files for the GGUF writer (tests/test_gguf_export.cpp): our `qwen export` of the tiny
test models read back by pip `gguf` (keys, tensor names, shapes, types) and run by llama.cpp
(pip llama-cpp-python, f32 K/V cache): greedy continuations from fixed prompt ids, and along
them the float64 reference (ref_forward.py) margins and llama.cpp's error on the top tokens.

  /work/venv/bin/pip install gguf llama-cpp-python numpy
  /work/venv/bin/python tests/data/gguf/gen_export_golden.py build/bin/qwen

Writes export_golden.json next to this script. The exporter is deterministic, so the test
re-exports the same files and compares what our reader sees with what gguf-py saw here.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader, GGUFValueType
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_forward import RefModel  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "models")
qwen = sys.argv[1]

PROMPT = [1, 5, 9, 2, 17, 3]
N_NEW = 24


def describe(path):
    r = GGUFReader(path)
    keys = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        t = f.types[0]
        if t == GGUFValueType.ARRAY:
            keys[k] = {"type": "array", "elem": f.types[-1].name, "count": len(f.data)}
        else:
            v = f.contents()
            keys[k] = {"type": t.name, "value": v if not isinstance(v, float) else float(np.float32(v))}
    tensors = [{"name": t.name, "ne": [int(d) for d in t.shape], "type": t.tensor_type.name} for t in r.tensors]
    return keys, tensors


def greedy(path):
    """llama.cpp's greedy path and, along it, the float64 reference's margin for each chosen token
    (negative: the exact model prefers another), llama.cpp's error on the reference's 8 best
    tokens (d_top), and the reference's 8 best tokens and logits at each step (ref_top)."""
    llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_threads=2, logits_all=True, verbose=False,
                type_k=0, type_v=0)
    llm.reset()
    llm.eval(PROMPT)
    outs = []
    for _ in range(N_NEW):
        row = np.array(llm.scores[llm.n_tokens - 1])
        outs.append(int(np.argmax(row)))
        llm.eval([outs[-1]])
    lg = np.array(llm.scores[: len(PROMPT) + N_NEW - 1], dtype=np.float64)
    del llm
    ref = RefModel(path).logits(PROMPT + outs[:-1])
    ref_margin, ref_top, d_top = [], [], 0.0
    for s, t in enumerate(outs):
        r = ref[len(PROMPT) - 1 + s]
        ref_margin.append(float(r[t] - np.max(np.delete(r, t))))
        top = np.argsort(-r)[:8]
        d_top = max(d_top, float(np.max(np.abs(lg[len(PROMPT) - 1 + s, top] - r[top]))))
        ref_top.append([[int(i) for i in top], [float(r[i]) for i in top]])
    return outs, ref_margin, ref_top, d_top


out = {"prompt": PROMPT, "models": {}}
with tempfile.TemporaryDirectory() as td:
    for name in ("qwen2_gqa", "llama_gqa8", "qwen3_headdim"):
        out["models"][name] = {}
        for typ in ("f32", "f16", "q8_0"):
            path = os.path.join(td, f"{name}-{typ}.gguf")
            subprocess.run([qwen, "export", "--model", os.path.join(MODELS, name), "--format", "gguf",
                            "--type", typ, "--out", path], check=True, capture_output=True)
            keys, tensors = describe(path)
            ids, ref_margin, ref_top, d_top = greedy(path)
            out["models"][name][typ] = {"keys": keys, "tensors": tensors, "greedy": ids, "ref_margin": ref_margin,
                                        "ref_top": ref_top, "d_top": d_top}
            print(name, typ, len(tensors), "tensors, greedy", ids[:8], "... d_top", round(d_top, 5),
                  "min ref margin", round(min(ref_margin), 5))

path = os.path.join(HERE, "export_golden.json")
with open(path, "w") as f:
    json.dump(out, f, indent=0)
print("wrote", path, os.path.getsize(path), "bytes")
