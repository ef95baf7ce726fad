"""The math of the training objectives (docs/objectives.md): the forward process, the pre-training and SFT losses,
the random length, the paper's autoregressive (ARM) baseline, and block diffusion (BD3-LM).
Which objective a run trains is objectives.py's table; this module has no notion of `cfg.objective`.

A batch is a dict: `tokens` [B, L] int32, optionally `lengths` [B] (real tokens per row; the rest is padding hidden
from attention and loss) and `prompt_lengths` [B] (SFT: the prompt is never masked and carries no loss).
"""
import jax
import jax.numpy as jnp

from llada_jax import attention, model as model_lib, optim


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


def block_forward_process(key, tokens, mask_id, eps, block_size, maskable=None):
    """Block diffusion's forward process: each block of `block_size` positions of each sequence draws its own t
    (forward_process with the blocks as rows; block_size = L is forward_process itself, same draws).

    Returns (x_t, masked [B, L] bool, p [B, L]: each position's block's p)."""
    b, l = tokens.shape
    rows = lambda a: a.reshape(b * (l // block_size), block_size)
    x_t, masked, p = forward_process(key, rows(tokens), mask_id, eps, None if maskable is None else rows(maskable))
    return x_t.reshape(b, l), masked.reshape(b, l), jnp.repeat(p.reshape(b, -1), block_size, axis=1)


def block_pair(x_t, x_0, *rows):
    """BD3-LM's vectorised input [x_t ; x_0] (length 2L; attention.Blocks(pair=True) says who sees whom), and each
    per-position row array ([B, L] -> [B, 2L]; None stays None)."""
    return (jnp.concatenate([x_t, x_0], 1),) + tuple(None if r is None else jnp.concatenate([r, r], 1) for r in rows)


SCHEDULE_UNITS = ("steps", "tokens")


def until_step(cfg, until):
    """The first training step a diffusion.block_size_schedule entry (until, size) no longer covers: `until` itself
    (unit "steps"), or the first step that starts at `until` training tokens or later (unit "tokens")."""
    if cfg.diffusion.block_size_schedule_unit == "steps":
        return int(until)
    return -(-int(until) // optim.tokens_per_step(cfg))


def block_size(cfg, step=None):
    """diffusion.block_size, -1 meaning one block of train.seq_len (the LLaDA objective); with `step` (a Python
    int), the size diffusion.block_size_schedule gives that training step."""
    size = cfg.diffusion.block_size
    if step is not None:
        size = next((int(s) for until, s in cfg.diffusion.block_size_schedule if step < until_step(cfg, until)),
                    size)
    return size if size > 0 else cfg.train.seq_len


def block_sizes(cfg):
    """Every block size a training run uses (the schedule's and the final one)."""
    ends = (until_step(cfg, until) for until, _ in cfg.diffusion.block_size_schedule)
    return sorted({block_size(cfg)} | {block_size(cfg, end - 1) for end in ends if end > 0})


def random_lengths(key, batch, seq_len, prob):
    """Per sequence: with probability `prob` a length uniform in {1..seq_len}, else seq_len (a traced value)."""
    k_u, k_l = jax.random.split(key)
    cut = jax.random.uniform(k_u, (batch,)) < prob
    return jnp.where(cut, jax.random.randint(k_l, (batch,), 1, seq_len + 1), seq_len).astype(jnp.int32)


def cross_entropy(logits, targets):
    """-log softmax(logits)[target] in float32, per position."""
    logits = logits.astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]


# Each objective is a weighted sum of per-position cross-entropies; the weights say which positions count and how.

def _per_position(p):
    """p per sequence [B] (the LLaDA forward process) or per position [B, L] (per block) -> broadcastable to [B, L]."""
    return p[:, None] if p.ndim == 1 else p


def pretrain_weights(masked, p, valid):
    """Masked real positions weigh 1 / p, over the number of real positions (B * L without padding)."""
    return jnp.where(masked & valid, 1.0 / _per_position(p), 0.0) / jnp.maximum(jnp.sum(valid), 1)


def sft_weights(masked, p, answer):
    """Per example: masked answer positions (EOS padding included) weigh 1 / p over the answer length; the batch
    is averaged."""
    per_example = jnp.maximum(jnp.sum(answer, -1, keepdims=True), 1) * answer.shape[0]
    return jnp.where(masked & answer, 1.0 / _per_position(p), 0.0) / per_example


def arm_targets_weights(tokens, valid):
    """Position i predicts token i + 1 (the last position predicts nothing): averaged over predicted real tokens."""
    ok = jnp.pad(valid[:, 1:], ((0, 0), (0, 1)))
    return jnp.pad(tokens[:, 1:], ((0, 0), (0, 1))), ok / jnp.maximum(jnp.sum(ok), 1)


def pretrain_loss(logits, tokens, masked, p, valid):
    """Sum over masked positions of CE / p, divided by the number of real positions (B * L without padding)."""
    return jnp.sum(pretrain_weights(masked, p, valid) * cross_entropy(logits, tokens))


def sft_loss(logits, tokens, masked, p, answer):
    """Per example: sum of masked CE / p over its answer (EOS padding included), divided by the answer length;
    averaged over the batch."""
    return jnp.sum(sft_weights(masked, p, answer) * cross_entropy(logits, tokens))


def arm_loss(logits, tokens, valid):
    """Next-token cross-entropy of the autoregressive baseline, averaged over predicted real positions."""
    targets, weights = arm_targets_weights(tokens, valid)
    return jnp.sum(weights * cross_entropy(logits, targets))


def _chunks(x, order, chunk):
    """[S, n, ...] -> rows in `order`, zero-padded to a multiple of `chunk`, as [n_chunks, S, chunk, ...]."""
    x = jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), 1)
    pad = -x.shape[1] % chunk
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((x.shape[0], -1, chunk) + x.shape[2:]), 1, 0)


