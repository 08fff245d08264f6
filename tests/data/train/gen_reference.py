#!/usr/bin/env python3
"""Reference training steps for tests/test_train_reference.cpp, made by Hugging Face transformers
and PyTorch themselves.

For each tiny configuration below this script builds the model in transformers, draws every
parameter from a seeded normal (norms around 1, biases non-zero), saves it with save_pretrained
(float32 safetensors, transformers' own config.json), then, in float64 (so that the reference
carries no rounding of its own worth speaking of), on one fixed batch:
  - the mean cross-entropy over the counted targets (targets of -100 are ignored) and the L2 norm
    of every parameter's gradient (by Hugging Face name);
  - 10 optimiser steps on that batch exactly as a PyTorch training loop does them:
    torch.optim.AdamW with two parameter groups (weight decay on matrices only: no decay on
    norms, biases or the embedding), torch.nn.utils.clip_grad_norm_ (max_norm below the initial
    gradient norm, so it clips), transformers.get_cosine_schedule_with_warmup; the loss before
    every step and after the last.
Written next to the model folder: reference.json.
Run:  /work/venv/bin/python tests/data/train/gen_reference.py   (needs torch + transformers)
The C++ tests only read the files; they never need Python.
"""
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F
import transformers
from transformers import (Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
                          get_cosine_schedule_with_warmup)

HERE = os.path.dirname(os.path.abspath(__file__))

BASE = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
            bos_token_id=None, eos_token_id=1)

CASES = {
    # GQA 2:1, q/k/v biases (Qwen2), separate lm_head
    "qwen2_gqa_bias": (Qwen2Config, Qwen2ForCausalLM, {}),
    # tied embeddings, GQA 4:1
    "qwen2_tied": (Qwen2Config, Qwen2ForCausalLM,
                   dict(tie_word_embeddings=True, num_key_value_heads=1)),
    # Qwen3: per-head q/k RMSNorm, explicit head_dim != hidden/heads, no biases
    "qwen3_qknorm": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16)),
}

B, T = 2, 16
STEPS = 10
LR = 1e-2
WARMUP = 3
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def decays(name, p):
    # The rule of src/train (Param::decay): matrices decay, except the token embedding.
    return p.dim() >= 2 and "embed_tokens" not in name


def make(name, cfg_cls, model_cls, overrides, seed):
    out = os.path.join(HERE, name)
    shutil.rmtree(out, ignore_errors=True)
    cfg = cfg_cls(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = model_cls(cfg)
    randomize(model, seed)
    model.save_pretrained(out, safe_serialization=True)
    # Reload exactly what was saved; compute in float64, eager attention.
    ref = model_cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager")
    ref = ref.double().train()

    g = torch.Generator().manual_seed(seed + 1000)
    tokens = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    targets[1, 2] = -100  # ignored targets: the rows count 16 and 13 targets
    targets[1, 7] = -100
    targets[1, 15] = -100

    def loss_fn():
        logits = ref(input_ids=tokens).logits  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1),
                               ignore_index=-100, reduction="mean")

    named = list(ref.named_parameters())
    loss = loss_fn()
    loss.backward()
    grad_norms = {n: float(p.grad.norm()) for n, p in named}
    total_norm = float(torch.sqrt(sum(p.grad.double().pow(2).sum() for _, p in named)))
    clip = float(f"{0.5 * total_norm:.3g}")  # clips at least the first steps
    ref.zero_grad()

    groups = [
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    losses, norms, lrs = [], [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn()
        losses.append(float(loss))
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)))
        lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    with torch.no_grad():
        losses.append(float(loss_fn()))

    reference = {
        "tokens": tokens.tolist(),
        "targets": targets.tolist(),
        "loss": losses[0],
        "n_counted": int((targets >= 0).sum()),
        "grad_norms": grad_norms,
        "grad_norm_total": total_norm,
        "decay": {n: decays(n, p) for n, p in named},
        "optimizer": {"lr": LR, "warmup": WARMUP, "steps": STEPS, "schedule": "cosine",
                      "beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS,
                      "weight_decay": WEIGHT_DECAY, "clip_grad_norm": clip},
        "step_losses": losses,      # before step 1..10, then after step 10
        "step_grad_norms": norms,   # before clipping
        "step_lrs": lrs,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print(f"{name}: loss {losses[0]:.6f} -> {losses[-1]:.6f} after {STEPS} steps, "
          f"grad norm {total_norm:.4f}, clip {clip}")


def main():
    names = sys.argv[1:] or list(CASES)
    for i, name in enumerate(CASES):
        if name in names:
            make(name, *CASES[name], seed=300 + i)


if __name__ == "__main__":
    main()
