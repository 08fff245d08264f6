#!/usr/bin/env python3
"""Golden RoPE frequencies from the real transformers stack, for tests/test_rope.cpp.

Each case is a config.json dict. transformers loads it (CONFIG_MAPPING[model_type].from_dict, as
from_pretrained does), builds the model's own rotary-embedding module (Qwen2/Qwen3/Llama
RotaryEmbedding: compute_default_rope_parameters or ROPE_INIT_FUNCTIONS[rope_type]) and we dump
inv_freq, attention_scaling and the cos/sin its forward() returns for a few positions. For
"dynamic" cases with a seq_len, inv_freq comes from ROPE_INIT_FUNCTIONS["dynamic"](config,
seq_len=...) exactly as the module's dynamic update calls it. The C++ test parses the same config
text with ModelConfig::from_json, so this also checks config parsing.

    /work/venv/bin/python tests/data/rope/gen_rope_golden.py            # writes rope_golden.json

Second use, checking what ModelConfig::to_json writes (interop):

    /work/venv/bin/python tests/data/rope/gen_rope_golden.py --check-config-export build/tests/test_config

runs the test binary's ConfigExport test with QWEN_EXPORT_DIR set to a temp folder, then loads
every <case>/config.json it wrote with AutoConfig.from_pretrained, builds the model with
AutoModelForCausalLM.from_config and compares with <case>/expected.json (what our C++ side
believes: head_dim, biases, q/k norms, tying, inv_freq, attention_factor).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

HERE = os.path.dirname(os.path.abspath(__file__))
POSITIONS = [0, 1, 7, 100, 4095, 32767]


def base(model_type, hidden, heads, kv, **extra):
    arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
    d = {
        "architectures": [arch[model_type]],
        "model_type": model_type,
        "vocab_size": 128,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-6,
    }
    d.update(extra)
    return d


CASES = [
    # (name, config dict, seq_len for dynamic or None)
    ("qwen2_default_d16", base("qwen2", 64, 4, 2, rope_theta=10000.0), None),
    ("qwen25_default_d128", base("qwen2", 1536, 12, 2, rope_theta=1000000.0,
                                 max_position_embeddings=32768, rope_scaling=None), None),
    ("qwen3_v5_rope_parameters", base("qwen3", 1024, 16, 8, head_dim=128,
                                      rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}), None),
    ("llama_default_d80", base("llama", 640, 8, 8, rope_theta=10000.0), None),
    ("llama_default_d6", base("llama", 12, 2, 1, rope_theta=10000.0), None),
    ("llama_linear_2", base("llama", 256, 4, 4, rope_theta=10000.0,
                            rope_scaling={"rope_type": "linear", "factor": 2.0}), None),
    ("qwen2_linear_2p5_legacy_type", base("qwen2", 512, 8, 4, rope_theta=1000000.0,
                                          rope_scaling={"type": "linear", "factor": 2.5}), None),
    ("llama_dynamic_below_max", base("llama", 256, 4, 4, rope_theta=10000.0, max_position_embeddings=2048,
                                     rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 1000),
    ("llama_dynamic_above_max", base("llama", 256, 4, 4, rope_theta=10000.0, max_position_embeddings=2048,
                                     rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 5000),
    ("qwen2_dynamic_4_above", base("qwen2", 1536, 12, 2, rope_theta=1000000.0, max_position_embeddings=32768,
                                   rope_scaling={"type": "dynamic", "factor": 4.0}), 40000),
    # The worked example of formats.md §3 (Qwen2.5 YaRN recipe), written the way our writer does
    # (max_position_embeddings = factor * original) and with the original max only.
    ("qwen25_yarn_recipe", base("qwen2", 1536, 12, 2, rope_theta=1000000.0, max_position_embeddings=131072,
                                rope_scaling={"type": "yarn", "factor": 4.0,
                                              "original_max_position_embeddings": 32768}), None),
    ("qwen25_yarn_recipe_m32768", base("qwen2", 1536, 12, 2, rope_theta=1000000.0, max_position_embeddings=32768,
                                       rope_scaling={"type": "yarn", "factor": 4.0,
                                                     "original_max_position_embeddings": 32768}), None),
    ("qwen3_yarn_params", base("qwen3", 256, 4, 2, head_dim=64, rope_theta=1000000.0,
                               max_position_embeddings=40960,
                               rope_scaling={"rope_type": "yarn", "factor": 2.5, "original_max_position_embeddings": 8192,
                                             "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.25,
                                             "truncate": False}), None),
    ("llama_yarn_mscale", base("llama", 512, 4, 4, rope_theta=10000.0, max_position_embeddings=16384,
                               rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                                             "mscale": 1.0, "mscale_all_dim": 0.5}), None),
    ("llama_yarn_mscale_equal", base("llama", 512, 4, 4, rope_theta=10000.0, max_position_embeddings=16384,
                                     rope_scaling={"rope_type": "yarn", "factor": 40.0,
                                                   "original_max_position_embeddings": 4096,
                                                   "mscale": 0.707, "mscale_all_dim": 0.707}), None),
    ("qwen3_v5_yarn_theta_inside", base("qwen3", 256, 4, 2, head_dim=32, max_position_embeddings=65536,
                                        rope_parameters={"rope_type": "yarn", "rope_theta": 50000.0, "factor": 8.0,
                                                         "original_max_position_embeddings": 8192}), None),
    ("llama31_llama3", base("llama", 4096, 32, 8, rope_theta=500000.0, max_position_embeddings=131072,
                            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}), None),
    ("llama_llama3_odd", base("llama", 256, 4, 4, rope_theta=10000.0, max_position_embeddings=65536,
                              rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 2.0,
                                            "high_freq_factor": 8.0, "original_max_position_embeddings": 4096}), None),
]


def rotary_module(config):
    mt = config.model_type
    if mt == "qwen2":
        from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding as R
    elif mt == "qwen3":
        from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding as R
    else:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding as R
    return R(config)


def f32list(t):
    # Shortest decimal that reads back as the same float32 (keeps the file small).
    return [float(str(x)) for x in t.detach().to(torch.float32).flatten().numpy()]


def golden_case(name, cfg, seq_len):
    config = CONFIG_MAPPING[cfg["model_type"]].from_dict(json.loads(json.dumps(cfg)))
    rot = rotary_module(config)
    if seq_len is not None:
        inv, af = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=seq_len)
        rot.inv_freq = inv
        rot.attention_scaling = af
        rot.max_seq_len_cached = max(seq_len, config.max_position_embeddings)  # no further update
    inv = rot.inv_freq
    af = rot.attention_scaling
    x = torch.zeros(1, 1, 1, dtype=torch.float32)
    pos = torch.tensor([POSITIONS], dtype=torch.int64)
    # Call the undecorated forward so the dynamic update does not recompute from POSITIONS.
    fwd = type(rot).forward.__wrapped__ if hasattr(type(rot).forward, "__wrapped__") else type(rot).forward
    cos, sin = fwd(rot, x, pos)
    half = inv.numel()
    cos = cos[0, :, :half]
    sin = sin[0, :, :half]
    return {
        "name": name,
        "config": json.dumps(cfg),
        "seq_len": seq_len if seq_len is not None else 0,
        "inv_freq": f32list(inv),
        "attention_factor": float(af),
        "positions": POSITIONS,
        "cos": [f32list(r) for r in cos],
        "sin": [f32list(r) for r in sin],
    }


def generate():
    out = {
        "generator": "tests/data/rope/gen_rope_golden.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "cases": [golden_case(*c) for c in CASES],
    }
    path = os.path.join(HERE, "rope_golden.json")
    cases = out.pop("cases")
    with open(path, "w") as f:  # one case per line
        f.write(json.dumps(out)[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {path}: {len(CASES)} cases (transformers {transformers.__version__}, torch {torch.__version__})")


def check_config_export(test_binary):
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, QWEN_EXPORT_DIR=tmp)
        subprocess.run([test_binary, "--gtest_filter=ConfigExport.*"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        cases = sorted(d for d in os.listdir(tmp) if os.path.isdir(os.path.join(tmp, d)))
        assert cases, "the test binary wrote no configs"
        for case in cases:
            folder = os.path.join(tmp, case)
            with open(os.path.join(folder, "expected.json")) as f:
                exp = json.load(f)
            config = AutoConfig.from_pretrained(folder)
            model = AutoModelForCausalLM.from_config(config)
            attn = model.model.layers[0].self_attn
            mlp = model.model.layers[0].mlp
            head_dim = attn.head_dim
            got = {
                "architecture": type(model).__name__,
                "head_dim": head_dim,
                "num_key_value_heads": config.num_key_value_heads,
                "qkv_bias": attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None,
                "o_bias": attn.o_proj.bias is not None,
                "mlp_bias": mlp.gate_proj.bias is not None,
                "qk_norm": hasattr(attn, "q_norm"),
                "tie_word_embeddings": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
                "max_position_embeddings": config.max_position_embeddings,
                "eos_token_id": config.eos_token_id,
                "torch_dtype": str(config.dtype).replace("torch.", ""),
            }
            for k, v in got.items():
                assert v == exp[k], f"{case}: {k}: transformers has {v!r}, we expected {exp[k]!r}"
            rot = model.model.rotary_emb
            inv = f32list(rot.inv_freq)
            assert len(inv) == len(exp["inv_freq"]), case
            for a, b in zip(inv, exp["inv_freq"]):
                assert abs(a - b) <= 1e-6 * abs(a), f"{case}: inv_freq {a} vs ours {b}"
            assert abs(rot.attention_scaling - exp["attention_factor"]) <= 1e-6, case
            print(f"OK {case}: {type(model).__name__} loads our config.json; head_dim {head_dim}, "
                  f"biases/norms/tying and inv_freq agree")
    print(f"config export check passed with transformers {transformers.__version__}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-config-export":
        check_config_export(sys.argv[2])
    elif len(sys.argv) == 1:
        generate()
    else:
        sys.exit(__doc__)
