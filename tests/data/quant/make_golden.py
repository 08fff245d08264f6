#!/usr/bin/env python3
"""Golden files for tests/test_quant_*.cpp, made with the reference implementations:

  nf4_golden.safetensors  bitsandbytes.functional.quantize_4bit / dequantize_4bit (pip
                          bitsandbytes, CPU) on fixed inputs: odd sizes, partial blocks, ties on
                          code midpoints, zero blocks; plain and double-quantised absmax.
  q8_0_golden.safetensors gguf.quants.quantize / dequantize for GGML Q8_0 (pip gguf).
  hf_nf4_qwen2/           a 4-bit folder written by transformers + bitsandbytes (save_pretrained
                          of tests/data/models/qwen2_gqa loaded with BitsAndBytesConfig nf4,
                          double quant, float32 compute), plus hf_nf4_qwen2_golden.safetensors:
                          every quantised weight dequantised by bitsandbytes and the logits of
                          the bitsandbytes model for a fixed token sequence.

Run from the repository root with the venv: /work/venv/bin/python tests/data/quant/make_golden.py
torch runs on one thread: bitsandbytes' double-quant offset is torch's float32 mean, whose last
bit depends on the summation order (threads, vector width); the C++ replicates the 1-thread order.
"""
import json
import os
import shutil

import numpy as np
import torch
from safetensors.torch import save_file

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def nf4_cases():
    import bitsandbytes.functional as F

    g = torch.Generator().manual_seed(1234)
    code = F.get_4bit_type("nf4", device="cpu")
    mids = (code[:-1] + code[1:]) / 2
    cases = {
        "full_64x64": torch.randn(64, 64, generator=g) * 0.02,
        "odd_7x13": torch.randn(7, 13, generator=g),
        "one": torch.tensor([[-0.25]]),
        "partial_3x100": torch.randn(3, 100, generator=g) * 3.0,
        "rows_96x70": torch.randn(96, 70, generator=g) * 0.05,
        # 301 blocks + 37 values: two nested blocks of 256 (the second partial) and a partial block.
        "dq_19301": torch.randn(19301, generator=g) * 0.03,
        # Exact midpoints between codes (ties go to the lower code) and the extremes.
        "ties": torch.cat([torch.tensor([1.0, -1.0, 0.0]), mids, -mids, mids * 0.999999, mids * 1.000001]),
        "zeros_and_tiny": torch.cat([torch.zeros(64), torch.full((64,), 1e-30), torch.randn(5, generator=g)]),
        "heavy_tail": torch.distributions.StudentT(2.0).sample((4, 192)) * 0.01,
    }
    out = {}
    meta = {}
    for name, x in cases.items():
        x = x.float().contiguous()
        out[f"{name}.input"] = x.reshape(-1).clone()
        for dq in (False, True):
            tag = "dq" if dq else "plain"
            packed, st = F.quantize_4bit(x, blocksize=64, compress_statistics=dq, quant_type="nf4")
            out[f"{name}.{tag}.packed"] = packed.reshape(-1).clone()
            if dq:
                out[f"{name}.{tag}.absmax"] = st.absmax.clone()  # uint8 codes
                out[f"{name}.{tag}.nested_absmax"] = st.state2.absmax.clone()
                out[f"{name}.{tag}.nested_quant_map"] = st.state2.code.clone()
                out[f"{name}.{tag}.nested_offset"] = st.offset.reshape(1).clone().float()
            else:
                out[f"{name}.{tag}.absmax"] = st.absmax.clone()
            out[f"{name}.{tag}.quant_map"] = st.code.clone()
            out[f"{name}.{tag}.dequant"] = F.dequantize_4bit(packed, st).reshape(-1).float().clone()
            qs = st.as_dict(packed=True)
            js = bytes(qs["quant_state.bitsandbytes__nf4"].numpy().tobytes()).decode()
            meta[f"{name}.{tag}.quant_state"] = js
        meta[f"{name}.shape"] = json.dumps(list(x.shape))
    save_file(out, os.path.join(HERE, "nf4_golden.safetensors"), metadata=meta)
    # The dynamic map on its own (the C++ rebuilds it with torch's linspace arithmetic).
    print("nf4 cases:", len(cases))


def q8_0_cases():
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(99)
    cases = {
        "normal_5x96": rng.standard_normal((5, 96)).astype(np.float32) * 0.05,
        "wide_3x1024": rng.standard_normal((3, 1024)).astype(np.float32),
        # Blocks where x·(1/d) lands exactly on .5 (round half away from zero) and a zero block.
        "ties": np.concatenate([np.array([127.0] + [k + 0.5 for k in range(-15, 16)], np.float32),
                                np.array([-127.0] + [-(k + 0.5) for k in range(31)], np.float32),
                                np.zeros(32, np.float32)]).reshape(3, 32),
        "mixed_scale_2x64": (rng.standard_normal((2, 64)) * np.logspace(-6, 3, 128).reshape(2, 64)).astype(np.float32),
    }
    out = {}
    for name, x in cases.items():
        q = quants.quantize(x, GGMLQuantizationType.Q8_0)
        dq = quants.dequantize(q, GGMLQuantizationType.Q8_0)
        out[f"{name}.input"] = torch.from_numpy(x.reshape(-1).copy())
        out[f"{name}.blocks"] = torch.from_numpy(np.ascontiguousarray(q).reshape(-1).copy())
        out[f"{name}.dequant"] = torch.from_numpy(dq.reshape(-1).astype(np.float32).copy())
    save_file(out, os.path.join(HERE, "q8_0_golden.safetensors"))
    print("q8_0 cases:", len(cases))


def hf_nf4_folder():
    import bitsandbytes.functional as F
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    src = os.path.join(ROOT, "tests", "data", "models", "qwen2_gqa")
    dst = os.path.join(HERE, "hf_nf4_qwen2")
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, device_map="cpu",
                                             dtype=torch.float32)
    if os.path.isdir(dst):
        shutil.rmtree(dst)
    m.save_pretrained(dst)
    out = {}
    for name, mod in m.named_modules():
        w = getattr(mod, "weight", None)
        if w is not None and hasattr(w, "quant_state") and w.quant_state is not None:
            out[name + ".weight"] = F.dequantize_4bit(w.data, w.quant_state).float().contiguous().clone()
    ids = torch.tensor([[3, 17, 42, 99, 5, 150, 7, 64, 1, 33, 120, 8]])
    with torch.no_grad():
        logits = m(ids).logits[0].float()
    out["input_ids"] = ids[0].to(torch.int64).clone()
    out["logits"] = logits.contiguous().clone()
    save_file(out, os.path.join(HERE, "hf_nf4_qwen2_golden.safetensors"))
    print("hf folder:", sorted(os.listdir(dst)), "quantised weights:", len(out) - 2)


if __name__ == "__main__":
    nf4_cases()
    q8_0_cases()
    hf_nf4_folder()
