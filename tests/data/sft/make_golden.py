#!/usr/bin/env python3
"""Golden ids and loss masks for tests/test_sft_data.cpp, from the Hugging Face stack.

Independent of our C++: the conversation is rendered by transformers' own Jinja chat template
(AutoTokenizer.apply_chat_template on tests/data/tokenizer/qwen3), cut into ChatML turns with a
regex, and every piece is tokenised by the Rust `tokenizers` library:
    <|im_start|> | ROLE "\\n" | BODY | <|im_end|> | "\\n"
The loss mask is 1 on BODY and <|im_end|> of assistant turns. For each example the file also
records the ids of the whole rendered string tokenised at once and whether they are equal to
the piece-wise ids (they differ only when a BODY starts with blanks + a line break; see
src/train/sft_data.h).

Run from the repository root with the project venv:
    /work/venv/bin/python tests/data/sft/make_golden.py
Writes tests/data/sft/golden_qwen3.json.
"""
import json
import os
import re

from tokenizers import Tokenizer
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOK_DIR = os.path.join(HERE, "..", "tokenizer", "qwen3")
TURN = re.compile(r"<\|im_start\|>([^\n]*)\n(.*?)<\|im_end\|>\n", re.S)


def messages_of(obj):
    if "messages" in obj:
        return [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
    msgs = []
    if "system" in obj:
        msgs.append({"role": "system", "content": obj["system"]})
    msgs.append({"role": "user", "content": obj["prompt"]})
    msgs.append({"role": "assistant", "content": obj["response"]})
    return msgs


def main():
    hf = AutoTokenizer.from_pretrained(TOK_DIR)
    rust = Tokenizer.from_file(os.path.join(TOK_DIR, "tokenizer.json"))
    im_start, im_end = rust.token_to_id("<|im_start|>"), rust.token_to_id("<|im_end|>")
    enc = lambda s: rust.encode(s, add_special_tokens=False).ids
    out = {"tokenizer": "tests/data/tokenizer/qwen3", "files": {}}
    for name in ["pairs.jsonl", "chat.jsonl"]:
        rows = []
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                msgs = messages_of(json.loads(line))
                text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
                ids, mask, n_prompt, pos = [], [], 0, 0
                for m in TURN.finditer(text):
                    assert m.start() == pos, "template output is not a sequence of ChatML turns"
                    pos = m.end()
                    role, body = m.group(1), m.group(2)
                    a = 1 if role == "assistant" else 0
                    ids.append(im_start); mask.append(0)
                    head = enc(role + "\n")
                    ids += head; mask += [0] * len(head)
                    if a:
                        n_prompt = len(ids)
                    b = enc(body)
                    ids += b; mask += [a] * len(b)
                    ids.append(im_end); mask.append(a)
                    nl = enc("\n")
                    ids += nl; mask += [0] * len(nl)
                assert pos == len(text)
                whole = enc(text)
                reference = [m["content"] for m in msgs if m["role"] == "assistant"][-1]
                rows.append({"line": line_no, "rendered": text, "ids": ids, "mask": mask,
                             "n_prompt": n_prompt, "reference": reference,
                             "whole_ids": whole, "whole_equal": whole == ids})
                if whole != ids:
                    print(f"{name}:{line_no}: whole-string ids differ from piece-wise ids")
        out["files"][name] = rows
    with open(os.path.join(HERE, "golden_qwen3.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=None)
        f.write("\n")
    print("wrote", os.path.join(HERE, "golden_qwen3.json"))


if __name__ == "__main__":
    main()
