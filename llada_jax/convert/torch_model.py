"""The LLaDA Transformer in PyTorch (docs/conversion.md), with the released Hugging Face parameter names.

Depends on torch only. It is shipped unchanged into every exported directory, where `modeling_llada.py` wraps it for
`transformers` (`trust_remote_code=True`); `load(hf_dir)` builds it from an exported directory without transformers.
Module paths give the release's state-dict names: `transformer.blocks.{i}.q_proj.weight`, ..., and
`transformer.ff_out.weight` for the output head (the block MLP's `ff_out` lives inside each block).
"""
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Normalise in float32, cast back to the activation dtype, then multiply by the weight."""

    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight.to(x.dtype)


def rope(x, theta):
    """Rotate-half rotary embedding over the full head dim of x [B, H, T, D], positions 0..T-1, in float32."""
    t, d = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    angles = torch.arange(t, dtype=torch.float32, device=x.device)[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    x32 = x.float()
    x1, x2 = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


class Block(nn.Module):
    """x += attn_out(attention(rope(q), rope(k), v)) on attn_norm(x);
    x += ff_out(silu(ff_proj) * up_proj) on ff_norm(x)."""

    def __init__(self, c):
        super().__init__()
        d, hd = c["d_model"], c["d_model"] // c["n_heads"]
        self.n_heads, self.n_kv_heads, self.hd = c["n_heads"], c["n_kv_heads"], hd
        self.theta = c["rope_theta"]
        self.attn_norm = RMSNorm(d, c["rms_norm_eps"])
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(self.n_heads * hd, d, bias=False)
        self.ff_norm = RMSNorm(d, c["rms_norm_eps"])
        self.ff_proj = nn.Linear(d, c["mlp_hidden_size"], bias=False)  # the SiLU-gated branch
        self.up_proj = nn.Linear(d, c["mlp_hidden_size"], bias=False)  # the linear branch
        self.ff_out = nn.Linear(c["mlp_hidden_size"], d, bias=False)  # the block's down projection

    def forward(self, x, attn_mask):
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, t, self.n_heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.n_kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.n_kv_heads, self.hd).transpose(1, 2)
        q, k = rope(q, self.theta), rope(k, self.theta)
        groups = self.n_heads // self.n_kv_heads  # query head j uses kv head j // groups
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0 / math.sqrt(self.hd))
        x = x + self.attn_out(a.transpose(1, 2).reshape(b, t, self.n_heads * self.hd))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDA(nn.Module):
    """Bidirectional Transformer: tokens [B, T] -> float32 logits [B, T, vocab]. `c` is the HF config.json dict."""

    def __init__(self, c):
        super().__init__()
        c = normalize_config(c)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(c["embedding_size"], c["d_model"]),
            "blocks": nn.ModuleList([Block(c) for _ in range(c["n_layers"])]),
            "ln_f": RMSNorm(c["d_model"], c["rms_norm_eps"]),
            "ff_out": nn.Linear(c["d_model"], c["embedding_size"], bias=False),  # the output head
        })

    def forward(self, input_ids, attention_mask=None):
        """attention_mask [B, T] (1 / True = real token) hides padded keys from every query; None attends to all."""
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]
        tr = self.transformer
        x = tr["wte"](input_ids)
        for block in tr["blocks"]:
            x = block(x, mask)
        return tr["ff_out"](tr["ln_f"](x)).float()


def normalize_config(c):
    """The HF config keys this model reads, with the release's defaults for the optional ones."""
    c = dict(c)
    c.setdefault("n_kv_heads", None)
    if c["n_kv_heads"] is None:
        c["n_kv_heads"] = c["n_heads"]
    if c.get("mlp_hidden_size") is None:
        c["mlp_hidden_size"] = c.get("mlp_ratio", 4) * c["d_model"]
    if c.get("embedding_size") is None:
        c["embedding_size"] = c["vocab_size"]
    c.setdefault("rope_theta", 10000.0)
    c.setdefault("rms_norm_eps", 1e-5)
    return c


def load(hf_dir, dtype=torch.float32):
    """An exported directory (config.json + safetensors shards) -> LLaDA module in `dtype`, in eval mode."""
    from safetensors.torch import load_file  # optional (the torch extra); only loading a directory needs it
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    with torch.device("meta"):
        model = LLaDA(config)
    state = {}
    for name in files:
        for k, v in load_file(os.path.join(hf_dir, name)).items():
            state[k.removeprefix("model.")] = v.to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
