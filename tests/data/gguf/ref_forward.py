"""A float64 NumPy forward pass over a GGUF file (llama / qwen2 / qwen3, default RoPE), the
weights dequantised by pip `gguf`: the exact arithmetic that llama.cpp and our engine both
approximate. Used by the golden generators next to it; written from the architectures'
definitions (RMSNorm, rotate-half RoPE on Hugging Face row order, GQA, SwiGLU), not from either
engine.
"""
import numpy as np
from gguf import GGUFReader
from gguf import quants


class RefModel:
    def __init__(self, path):
        self.r = GGUFReader(path)
        self.f = {k: v for k, v in self.r.fields.items()}
        self.t = {t.name: t for t in self.r.tensors}
        self.arch = self.kv("general.architecture")
        a = self.arch + "."
        self.L = self.kv(a + "block_count")
        self.C = self.kv(a + "embedding_length")
        self.H = self.kv(a + "attention.head_count")
        self.KV = self.kv(a + "attention.head_count_kv", self.H)
        self.D = self.kv(a + "attention.key_length", self.C // self.H)
        self.eps = self.kv(a + "attention.layer_norm_rms_epsilon")
        self.theta = self.kv(a + "rope.freq_base", 10000.0)
        self.cache = {}

    def kv(self, key, default=None):
        return self.f[key].contents() if key in self.f else default

    def w(self, name):
        if name not in self.cache:
            if name not in self.t:
                self.cache[name] = None
            else:
                t = self.t[name]
                x = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
                self.cache[name] = x.reshape([int(d) for d in reversed(t.shape)])
        return self.cache[name]

    def unpermute(self, w, n_head):  # llama.cpp's converter permuted llama's q/k rows
        if self.arch != "llama":
            return w
        D = self.D
        return w.reshape(n_head, D // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    def rms(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def rope(self, x, pos):
        D = self.D
        inv = 1.0 / self.theta ** (np.arange(0, D, 2, dtype=np.float64) / D)
        ang = np.outer(pos, inv)
        cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
        sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    def lin(self, x, name, heads=0):
        w = self.w(name + ".weight")
        b = self.w(name + ".bias")
        if heads:
            w = self.unpermute(w, heads)
            b = self.unpermute(b, heads) if b is not None else None
        y = x @ w.T
        return y + b if b is not None else y

    def logits(self, ids):
        """Logits (T, V) of every position of ids."""
        T, H, KV, D, C = len(ids), self.H, self.KV, self.D, self.C
        emb = self.w("token_embd.weight")
        x = emb[ids]
        pos = np.arange(T)
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for l in range(self.L):
            p = f"blk.{l}."
            h = self.rms(x, self.w(p + "attn_norm.weight"))
            q = self.lin(h, p + "attn_q", H).reshape(T, H, D)
            k = self.lin(h, p + "attn_k", KV).reshape(T, KV, D)
            v = self.lin(h, p + "attn_v").reshape(T, KV, D)
            if self.w(p + "attn_q_norm.weight") is not None:
                q = self.rms(q, self.w(p + "attn_q_norm.weight"))
                k = self.rms(k, self.w(p + "attn_k_norm.weight"))
            q, k = self.rope(q, pos), self.rope(k, pos)
            k = np.repeat(k, H // KV, axis=1)
            v = np.repeat(v, H // KV, axis=1)
            att = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", att, v).reshape(T, H * D)
            x = x + self.lin(o, p + "attn_output")
            h = self.rms(x, self.w(p + "ffn_norm.weight"))
            g = self.lin(h, p + "ffn_gate")
            u = self.lin(h, p + "ffn_up")
            x = x + self.lin((g / (1 + np.exp(-g))) * u, p + "ffn_down")
        head = self.w("output.weight")
        return self.rms(x, self.w("output_norm.weight")) @ (emb if head is None else head).T
