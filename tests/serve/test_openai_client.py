#!/usr/bin/env python3
"""tests/serve/test_openai_client.py — `qwen serve` driven by the official `openai` Python client.

Starts the real binary on 127.0.0.1 (a free port the server picks and prints) with a small
random-weight model carrying the Qwen3 tokenizer, then checks what real clients do: list models,
completions and chat completions, both streamed and not, usage counts, seeds, stop strings, and
that bad requests and a wrong API key raise the client's typed errors. Every server is killed at the
end and the whole run is bounded by an alarm.

Run by ctest (tests/CMakeLists.txt) with the venv that `make test` creates (build/pyenv):
    build/pyenv/bin/python tests/serve/test_openai_client.py --qwen build/bin/qwen \
        --tokenizer tests/data/tokenizer/qwen3
"""
import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import unittest

try:
    import openai
except ImportError:  # fail loudly: the test must not be skipped silently
    sys.stderr.write(
        "FAIL: the Python package 'openai' is missing. `make test` installs it into build/pyenv "
        "(python3 -m venv build/pyenv && build/pyenv/bin/pip install openai); if pip could not "
        "reach the package index, install it by hand and rerun.\n")
    sys.exit(1)

ARGS = None
MODEL_DIR = None
CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151669,
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "tie_word_embeddings": True, "initializer_range": 0.3,
    "torch_dtype": "float32",
}


class Server:
    """A `qwen serve` child process; the port is read from its 'listening on' line."""

    def __init__(self, *extra):
        cmd = [ARGS.qwen, "serve", "--model", MODEL_DIR, "--port", "0", "--served-model-name",
               "tiny", "--threads", "2", *extra]
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err)
        self.port = None
        out = b""
        deadline = time.time() + 30
        while time.time() < deadline and self.proc.poll() is None:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if not r:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
            m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", out)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.err.seek(0)
            msg = self.err.read().decode(errors="replace")
            self.stop()
            raise RuntimeError("qwen serve did not start: " + msg)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self):
        rc = self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                rc = None
        else:
            rc = self.proc.returncode
        self.proc.stdout.close()
        self.err.close()
        return rc


class OpenAIClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--max-running", "8")
        cls.client = openai.OpenAI(base_url=cls.server.base_url, api_key="unused", max_retries=0,
                                   timeout=60)

    @classmethod
    def tearDownClass(cls):
        rc = cls.server.stop()
        assert rc == 0, f"qwen serve exited with {rc} after SIGTERM"

    def test_models(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], ["tiny"])

    def test_completion(self):
        r = self.client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8,
                                           temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(len(r.choices), 1)
        self.assertIsInstance(r.choices[0].text, str)
        self.assertTrue(r.choices[0].text)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 8)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 8)

    def test_streamed_completion_equals_whole(self):
        kw = dict(model="tiny", prompt="The capital of", max_tokens=12, temperature=0,
                  extra_body={"ignore_eos": True})
        whole = self.client.completions.create(**kw).choices[0].text
        pieces, finish = [], None
        for chunk in self.client.completions.create(stream=True, **kw):
            if chunk.choices:
                pieces.append(chunk.choices[0].text)
                finish = chunk.choices[0].finish_reason or finish
        self.assertGreater(len(pieces), 1)
        self.assertEqual("".join(pieces), whole)
        self.assertEqual(finish, "length")

    def test_chat_and_streamed_chat(self):
        msgs = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say something."}]
        r = self.client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10,
                                                temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertIsInstance(r.choices[0].message.content, str)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        text, roles, usage = "", [], None
        stream = self.client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.role:
                    roles.append(c.delta.role)
                text += c.delta.content or ""
        self.assertEqual(roles, ["assistant"])
        self.assertEqual(text, r.choices[0].message.content)
        self.assertIsNotNone(usage)
        self.assertEqual(usage.completion_tokens, r.usage.completion_tokens)
        self.assertEqual(usage.prompt_tokens, r.usage.prompt_tokens)

    def test_seed_reproducible(self):
        kw = dict(model="tiny", prompt="Random words:", max_tokens=10, temperature=1.0, top_p=1.0,
                  extra_body={"ignore_eos": True, "top_k": 50})
        a = self.client.completions.create(seed=7, **kw).choices[0].text
        b = self.client.completions.create(seed=7, **kw).choices[0].text
        c = self.client.completions.create(seed=8, **kw).choices[0].text
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_stop_string(self):
        kw = dict(model="tiny", prompt="Hello", max_tokens=30, temperature=0,
                  extra_body={"ignore_eos": True})
        full = self.client.completions.create(**kw).choices[0].text
        self.assertGreater(len(full), 10)
        stop = full[len(full) // 2: len(full) // 2 + 3]
        r = self.client.completions.create(stop=[stop], **kw)
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].text, full[:full.index(stop)])

    def test_bad_requests_raise_typed_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model="tiny", prompt="x", top_p=1.5)
        self.assertEqual(e.exception.param, "top_p")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model="tiny", prompt="x", max_tokens=0)
        self.assertEqual(e.exception.param, "max_tokens")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model="no-such-model", prompt="x")
        self.assertEqual(e.exception.param, "model")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])
        self.assertEqual(e.exception.param, "messages[0].role")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model="tiny", prompt="x", n=2)
        self.assertEqual(e.exception.param, "n")
        self.assertIn("not supported", str(e.exception))


class ApiKeyTest(unittest.TestCase):
    def test_wrong_key_is_401(self):
        s = Server("--api-key", "sekret")
        try:
            bad = openai.OpenAI(base_url=s.base_url, api_key="wrong", max_retries=0, timeout=30)
            with self.assertRaises(openai.AuthenticationError):
                bad.models.list()
            good = openai.OpenAI(base_url=s.base_url, api_key="sekret", max_retries=0, timeout=30)
            self.assertEqual(good.models.list().data[0].id, "tiny")
        finally:
            self.assertEqual(s.stop(), 0)


def main():
    global ARGS, MODEL_DIR
    p = argparse.ArgumentParser()
    p.add_argument("--qwen", required=True, help="path of the built qwen binary")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (tests/data/tokenizer/qwen3)")
    p.add_argument("--timeout", type=int, default=240, help="abort the whole run after this many seconds")
    ARGS, rest = p.parse_known_args()
    signal.signal(signal.SIGALRM, lambda *_: (sys.stderr.write("FAIL: timed out\n"), os._exit(1)))
    signal.alarm(ARGS.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as f:
            json.dump(CONFIG, f)
        MODEL_DIR = os.path.join(tmp, "tiny")
        subprocess.run([ARGS.qwen, "init", "--config", cfg, "--seed", "3", "--out", MODEL_DIR,
                        "--tokenizer", ARGS.tokenizer], check=True, stdout=subprocess.DEVNULL)
        prog = unittest.main(argv=[sys.argv[0], *rest], exit=False, verbosity=2)
        sys.exit(0 if prog.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
