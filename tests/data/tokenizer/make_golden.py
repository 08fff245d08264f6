#!/usr/bin/env python3
"""Makes the tokenizer golden files with the reference implementation: Hugging Face's own Rust
`tokenizers` library through its Python binding (and `transformers` for the chat template).

Run from the repository root with the project's venv:
    /work/venv/bin/python tests/data/tokenizer/make_golden.py [--qwen-bin build/bin/qwen]

What it writes under tests/data/tokenizer/:
  <name>/tokenizer.json (+ tokenizer_config.json)  small tokenizers BUILT AND TRAINED with the
      reference library, covering what Qwen3's file does not: a Llama-3 style regex (\\p{N}{1,3})
      with ignore_merges, merges written as "a b" strings, added tokens with lstrip / rstrip /
      single_word / normalized, a Llama-3 TemplateProcessing post-processor, GPT-2's ByteLevel
      regex with add_prefix_space, every Split behaviour, char-level BPE with [UNK] and
      byte_fallback, no normalizer / NFKC / NFD.
  golden/cases.json  the texts (hard cases and real paragraphs), by name.
  golden/<name>.json  for each tokenizer: the reference ids of many hard cases (with and without
      special tokens) and the reference decodes (with and without skipping special tokens).
  golden/qwen3_decode.json  reference decodes of random id lists (broken UTF-8 -> U+FFFD).
  golden/qwen3_chat.json  transformers' apply_chat_template renderings of the real Qwen3 config.
  golden/qwen25_style_chat.json  the same for a Qwen2.5-style template with a default system
      message (qwen25_style_config/tokenizer_config.json).
  trained/ + golden/trained.json  (only with --qwen-bin) our `qwen tokenizer train` output on
      train_corpus.txt (vocabulary 700), and the ids the reference library gives with that file
      for held-out text.
Real text (a few paragraphs) comes from Debian packages: r-cran-janeaustenr (via Rscript),
bible-kjv (the `bible` program) and jargon-text.
"""
import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")

QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# ------------------------------------------------------------------------------ real text
def austen_paragraphs():
    r = subprocess.run(
        ["Rscript", "-e",
         'e <- new.env(); data("prideprejudice", "emma", package="janeaustenr", envir=e); '
         'cat(e$prideprejudice[1:400], sep="\\n"); cat("\\n\\n"); cat(e$emma[1:300], sep="\\n")'],
        capture_output=True, text=True, check=True)
    paras = [p.strip("\n") for p in r.stdout.split("\n\n")]
    return [p for p in paras if len(p) > 200]


def bible_text(spec):
    r = subprocess.run(["bible", spec], capture_output=True, text=True, check=True)
    return r.stdout


def jargon_text():
    with gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8") as f:
        return f.read()


def real_paragraphs():
    a = austen_paragraphs()
    j = jargon_text()
    jp = [p for p in j.split("\n\n") if len(p) > 300]
    return {
        "austen_1": a[3], "austen_2": a[10], "austen_3": a[25], "austen_emma": a[-5],
        "kjv_psalm_23": bible_text("Ps23"), "kjv_john_1": bible_text("Jn1:1-14"),
        "jargon_1": jp[40], "jargon_2": jp[400], "jargon_table": j[j.find("NRL"):j.find("NRL") + 1500],
    }


def training_corpus():
    """A few hundred KB of real text for the small reference-trained tokenizers."""
    j = jargon_text()
    b = bible_text("Ge1-50")
    return [p for p in (j[:300000] + "\n\n" + b).split("\n") if p]


