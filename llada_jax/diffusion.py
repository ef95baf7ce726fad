"""Training objectives (REFERENCE.md section 3): the forward process, the pre-training and SFT losses, the random
length, and the paper's autoregressive (ARM) baseline.

A batch is a dict: `tokens` [B, L] int32, optionally `lengths` [B] (real tokens per row; the rest is padding hidden
from attention and loss) and `prompt_lengths` [B] (SFT: the prompt is never masked and carries no loss).
"""
import jax
import jax.numpy as jnp


def forward_process(key, tokens, mask_id, eps=1e-3, maskable=None):
    """q(x_t | x_0): per sequence t ~ U[0, 1), p = (1 - eps) t + eps; each token -> [MASK] with probability p.

    Returns (x_t, masked [B, L] bool, p [B])."""
    k_t, k_m = jax.random.split(key)
    b, l = tokens.shape
    t = jax.random.uniform(k_t, (b,))
    p = (1.0 - eps) * t + eps
    masked = jax.random.uniform(k_m, (b, l)) < p[:, None]
    if maskable is not None:
        masked = masked & maskable
    return jnp.where(masked, mask_id, tokens), masked, p


def random_lengths(key, batch, seq_len, prob):
    """Per sequence: with probability `prob` a length uniform in {1..seq_len}, else seq_len (a traced value)."""
    k_u, k_l = jax.random.split(key)
    cut = jax.random.uniform(k_u, (batch,)) < prob
    return jnp.where(cut, jax.random.randint(k_l, (batch,), 1, seq_len + 1), seq_len).astype(jnp.int32)


def cross_entropy(logits, targets):
    """-log softmax(logits)[target] in float32, per position."""
    logits = logits.astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]


def pretrain_loss(logits, tokens, masked, p, valid):
    """Sum over masked positions of CE / p, divided by the number of real positions (B * L without padding)."""
    ce = cross_entropy(logits, tokens) / p[:, None]
    return jnp.sum(jnp.where(masked & valid, ce, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def sft_loss(logits, tokens, masked, p, answer):
    """Per example: sum of masked CE / p over its answer (EOS padding included), divided by the answer length;
    averaged over the batch."""
    ce = jnp.where(masked & answer, cross_entropy(logits, tokens) / p[:, None], 0.0)
    return jnp.mean(jnp.sum(ce, -1) / jnp.maximum(jnp.sum(answer, -1), 1))


def arm_loss(logits, tokens, valid):
    """Next-token cross-entropy of the autoregressive baseline, averaged over predicted real positions."""
    ce = cross_entropy(logits[:, :-1], tokens[:, 1:])
    ok = valid[:, 1:]
    return jnp.sum(jnp.where(ok, ce, 0.0)) / jnp.maximum(jnp.sum(ok), 1)


def draw_noise(key, batch, cfg):
    """All randomness of one training example batch: random lengths and the forward process's masks."""
    tokens = batch["tokens"]
    b, l = tokens.shape
    k_len, k_mask = jax.random.split(key)
    lengths = batch.get("lengths", jnp.full((b,), l, jnp.int32))
    lengths = jnp.minimum(lengths, random_lengths(k_len, b, l, cfg.data.random_length_prob))
    pos = jnp.arange(l)[None, :]
    maskable = pos < lengths[:, None]
    if "prompt_lengths" in batch:
        maskable = maskable & (pos >= batch["prompt_lengths"][:, None])
    _, masked, p = forward_process(k_mask, tokens, cfg.tokens.mask_id, cfg.diffusion.eps, maskable)
    return {"lengths": lengths, "masked": masked, "p": p}


def loss_given_noise(model, params, batch, noise, cfg):
    """The objective of `cfg.objective` on one batch with its noise fixed; returns (loss, aux metrics)."""
    tokens = batch["tokens"]
    l = tokens.shape[1]
    valid = jnp.arange(l)[None, :] < noise["lengths"][:, None]
    if cfg.objective == "arm":
        logits = model.apply(params, tokens, key_mask=valid, causal=True)
        return arm_loss(logits, tokens, valid), {"real_tokens": jnp.sum(valid)}
    if cfg.objective != "mdm":
        raise ValueError(f"unknown objective={cfg.objective!r}; expected 'mdm' (masked diffusion) or 'arm'.")
    x_t = jnp.where(noise["masked"], cfg.tokens.mask_id, tokens)
    logits = model.apply(params, x_t, key_mask=valid, segment_ids=batch.get("segment_ids"))
    if "prompt_lengths" in batch:
        answer = valid & (jnp.arange(l)[None, :] >= batch["prompt_lengths"][:, None])
        loss = sft_loss(logits, tokens, noise["masked"], noise["p"], answer)
    else:
        loss = pretrain_loss(logits, tokens, noise["masked"], noise["p"], valid)
    return loss, {"real_tokens": jnp.sum(valid), "masked_fraction": jnp.mean(noise["masked"])}


def loss_fn(model, params, batch, key, cfg):
    return loss_given_noise(model, params, batch, draw_noise(key, batch, cfg), cfg)
