#!/usr/bin/env python3
"""Golden safetensors files written by the Python `safetensors` library, for tests/test_safetensors.cpp.

    /work/venv/bin/python tests/data/safetensors/gen.py

writes, next to this script:
  mixed.safetensors        every dtype our engine supports (F32 F16 BF16 I32 I64 U8), odd shapes,
                           a scalar, a zero-size tensor, names in non-sorted order
  unsupported.safetensors  F64, I8, BOOL, U16 (listed by our reader with supported=false)
  sharded/                 a checkpoint split by huggingface_hub's split_torch_state_dict_into_shards
                           (max_shard_size=200 bytes: a tensor larger than the limit, a shard filled
                           exactly to the limit), shards saved with metadata {"format": "pt"} and
                           model.safetensors.index.json written as transformers' save_pretrained does
                           (json.dumps(index, indent=2, sort_keys=True) + "\\n")
  manifest.json            which tensors each file holds; values follow value(id, k) below, so the
                           C++ test regenerates them without Python

The C++ test reads these files, checks every value, and writes the same tensors with our writer:
the bytes must be identical.

Second use, checking that files written by OUR writer load in Python:

    /work/venv/bin/python tests/data/safetensors/gen.py --check-export build/tests/test_safetensors

runs the test binary's SafetensorsExport test with QWEN_EXPORT_DIR set to a temp folder, then loads
every file it wrote with safetensors.torch.load_file and transformers' load_state_dict (which also
checks the "format" metadata), and the sharded checkpoint through its index, comparing all values.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import safetensors
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))

TORCH_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
    "I64": torch.int64, "U8": torch.uint8, "F64": torch.float64, "I8": torch.int8,
    "BOOL": torch.bool, "U16": torch.uint16,
}


def value(tid, k, dtype):
    """Element k (row-major) of tensor `tid`; exact in every dtype."""
    if dtype == "U8":
        return (k * 31 + tid * 17) % 251
    if dtype == "U16":
        return (k * 31 + tid * 17) % 65521
    if dtype == "BOOL":
        return (k + tid) % 3 == 0
    v = (k * 31 + tid * 17) % 61 - 30
    if dtype in ("F32", "F16", "BF16", "F64"):
        return v / 8.0
    return v


def make(tid, dtype, shape):
    n = 1
    for d in shape:
        n *= d
    flat = torch.tensor([value(tid, k, dtype) for k in range(n)], dtype=torch.float64 if dtype not in ("BOOL",) else torch.bool)
    if dtype == "U16":
        flat = flat.to(torch.int64)
    return flat.to(TORCH_DTYPES[dtype]).reshape(shape)


MIXED = [  # (name, dtype, shape)
    ("model.layers.1.mlp.up_proj.weight", "BF16", [3, 5]),
    ("model.embed_tokens.weight", "F32", [7, 3]),
    ("lm_head.weight", "F16", [5, 3]),
    ("model.layers.0.self_attn.q_proj.bias", "F32", [6]),
    ("counts", "I64", [2, 3]),
    ("token_ids", "I32", [9]),
    ("mask", "U8", [11]),
    ("scale", "F32", []),
    ("empty", "BF16", [0, 4]),
    ("model.norm.weight", "F16", [4]),
    ("Zeta", "F32", [1, 1, 3]),
]
UNSUPPORTED = [("doubles", "F64", [3]), ("bytes", "I8", [5]), ("flags", "BOOL", [2, 2]), ("u16", "U16", [3])]
SHARDED = [  # state-dict order matters for the split
    ("model.embed_tokens.weight", "F32", [8, 4]),   # 128 B
    ("model.norm.weight", "BF16", [4]),             # 8 B
    ("model.big.weight", "F32", [20, 4]),           # 320 B > 200: its own shard
    ("model.a", "F32", [10]),                       # 40 B
    ("model.b", "F32", [6]),                        # 24 B: fills the shard to exactly 200
    ("model.c", "I64", [2]),                        # 16 B: would exceed, new shard
]
MAX_SHARD = 200


def generate():
    manifest = {"generator": "tests/data/safetensors/gen.py", "safetensors_version": safetensors.__version__,
                "files": {}}
    tid = 0

    def build(spec):
        nonlocal tid
        sd, entries = {}, []
        for name, dtype, shape in spec:
            tid += 1
            sd[name] = make(tid, dtype, shape)
            entries.append({"name": name, "dtype": dtype, "shape": shape, "id": tid})
        return sd, entries

    for fname, spec in (("mixed.safetensors", MIXED), ("unsupported.safetensors", UNSUPPORTED)):
        sd, entries = build(spec)
        save_file(sd, os.path.join(HERE, fname), metadata={"format": "pt"})
        manifest["files"][fname] = entries

    sd, entries = build(SHARDED)
    out = os.path.join(HERE, "sharded")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    split = split_torch_state_dict_into_shards(sd, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=MAX_SHARD)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: sd[n] for n in names}, os.path.join(out, filename), metadata={"format": "pt"})
    assert split.is_sharded
    index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
    with open(os.path.join(out, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    manifest["files"]["sharded"] = entries
    manifest["max_shard_bytes"] = MAX_SHARD
    manifest["shards"] = split.filename_to_tensors
    for root, _, files in os.walk(HERE):  # safetensors creates files 0600
        for fn in files:
            if fn.endswith((".safetensors", ".json")):
                os.chmod(os.path.join(root, fn), 0o644)
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote golden files with safetensors {safetensors.__version__}; shards: {split.filename_to_tensors}")


def check_tensor(t, e, where):
    assert list(t.shape) == e["shape"], f"{where}: {e['name']} shape {list(t.shape)} != {e['shape']}"
    assert t.dtype == TORCH_DTYPES[e["dtype"]], f"{where}: {e['name']} dtype {t.dtype} != {e['dtype']}"
    want = make(e["id"], e["dtype"], e["shape"])
    assert torch.equal(t, want), f"{where}: {e['name']} values differ"


def check_export(test_binary):
    from transformers.modeling_utils import load_state_dict
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, QWEN_EXPORT_DIR=tmp)
        subprocess.run([test_binary, "--gtest_filter=SafetensorsExport.*"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        with open(os.path.join(tmp, "expected.json")) as f:
            expected = json.load(f)
        n_files = n_tensors = 0
        for rel, spec in expected["files"].items():
            path = os.path.join(tmp, rel)
            sd = load_file(path)
            assert set(sd) == {e["name"] for e in spec["tensors"]}, f"{rel}: tensor names differ"
            for e in spec["tensors"]:
                check_tensor(sd[e["name"]], e, rel)
            with safe_open(path, framework="pt") as f:
                assert f.metadata() == spec["metadata"], f"{rel}: metadata {f.metadata()} != {spec['metadata']}"
            sd2 = load_state_dict(path)  # transformers' loader: checks the "format" metadata
            assert set(sd2) == set(sd)
            n_files += 1
            n_tensors += len(sd)
        for rel, spec in expected["checkpoints"].items():
            folder = os.path.join(tmp, rel)
            with open(os.path.join(folder, "model.safetensors.index.json")) as f:
                index = json.load(f)
            assert index["metadata"]["total_size"] == spec["total_size"], rel
            seen = {}
            for shard in sorted(set(index["weight_map"].values())):
                for name, t in load_file(os.path.join(folder, shard)).items():
                    assert index["weight_map"][name] == shard, f"{rel}: {name} not in the shard the index names"
                    seen[name] = t
                n_files += 1
            assert set(seen) == {e["name"] for e in spec["tensors"]}, f"{rel}: tensor names differ"
            for e in spec["tensors"]:
                check_tensor(seen[e["name"]], e, rel)
            n_tensors += len(seen)
        print(f"OK: {n_files} files / {n_tensors} tensors written by our writer load in Python "
              f"safetensors {safetensors.__version__} with the expected values and metadata")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-export":
        check_export(sys.argv[2])
    elif len(sys.argv) == 1:
        generate()
    else:
        sys.exit(__doc__)