def _chunked_ce(x, w_head, targets, weights, chunk, groups, constrain, with_grads):
    """sum(weights * CE(x @ w_head, targets)) and, with_grads, its gradients (dx, dw_head) in the same pass."""
    s, d = groups, x.shape[-1]
    xs, ts, ws = (a.reshape((s, -1) + a.shape[2:]) for a in (x, targets, weights))
    xs = constrain(xs, ("batch", None, "act_embed"))
    order = jnp.argsort(ws == 0, axis=1, stable=True)  # positions that carry weight first, per group
    n_active = jnp.max(jnp.sum(ws != 0, axis=1))
    xc, tc, wc = (_chunks(a, order, chunk) for a in (xs, ts, ws))
    vocab = w_head.shape[1]

    def compute(xc, tc, wc):
        logits = constrain(model_lib.dense(xc, w_head, preferred_element_type=jnp.float32), ("batch", None, "vocab"))
        lse = jax.nn.logsumexp(logits, -1)
        hit = jnp.arange(vocab) == tc[..., None]
        loss = jnp.sum(wc * (lse - jnp.sum(jnp.where(hit, logits, 0.0), -1)))
        if not with_grads:
            return loss, None, None
        g = (wc[..., None] * (jnp.exp(logits - lse[..., None]) - hit)).astype(xc.dtype)  # d loss / d logits
        dx = model_lib.dense(g, w_head.T)
        dw = jnp.dot(xc.reshape(-1, d).T, g.reshape(-1, vocab), preferred_element_type=jnp.float32)
        return loss, dx, dw

    def body(carry, xs):
        j, xj, tj, wj = xs
        zeros = lambda *_: (jnp.zeros((), jnp.float32),) + ((jnp.zeros_like(xj), jnp.zeros((d, vocab), jnp.float32))
                                                           if with_grads else (None, None))
        loss, dx, dw = jax.lax.cond(j * chunk < n_active, compute, zeros, xj, tj, wj)  # skip weightless chunks
        carry = (carry[0] + loss, carry[1] + dw) if with_grads else (carry[0] + loss, None)
        return carry, dx

    init = (jnp.zeros((), jnp.float32), jnp.zeros((d, vocab), jnp.float32) if with_grads else None)
    (loss, dw), dx = jax.lax.scan(body, init, (jnp.arange(xc.shape[0]), xc, tc, wc))
    if not with_grads:
        return loss, None
    dx = jnp.moveaxis(dx, 0, 1).reshape(s, -1, d)[:, :xs.shape[1]]
    dx = jnp.take_along_axis(dx, jnp.argsort(order, axis=1)[..., None], 1)  # back to the original positions
    return loss, (dx.reshape(x.shape), dw.astype(w_head.dtype))


def chunked_cross_entropy(x, w_head, targets, weights, chunk, groups=1, constrain=lambda a, axes: a):
    """sum(weights * cross_entropy(x @ w_head, targets)) without ever holding [B, T, vocab] logits.

    x [B, T, d] final hidden states, w_head [d, vocab], targets [B, T] int, weights [B, T] float32 (the objective's
    weights; zero = the position does not count). The rows of each of `groups` batch groups (the batch shards, so
    the reordering stays on one device) are reordered so that weighted positions come first, then processed
    `chunk` at a time; chunks with no weight left are skipped (about half of the output head's FLOPs under the
    pre-training loss, where only masked positions count). Under differentiation the forward pass also computes
    the gradients, chunk by chunk (logits -> softmax - one-hot -> dx, dw_head), so the backward pass only scales
    them: three matmuls per active chunk, as for the plain head, and no logits kept between the two passes."""

    @jax.custom_vjp
    def ce(x, w_head, targets, weights):
        return _chunked_ce(x, w_head, targets, weights, chunk, groups, constrain, False)[0]

    def fwd(x, w_head, targets, weights):
        return _chunked_ce(x, w_head, targets, weights, chunk, groups, constrain, True)

    def bwd(grads, ct):
        dx, dw = grads
        return dx * ct.astype(dx.dtype), dw * ct.astype(dw.dtype), None, None

    ce.defvjp(fwd, bwd)
    return ce(x, w_head, targets, weights)