# ------------------------------------------------------------------------------ hard cases
def hard_cases():
    rnd = random.Random(1234)
    letters = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3000))
    return {
        "empty": "",
        "hello": "Hello world",
        "hello_space": " Hello world",
        "whitespace_runs": "a  b   c    d\t\te  \t f      g",
        "leading_ws": "   leading spaces",
        "trailing_ws": "trailing spaces   ",
        "only_ws": " \t \n \n\n   ",
        "unicode_ws": "a\u00a0b\u3000c\u2003 d\u2028e\u0085f \u180e\u180eg",
        "crlf": "line one\r\nline two\r\n\r\nline three\r\r\n\n\rend",
        "newlines_spaces": "para one.\n\n\n  indented\n \n\tx\n",
        "contractions_lower": "I'm sure you're right, he's here, we've gone, they'll see, I'd go, can't won't",
        "contractions_upper": "I'M SURE YOU'RE RIGHT, HE'S HERE, WE'VE GONE, THEY'LL SEE, I'D GO, CAN'T",
        "contractions_mixed": "don'T I'Ll we'Ve She'S 'S 's' ''s",
        "digits": "1234567890123456789 3.14159 2,000,000 1e10 0x1F -42 +7",
        "digits_unicode": "\u0663\u0664\u0665 \u2460\u2461 \u00bd \u00b2 \uff11\uff12\uff13",
        "code_tabs": "def f(x):\n\tif x > 0:\n\t\treturn x  # positive\n\treturn None\n",
        "code_c": "int main(int argc, char** argv) {\n    printf(\"%d\\n\", argc);\n    return 0;\n}\n",
        "nfc_accents": "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \u00f1",
        "nfd_accents": "cafe\u0301 nai\u0308ve re\u0301sume\u0301 A\u030angstro\u0308m n\u0303",
        "nf_singletons": "\u212b \u2126 \u1e9b\u0323 q\u0307\u0323 \u0344 e\u0301\u0301",
        "cjk": "\u6211\u7231\u81ea\u7136\u8bed\u8a00\u5904\u7406\u3002\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff01",
        "japanese": "\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\u3002\u30ab\u30bf\u30ab\u30ca \uff8a\uff9d\uff76\uff78 \u304b\u3099",
        "korean": "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4! \ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
        "korean_jamo": "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af",
        "emoji_zwj": "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family \U0001F3F3\ufe0f\u200d\U0001F308 flag \U0001F44D\U0001F3FD ok",
        "mixed_scripts": "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 \u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439",
        "symbols": "\u2211\u222b\u221a\u221e \u2192 \u00a9\u00ae\u2122 \u20ac100 $5 \u00a35 <>&\"' ~`^ {[()]}",
        "zero_width": "a\u200bb\u200cc\u200dd\ufeffe",
        "special_inline": "Hello<|im_end|>world<|im_start|>user\nhi<|endoftext|><|endoftext|>",
        "special_partial": "<|im_end| <|im_start <| |> <|endoftext|",
        "think_tags": "<think>\nreasoning\n</think>\n\nanswer",
        "special_spaces": "  <|im_start|>  system \n<|im_end|>  ",
        "long_word_a": "a" * 5000,
        "long_word_repeat": "supercalifragilistic" * 60,
        "long_word_random": letters,
        "long_ws": " " * 3000 + "x" + "\n" * 500,
        "nul": "a\x00b \x00 \x00\x00",
        "control": "\x01\x02\x1b[31mred\x1b[0m\x7f",
        "url": "https://example.com/path?q=1&r=two#frag user@mail.org",
        "mixed_case": "HeLLo WoRLD iPhone McDonald's NASA's",
        "punct_runs": "Wait... what?!?! --- (yes) [no] {maybe};;; :: \"\"quoted\"\"",
        "apostrophes": "\u2019s \u2018quoted\u2019 it\u2019s rock'n'roll",
        "surrogate_range": "\U0001D400\U0001D401 \U00010000 \U0010FFFD",
        "private_use": "\ue000\uf8ff",
    }


