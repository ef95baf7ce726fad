"""Attention backends: bidirectional (LLaDA) or causal (the ARM baseline), with key and segment masks.

q: [B, T, H, D], k/v: [B, S, K, D] with H a multiple of K (grouped-query attention). key_mask: [B, S] bool, True
for real keys. segment_ids: [B, T] int; a query attends only to keys of its own segment.
"""
import jax
import jax.numpy as jnp


def _mask(batch, q_len, k_len, key_mask, segment_ids, causal):
    """[B, 1, T, S] bool: which keys each query may attend to (None: all)."""
    mask = None

    def both(a, b):
        return b if a is None else a & b

    if key_mask is not None:
        mask = both(mask, key_mask[:, None, None, :])
    if segment_ids is not None:
        mask = both(mask, (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None])
    if causal:
        mask = both(mask, jnp.tril(jnp.ones((q_len, k_len), bool))[None, None])
    return mask


def xla_attention(q, k, v, key_mask=None, segment_ids=None, causal=False):
    """The reference: softmax(q k^T / sqrt(D)) v with float32 logits and softmax."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / jnp.sqrt(d).astype(jnp.float32)
    mask = _mask(b, t, k.shape[1], key_mask, segment_ids, causal)
    if mask is not None:
        logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def cudnn_attention(q, k, v, key_mask=None, segment_ids=None, causal=False):
    """cuDNN flash attention on GPU through jax.nn.dot_product_attention (bf16/fp16 inputs)."""
    mask = _mask(q.shape[0], q.shape[1], k.shape[1], key_mask, segment_ids, False)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")


BACKENDS = {"xla": xla_attention, "cudnn": cudnn_attention}


def get_attention(name):
    """`auto` picks the fastest backend the platform has."""
    if name == "auto":
        name = "xla"  # cuDNN needs bf16 inputs and a GPU; chosen explicitly with model.attention=cudnn
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend model.attention={name!r}; expected one of auto, "
                         f"{', '.join(BACKENDS)}.")
    return BACKENDS[name]
