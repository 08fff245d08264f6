#!/usr/bin/env python3
"""Golden files for the LoRA adapter tests, made by Hugging Face PEFT itself.

Wraps the committed tiny base model tests/data/models/qwen2_gqa (and qwen3_headdim) in a PEFT
LoraConfig with random A and B (init_lora_weights=False, so the adapter is not a no-op), saves the
adapter with PEFT's save_pretrained, and writes the reference logits of the adapted model:
  <case>/adapter_config.json, <case>/adapter_model.safetensors   (PEFT's own files)
  <case>/golden.json  {"base": "...", "input_ids": [...], "logits_shape": [T, V]}
  <case>/logits.f32   float32 logits (T, V) of PeftModel(base, adapter) on input_ids
Also checks that an adapter written by our C++ code loads in PEFT when given its folder as
argv[1] with base argv[2] (prints the max |logit difference| against argv[3]/logits.f32).
Run: /work/venv/bin/python tests/data/lora/gen_peft_golden.py   (needs torch, transformers, peft)
"""
import json
import os
import sys

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "models")

CASES = {
    "qwen2_gqa_r4": ("qwen2_gqa", dict(r=4, lora_alpha=8,
                                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                       "gate_proj", "up_proj", "down_proj"])),
    "qwen3_headdim_rslora": ("qwen3_headdim", dict(r=3, lora_alpha=5, use_rslora=True,
                                                   target_modules=["q_proj", "v_proj", "down_proj"])),
}


def main():
    torch.manual_seed(0)
    ids = [3, 17, 42, 99, 5, 150, 77, 8, 23, 64, 1, 130]
    for name, (base, kw) in CASES.items():
        model = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, base),
                                                     torch_dtype=torch.float32,
                                                     attn_implementation="eager")
        cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, init_lora_weights=False, **kw)
        peft_model = get_peft_model(model, cfg)
        # Larger B so the adapter visibly moves the logits.
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.05)
        out = os.path.join(HERE, name)
        peft_model.save_pretrained(out)
        peft_model.eval()
        with torch.no_grad():
            logits = peft_model(torch.tensor([ids])).logits[0].float().numpy()
        logits.astype("<f4").tofile(os.path.join(out, "logits.f32"))
        with open(os.path.join(out, "golden.json"), "w") as f:
            json.dump({"base": base, "input_ids": ids, "logits_shape": list(logits.shape)}, f)
        # PEFT writes a README.md we do not need.
        readme = os.path.join(out, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        print(name, logits.shape)


def check_ours(adapter_dir, base_dir, expect_logits):
    model = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    pm = PeftModel.from_pretrained(model, adapter_dir).eval()
    g = json.load(open(os.path.join(expect_logits, "golden.json")))
    with torch.no_grad():
        logits = pm(torch.tensor([g["input_ids"]])).logits[0].float().numpy()
    ref = np.fromfile(os.path.join(expect_logits, "logits.f32"), dtype="<f4").reshape(logits.shape)
    print("max |logit diff| PEFT(our adapter) vs golden:", float(np.abs(logits - ref).max()))


if __name__ == "__main__":
    if len(sys.argv) == 4:
        check_ours(*sys.argv[1:])
    else:
        main()
