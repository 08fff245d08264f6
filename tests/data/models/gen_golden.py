#!/usr/bin/env python3
"""Golden files for the whole-model tests, made by Hugging Face transformers itself.

For each tiny configuration below this script builds the model in transformers with random
weights (every parameter drawn from a seeded normal, biases and norms included, so nothing is
trivially zero or one), saves it with save_pretrained (safetensors, transformers' own config.json),
runs the reference forward pass in float32 with eager attention, and writes next to the folder:
  golden.json  {"input_ids": [...], "logits_shape": [T, V], "loss": ..,
                "greedy_prompt": [...], "greedy_ids": [...]}
  logits.f32   little-endian float32 logits (T, V) for input_ids
Run:  /path/to/venv/bin/python tests/data/models/gen_golden.py   (needs torch + transformers)
The C++ tests only read the files; they never need Python.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))

BASE = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2)

CASES = {
    # name: (config class, model class, overrides, save dtype, max_shard_size)
    "qwen2_gqa": (Qwen2Config, Qwen2ForCausalLM, {}, torch.float32, None),
    "qwen2_tied_mha": (Qwen2Config, Qwen2ForCausalLM,
                       dict(tie_word_embeddings=True, num_key_value_heads=4), torch.float32, None),
    "qwen3_headdim": (Qwen3Config, Qwen3ForCausalLM,
                      dict(head_dim=24, num_key_value_heads=1), torch.float32, None),
    "qwen3_bias_tied": (Qwen3Config, Qwen3ForCausalLM,
                        dict(head_dim=16, attention_bias=True, tie_word_embeddings=True),
                        torch.float32, None),
    "llama_gqa8": (LlamaConfig, LlamaForCausalLM,
                   dict(num_attention_heads=8, num_key_value_heads=1), torch.float32, None),
    "rope_linear": (Qwen2Config, Qwen2ForCausalLM,
                    dict(rope_scaling={"type": "linear", "factor": 2.0}), torch.float32, None),
    "rope_dynamic": (Qwen2Config, Qwen2ForCausalLM,
                     dict(max_position_embeddings=16,
                          rope_scaling={"type": "dynamic", "factor": 2.0}), torch.float32, None),
    "rope_yarn": (Qwen2Config, Qwen2ForCausalLM,
                  dict(max_position_embeddings=64,
                       rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                     "original_max_position_embeddings": 16}),
                  torch.float32, None),
    "rope_llama3": (LlamaConfig, LlamaForCausalLM,
                    dict(head_dim=16, max_position_embeddings=512,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 64}),
                    torch.float32, None),
    "qwen3_bf16": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16), torch.bfloat16, None),
    "qwen2_sharded": (Qwen2Config, Qwen2ForCausalLM, {}, torch.float32, "60KB"),
}

T = 24          # tokens in the logits check
GREEDY_PROMPT = 8
GREEDY_NEW = 24  # the dynamic case reaches 32 positions, past max_position_embeddings=16


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def make(name, cfg_cls, model_cls, overrides, save_dtype, shard, seed):
    out = os.path.join(HERE, name)
    shutil.rmtree(out, ignore_errors=True)
    cfg = cfg_cls(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    randomize(model, seed)
    if save_dtype != torch.float32:
        model = model.to(save_dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out, safe_serialization=True, **kw)
    # Reference numbers: reload exactly what was saved, compute in float32, eager attention.
    ref = model_cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    ref.generation_config.eos_token_id = None
    ref.generation_config.bos_token_id = None
    g = torch.Generator().manual_seed(seed + 1000)
    ids = torch.randint(0, cfg.vocab_size, (1, T), generator=g)
    with torch.no_grad():
        o = ref(input_ids=ids, labels=ids)
        logits = o.logits[0].float().contiguous()
        gen = ref.generate(ids[:, :GREEDY_PROMPT], max_new_tokens=GREEDY_NEW, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    logits.numpy().astype("<f4").tofile(os.path.join(out, "logits.f32"))
    golden = {
        "input_ids": ids[0].tolist(),
        "logits_shape": list(logits.shape),
        "loss": float(o.loss),
        "greedy_prompt": ids[0, :GREEDY_PROMPT].tolist(),
        "greedy_ids": gen[0, GREEDY_PROMPT:].tolist(),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    print(f"{name}: loss {golden['loss']:.4f}, greedy {golden['greedy_ids'][:8]}...")


def main():
    names = sys.argv[1:] or list(CASES)
    for i, name in enumerate(CASES):
        if name in names:
            make(name, *CASES[name], seed=100 + i)


if __name__ == "__main__":
    main()
