"""Float64 numpy re-implementations of the model and losses (docs/architecture.md and objectives.md), for the tests."""
import numpy as np


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * w


def rope(x, theta):
    t, d = x.shape[1], x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rot = np.concatenate([-x2, x1], -1)
    return x * cos[None, :, None] + rot * sin[None, :, None]


def forward(params, tokens, m, key_mask=None, causal=False, allowed=None):
    """allowed: an extra [T, T] bool mask (query, key), e.g. block-causal attention."""
    p = {k: (v if not isinstance(v, dict) else {kk: np.asarray(vv, np.float64) for kk, vv in v.items()})
         for k, v in params.items()}
    p = {k: (np.asarray(v, np.float64) if not isinstance(v, dict) else v) for k, v in p.items()}
    tokens = np.asarray(tokens)
    b, t = tokens.shape
    x = p["wte"][tokens]
    bl = p["blocks"]
    groups = m.n_heads // m.n_kv_heads
    for i in range(m.n_layers):
        h = rms_norm(x, bl["attn_norm"][i], m.norm_eps)
        q = rope(np.einsum("btd,dhk->bthk", h, bl["q_proj"][i]), m.rope_theta)
        k = rope(np.einsum("btd,dhk->bthk", h, bl["k_proj"][i]), m.rope_theta)
        v = np.einsum("btd,dhk->bthk", h, bl["v_proj"][i])
        k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)  # head j uses kv head j // groups
        s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
        ok = np.ones((b, 1, t, t), bool)
        if key_mask is not None:
            ok &= np.asarray(key_mask)[:, None, None, :]
        if causal:
            ok &= np.tril(np.ones((t, t), bool))[None, None]
        if allowed is not None:
            ok &= np.asarray(allowed, bool)[None, None]
        s = np.where(ok, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("bhts,bshd->bthd", s, v)
        x = x + np.einsum("bthk,hkd->btd", a, bl["attn_out"][i])
        h = rms_norm(x, bl["ff_norm"][i], m.norm_eps)
        g, u = h @ bl["ff_proj"][i], h @ bl["up_proj"][i]
        x = x + (g / (1 + np.exp(-g)) * u) @ bl["ff_out"][i]
    x = rms_norm(x, p["ln_f"], m.norm_eps)
    return x @ p["lm_head"]


def block_causal(n, block_size):
    """[n, n] bool, by loops: position i may attend to j iff j's block is not after i's."""
    return np.array([[j // block_size <= i // block_size for j in range(n)] for i in range(n)])


def block_ce(params, tokens, x_t, key_mask, m, block_size):
    """[B, L] CE of block diffusion, one forward per block: the clean tokens of the earlier blocks then the noisy
    block (x_t), nothing after, block-causal (a clean block sees the clean blocks up to itself)."""
    b, l = tokens.shape
    out = np.zeros((b, l))
    for end in range(block_size, l + 1, block_size):
        seq = np.concatenate([tokens[:, :end - block_size], x_t[:, end - block_size:end]], 1)
        logits = forward(params, seq, m, key_mask=key_mask[:, :end], allowed=block_causal(end, block_size))
        out[:, end - block_size:end] = ce(logits[:, -block_size:], tokens[:, end - block_size:end])
    return out


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ce(logits, tokens):
    lp = log_softmax(logits)
    return -np.take_along_axis(lp, np.asarray(tokens)[..., None], -1)[..., 0]