def unicode_sweep():
    """Every 61st code point assigned in Python's Unicode (14.0, the version of PCRE2 10.42's
    tables) in four contexts, to compare character classes and case folding everywhere."""
    cps = [c for c in range(1, 0x110000, 61)
           if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    starters = [c for c in cps if unicodedata.combining(chr(c)) == 0]  # no canonical reordering
    return {
        "sweep_concat": "".join(map(chr, starters)),
        "sweep_spaced": " ".join(map(chr, cps)),
        "sweep_apos": "".join("x" + chr(c) + "'s" + chr(c) + "'LL " for c in cps),
        "sweep_newline": "".join(chr(c) + "\n\t" for c in cps),
    }


# ------------------------------------------------------------------------------ helpers
def nfc(s):
    return unicodedata.normalize("NFC", s)


def golden_cases(tok, cases, norm):
    out = []
    for name, text in cases.items():
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_sp = tok.encode(text, add_special_tokens=True).ids
        normalized = unicodedata.normalize(norm, text) if norm else text
        decoded = tok.decode(ids_sp, skip_special_tokens=False)
        decoded_skip = tok.decode(ids_sp, skip_special_tokens=True)
        # To keep the files small, fields equal to a default are left out: ids_special defaults
        # to ids, decoded to normalized, decoded_skip to decoded, normalized (what
        # decode(encode(text)) must give for a lossless tokenizer, by Python's unicodedata) to
        # text; ids_special / decoded that only add the post-processor's tokens around ids /
        # normalized are written as special_prefix/suffix, decoded_prefix/suffix.
        # ids_special and decoded are written as prefix/suffix around ids / normalized when they
        # are (the post-processor's tokens).
        case = {"name": name, "ids": ids}
        if ids_sp != ids:
            k = next((k for k in range(len(ids_sp) - len(ids) + 1) if ids_sp[k:k + len(ids)] == ids), None)
            if k is None:
                case["ids_special"] = ids_sp
            else:
                case["special_prefix"], case["special_suffix"] = ids_sp[:k], ids_sp[k + len(ids):]
        if normalized != text:
            case["normalized"] = normalized
        if decoded != normalized:
            k = decoded.find(normalized) if normalized else -1
            if k >= 0 and len(decoded) - len(normalized) <= 64:
                case["decoded_prefix"], case["decoded_suffix"] = decoded[:k], decoded[k + len(normalized):]
            else:
                case["decoded"] = decoded
        if decoded_skip != decoded:
            case["decoded_skip"] = decoded_skip
        out.append(case)
    return out


def write_json(path, obj):
    """Compact JSON with one list item (case) per line."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dump = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    parts = []
    for k, v in obj.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            parts.append(dump(k) + ": [\n" + ",\n".join(dump(x) for x in v) + "\n]")
        else:
            parts.append(dump(k) + ": " + dump(v))
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(parts) + "\n}\n")


def save_tokenizer(tok, name, config=None, merges_as_strings=False, edit=None):
    """Saves through the reference library, optionally rewrites parts of the JSON, then checks
    that the reference library loads the rewritten file back; returns the reloaded tokenizer."""
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    j = json.loads(tok.to_str())
    if merges_as_strings:
        j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    if edit:
        edit(j)
    s = json.dumps(j, ensure_ascii=False, indent=None)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(s)
    if config is not None:
        write_json(os.path.join(d, "tokenizer_config.json"), config)
    return Tokenizer.from_file(os.path.join(d, "tokenizer.json"))


def train_bytelevel(regex, vocab_size, specials, ignore_merges=False, prefix=False, use_regex=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    steps = []
    if regex:
        steps.append(pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=use_regex))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps) if len(steps) > 1 else steps[0]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=specials)
    tok.train_from_iterator(training_corpus(), trainer)
    return tok


# ------------------------------------------------------------------------------ tokenizers
def make_llama3_style():
    tok = train_bytelevel(LLAMA3_REGEX, 3000, ["<|begin_of_text|>", "<|end_of_text|>"], ignore_merges=True)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    tok.add_special_tokens([AddedToken("<|eot_id|>", special=True, normalized=False)])
    tok.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False),
                    AddedToken("[SEP]", lstrip=True, rstrip=True, normalized=False),
                    AddedToken("<right>", rstrip=True, normalized=False),
                    AddedToken("word", single_word=True, normalized=False),
                    AddedToken("<|eot_id|>x", normalized=False)])

    def edit(j):
        # whole words that BPE's merges would not build: only ignore_merges finds them
        v = j["model"]["vocab"]
        n = max(v.values()) + 1
        for w in ["\u0120qwertyuiop", "zyxwv", "\u0120zebra\u0120crossing"]:
            if w not in v:
                v[w] = n
                n += 1
        # the added tokens must keep the ids after the vocabulary
        for t in j["added_tokens"]:
            if t["content"] not in v:
                t["id"] = n
                n += 1
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
           "tokenizer_class": "PreTrainedTokenizerFast"}
    return save_tokenizer(tok, "llama3_style", cfg, merges_as_strings=True, edit=edit)


def make_gpt2_style():
    tok = train_bytelevel(None, 1500, ["<|endoftext|>"], prefix=True, use_regex=True)
    tok.normalizer = normalizers.NFKC()
    tok.add_tokens([AddedToken("\ufb01ne", normalized=True),         # NFKC -> "fine"
                    AddedToken("Hello", normalized=True, single_word=True),
                    AddedToken(" spaced", normalized=False, lstrip=True)])
    return save_tokenizer(tok, "gpt2_style", {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"})


def make_split_variants():
    base = train_bytelevel(QWEN_REGEX, 800, ["<|endoftext|>"])
    out = {}
    variants = {
        "split_removed": [pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
                          pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)],
        "split_merged_prev": [pre_tokenizers.Split(Regex(r"[.,;!?]"), behavior="merged_with_previous"),
                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)],
        "split_merged_next": [pre_tokenizers.Split(" ", behavior="merged_with_next"),
                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)],
        "split_contiguous_invert": [pre_tokenizers.Split(Regex(r"\p{L}+"), behavior="contiguous", invert=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)],
        "split_empty_matches": [pre_tokenizers.Split(Regex(r"\b|x*"), behavior="isolated"),
                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)],
    }
    for name, steps in variants.items():
        tok = Tokenizer.from_str(base.to_str())
        tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
        tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.NFC()])
        out[name] = save_tokenizer(tok, name)
    return out


def make_charlevel():
    tok = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+"), behavior="isolated")
    tok.normalizer = normalizers.NFD()
    trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=2, show_progress=False,
                                  special_tokens=["[UNK]", "[CLS]", "[SEP]"], limit_alphabet=60)
    tok.train_from_iterator(training_corpus(), trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    a = save_tokenizer(tok, "charlevel_unk")

    tok2 = Tokenizer(models.BPE(byte_fallback=True))
    tok2.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?\w+| ?[^\w\s]+|\s+"), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=500, min_frequency=2, show_progress=False,
                                  special_tokens=["<s>"], limit_alphabet=50)
    tok2.train_from_iterator(training_corpus(), trainer)

    def edit(j):
        v = j["model"]["vocab"]
        n = max(v.values()) + 1
        for b in range(256):
            k = "<0x%02X>" % b
            if k not in v:
                v[k] = n
                n += 1
        for t in j["added_tokens"]:
            t["id"] = v[t["content"]]
    b = save_tokenizer(tok2, "charlevel_bytefallback", edit=edit)
    return a, b


# ------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qwen-bin", help="built `qwen` CLI: also make golden/trained.json")
    args = ap.parse_args()

    cases = hard_cases()
    cases.update(real_paragraphs())

    qwen = Tokenizer.from_file(os.path.join(HERE, "qwen3", "tokenizer.json"))
    extra = {
        "lstrip_mask": "hello   <mask> world <mask>\t\n<mask>",
        "rstrip_sep": "a [SEP]   b[SEP]\n\nc  [SEP]",
        "rstrip_right": "x<right>    y <right>",
        "single_word": "word words sword word. _word wordy (word) word",
        "overlap_eot": "<|eot_id|>x <|eot_id|> <|eot_id|>xx",
        "ignore_merges": " qwertyuiop zyxwv zebra crossing qwertyuiop",
        "digits_3": "1234567 12 123 1234 99999999999",
        "nfkc_added": "this is \ufb01ne and fine, Hello Hellos",
        "lstrip_spaced": "a  spaced  spaced",
    }
    sweep = unicode_sweep()
    # every text once; the golden files name them
    write_json(os.path.join(GOLDEN, "cases.json"), {**cases, **extra, **sweep})
    write_json(os.path.join(GOLDEN, "qwen3.json"),
               {"tokenizer": "qwen3", "normalizer": "NFC", "cases": golden_cases(qwen, {**cases, **sweep}, "NFC")})

    # random id lists: broken UTF-8 in the middle and at the end
    rnd = random.Random(7)
    n_vocab = qwen.get_vocab_size()
    lists = []
    for k in range(60):
        ids = [rnd.randrange(n_vocab) for _ in range(rnd.randrange(1, 30))]
        if k % 3 == 0:  # many single-byte tokens (ids < 256) give partial sequences
            ids = [rnd.randrange(256) for _ in range(rnd.randrange(1, 12))]
        lists.append({"ids": ids, "decoded": qwen.decode(ids, skip_special_tokens=False),
                      "decoded_skip": qwen.decode(ids, skip_special_tokens=True)})
    write_json(os.path.join(GOLDEN, "qwen3_decode.json"), {"tokenizer": "qwen3", "lists": lists})

    l3 = make_llama3_style()
    write_json(os.path.join(GOLDEN, "llama3_style.json"),
               {"tokenizer": "llama3_style", "normalizer": "", "cases": golden_cases(l3, {**cases, **extra, **sweep}, "")})
    g2 = make_gpt2_style()
    g2cases = {**cases, "nfkc_added": extra["nfkc_added"], "lstrip_spaced": extra["lstrip_spaced"]}
    write_json(os.path.join(GOLDEN, "gpt2_style.json"),
               {"tokenizer": "gpt2_style", "normalizer": "NFKC", "cases": golden_cases(g2, g2cases, "NFKC")})
    for name, tok in make_split_variants().items():
        write_json(os.path.join(GOLDEN, name + ".json"),
                   {"tokenizer": name, "normalizer": "NFC", "cases": golden_cases(tok, cases, "NFC")})
    a, b = make_charlevel()
    write_json(os.path.join(GOLDEN, "charlevel_unk.json"),
               {"tokenizer": "charlevel_unk", "normalizer": "NFD", "cases": golden_cases(a, cases, "NFD")})
    write_json(os.path.join(GOLDEN, "charlevel_bytefallback.json"),
               {"tokenizer": "charlevel_bytefallback", "normalizer": "", "cases": golden_cases(b, cases, "")})

    # chat template through transformers with the real Qwen3 files
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(os.path.join(HERE, "qwen3"))
    convs = [
        [("user", "Hello!")],
        [("system", "You are terse."), ("user", "What is 2+2?")],
        [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me a joke.")],
        [("user", "Q1"), ("assistant", "<think>\nhmm\n</think>\n\nA1"), ("user", "Q2")],
        [("user", "Q1"), ("assistant", "<think>\nplan\n</think>\n\nfinal answer")],
        [("system", "S"), ("user", "multi\nline\n"), ("assistant", "ok"), ("system", "late system")],
    ]
    chats = []
    for conv in convs:
        msgs = [{"role": r, "content": c} for r, c in conv]
        for gen in (True, False):
            chats.append({"messages": conv, "add_generation_prompt": gen,
                          "text": hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)})
    write_json(os.path.join(GOLDEN, "qwen3_chat.json"), {"tokenizer": "qwen3", "chats": chats})

    # A Qwen2.5-style template that injects a default system message (written here after the
    # structure of Qwen2.5's template, without its tool branch), rendered by transformers.
    cfg = json.load(open(os.path.join(HERE, "qwen3", "tokenizer_config.json"), encoding="utf-8"))
    cfg["chat_template"] = (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "{%- else %}\n"
        "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if not (message.role == 'system' and loop.first) %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n")
    d = os.path.join(HERE, "qwen25_style_config")
    write_json(os.path.join(d, "tokenizer_config.json"), cfg)
    import shutil
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(os.path.join(HERE, "qwen3", "tokenizer.json"), tmp)
        shutil.copy(os.path.join(d, "tokenizer_config.json"), tmp)
        hf25 = AutoTokenizer.from_pretrained(tmp)
        chats = []
        for conv in convs[:3]:
            msgs = [{"role": r, "content": c} for r, c in conv]
            chats.append({"messages": conv, "add_generation_prompt": True,
                          "text": hf25.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)})
    write_json(os.path.join(GOLDEN, "qwen25_style_chat.json"),
               {"tokenizer": "qwen3", "config": "qwen25_style_config/tokenizer_config.json", "chats": chats})

    if args.qwen_bin:
        make_trained_golden(args.qwen_bin, cases)
    print("golden files written to", GOLDEN)


def make_trained_golden(qwen_bin, cases):
    """Our trainer's output (kept in trained/), loaded and run by the reference library."""
    corpus_path = os.path.join(HERE, "train_corpus.txt")
    j = jargon_text()
    with open(corpus_path, "w", encoding="utf-8") as f:  # ~25 KB of real text
        f.write(bible_text("Ge1-4") + "\n" + j[j.find("hacker"):][:20000])
    held_out = {k: v for k, v in cases.items() if k.startswith(("austen", "kjv", "jargon"))}
    for k in ("cjk", "emoji_zwj", "special_inline", "crlf", "nfd_accents", "code_tabs"):
        held_out[k] = cases[k]
    d = os.path.join(HERE, "trained")
    os.makedirs(d, exist_ok=True)
    subprocess.run([qwen_bin, "tokenizer", "train", "--input", corpus_path, "--vocab-size", "700",
                    "--out", d, "--quiet"], check=True)
    ref = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    out = [{"name": name, "ids": ref.encode(text, add_special_tokens=False).ids,
            "ids_special": ref.encode(text, add_special_tokens=True).ids}
           for name, text in held_out.items()]
    write_json(os.path.join(GOLDEN, "trained.json"),
               {"tokenizer": "trained", "corpus": "train_corpus.txt", "vocab_size": 700,
                "vocab_size_loaded": ref.get_vocab_size(), "cases": out})


if __name__ == "__main__":
    main()