def draw_noise(key, batch, cfg, block_size=None):
    """All randomness of one training batch: random lengths and the forward process's masks (per block of
    `block_size` when given: p is then [B, L]; else one t per row)."""
    tokens = batch["tokens"]
    b, l = tokens.shape
    k_len, k_mask = jax.random.split(key)
    lengths = batch.get("lengths", jnp.full((b,), l, jnp.int32))
    lengths = jnp.minimum(lengths, random_lengths(k_len, b, l, cfg.data.random_length_prob))
    pos = jnp.arange(l)[None, :]
    maskable = (pos < lengths[:, None]) & (pos >= model_lib.first_predicted(cfg.model))
    if "prompt_lengths" in batch:
        maskable = maskable & (pos >= batch["prompt_lengths"][:, None])
    if block_size is not None:
        _, masked, p = block_forward_process(k_mask, tokens, cfg.tokens.mask_id, cfg.diffusion.eps, block_size,
                                             maskable)
    else:
        _, masked, p = forward_process(k_mask, tokens, cfg.tokens.mask_id, cfg.diffusion.eps, maskable)
    return {"lengths": lengths, "masked": masked, "p": p}


# Each objective's terms: (model input, targets, weights, attention keyword arguments of the model); its loss is
# sum(weights * CE(logits, targets)) (weighted_loss).

def _valid(batch, noise):
    return jnp.arange(batch["tokens"].shape[1])[None, :] < noise["lengths"][:, None]


def arm_terms(batch, noise, cfg, block_size=None):
    """The autoregressive baseline: next-token prediction under a causal mask (the masks of `noise` are unused)."""
    tokens, valid = batch["tokens"], _valid(batch, noise)
    return tokens, *arm_targets_weights(tokens, valid), {"key_mask": valid, "causal": True}


def mdm_terms(batch, noise, cfg, block_size=None):
    """LLaDA: the masked sequence x_t in, the clean tokens as targets; pre-training or SFT weights (an SFT batch
    has `prompt_lengths`)."""
    tokens, valid = batch["tokens"], _valid(batch, noise)
    x_t = jnp.where(noise["masked"], cfg.tokens.mask_id, tokens)
    if "prompt_lengths" in batch:
        answer = valid & (jnp.arange(tokens.shape[1])[None, :] >= batch["prompt_lengths"][:, None])
        weights = sft_weights(noise["masked"], noise["p"], answer)
    else:  # the loss is per predicted position (model.first_predicted)
        scored = valid & (jnp.arange(tokens.shape[1])[None, :] >= model_lib.first_predicted(cfg.model))
        weights = pretrain_weights(noise["masked"], noise["p"], scored)
    return x_t, tokens, weights, {"key_mask": valid, "segment_ids": batch.get("segment_ids")}


def block_terms(batch, noise, cfg, block_size):
    """Block diffusion: mdm_terms' inputs as the pair [x_t ; x_0] (blocks of `block_size`; block-causal attention
    between the halves), the loss on x_t's half only."""
    x_t, tokens, weights, attn = mdm_terms(batch, noise, cfg)
    l = tokens.shape[1]
    inputs, targets, weights, key_mask, segment_ids = block_pair(x_t, tokens, tokens, weights, attn["key_mask"],
                                                                 attn["segment_ids"])
    weights = weights.at[:, l:].set(0.0)  # no loss on the clean copy
    return inputs, targets, weights, {"key_mask": key_mask, "segment_ids": segment_ids,
                                      "blocks": attention.Blocks(block_size, pair=True)}


def weighted_loss(model, params, batch, noise, terms, cfg):
    """sum(weights * CE(model(inputs), targets)) of an objective's `terms`; returns (loss, aux metrics).
    `model.loss_chunk` > 0 computes the output head and the loss chunk by chunk (chunked_cross_entropy)."""
    inputs, targets, weights, attn = terms
    chunk = cfg.model.loss_chunk
    if chunk > 0:
        x, _ = model.forward(params, inputs, head=False, **attn)
        groups = model.sharder.batch_size_multiple() if model.sharder else 1
        w = model_lib.head_weight(params, model.m).astype(x.dtype)
        loss = chunked_cross_entropy(x, w, targets, weights, chunk, groups, model.constrain)
    else:
        logits = model.apply(params, inputs, **attn)
        loss = jnp.sum(weights * cross_entropy(logits, targets))
    aux = {"real_tokens": jnp.sum(_valid(batch, noise))}
    if not attn.get("causal"):
        aux["masked_fraction"] = jnp.mean(noise["masked"])
    return loss, aux
