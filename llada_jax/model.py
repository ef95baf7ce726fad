"""The LLaDA Transformer (docs/architecture.md): Llama-3 blocks with the causal mask removed.

`Model(cfg.model)` holds only static structure; parameters are a plain pytree (nested dict of arrays, layers stacked
on a leading axis) and `Model.apply(params, tokens, key_mask)` is a pure function returning float32 logits.
`Model.param_axes()` gives the same tree with a tuple of logical axis names per leaf (see sharding.py).
"""
import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import attention as attention_lib, context_parallel
from llada_jax.errors import LladaError

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_saveable,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def head_dim(m):
    return m.head_dim if m.head_dim > 0 else m.d_model // m.n_heads


class Param(NamedTuple):
    """One parameter of the table (param_shapes)."""
    shape: tuple
    axes: tuple  # logical axes (sharding.py); a leading "layers" axis stacks the blocks' weights
    init: str  # "normal": truncated normal (+-3 std), std 1/sqrt(fan_in) (or model.init_std) | "ones" | "zeros"
    group: str  # "matrix" | "norm" | "embedding" | "adapter" (LoRA): weight decay (optim.decay_mask), the
    # non-embedding count and, under LoRA, what trains (adapters only)
    hf_name: str  # the Hugging Face tensor after `model.transformer.` ("{layer}": one tensor per layer)
    hf_shape: tuple  # ... and its shape (per layer)
    hf_linear: bool = False  # HF holds the [out, in] transpose of ours reshaped to [in, out] (else the same layout)
    fan_in: int = 0
    layer_scale: bool = False  # the residual output projections: std further divided by sqrt(2 (layer + 1))


class LoRA(NamedTuple):
    """train.lora_rank / train.lora_alpha (docs/adaptation.md#lora): each projection W of the blocks gains adapters
    A [in, rank] and B [rank, out] (B starts at zero), the layer computing x W + (alpha / rank) x A B; only the
    adapters train, and an export merges them (W + (alpha / rank) A B)."""
    rank: int
    alpha: float

    @property
    def scale(self):
        return self.alpha / self.rank


LORA_TARGETS = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "attn_out": 2, "ff_proj": 1, "up_proj": 1, "ff_out": 1}
# the projections LoRA adapts, with how many leading axes (after "layers") their input spans (dense's n_in)


def lora_of(cfg):
    """The run's LoRA (None when train.lora_rank is 0)."""
    tr = cfg.train
    return LoRA(tr.lora_rank, float(tr.lora_alpha)) if tr.get("lora_rank", 0) > 0 else None


def param_shapes(m, lora=None):
    """The parameter table: {name: Param}, the blocks' nested under "blocks", in initialisation order. Init, logical
    axes, abstract params, counts, weight decay (optim), checkpoint chunks and the HF layout (convert/layout.py) derive
    from it: a new parameter is one line here. lora (LoRA): the blocks also hold `{target}_lora_a` / `_lora_b`."""
    d, hd, L, v, f = m.d_model, head_dim(m), m.n_layers, m.vocab_size, m.ffn_dim
    h, kv = m.n_heads * hd, m.n_kv_heads * hd

    def norm(shape, axes, hf_name):
        return Param(shape, axes, "ones", "norm", hf_name, (d,))

    def linear(shape, axes, hf_name, hf_shape, fan_in, group="matrix", layer_scale=False):
        return Param(shape, axes, "normal", group, hf_name, hf_shape, True, fan_in, layer_scale)

    blocks = {
        "attn_norm": norm((L, d), ("layers", "norm"), "blocks.{layer}.attn_norm.weight"),
        "q_proj": linear((L, d, m.n_heads, hd), ("layers", "embed", "heads", "head_dim"),
                         "blocks.{layer}.q_proj.weight", (h, d), d),
        "k_proj": linear((L, d, m.n_kv_heads, hd), ("layers", "embed", "kv_heads", "head_dim"),
                         "blocks.{layer}.k_proj.weight", (kv, d), d),
        "v_proj": linear((L, d, m.n_kv_heads, hd), ("layers", "embed", "kv_heads", "head_dim"),
                         "blocks.{layer}.v_proj.weight", (kv, d), d),
        "attn_out": linear((L, m.n_heads, hd, d), ("layers", "heads", "head_dim", "embed"),
                           "blocks.{layer}.attn_out.weight", (d, h), h, layer_scale=True),
        "ff_norm": norm((L, d), ("layers", "norm"), "blocks.{layer}.ff_norm.weight"),
        "ff_proj": linear((L, d, f), ("layers", "embed", "mlp"), "blocks.{layer}.ff_proj.weight", (f, d),
                          d),  # the SiLU-gated branch
        "up_proj": linear((L, d, f), ("layers", "embed", "mlp"), "blocks.{layer}.up_proj.weight", (f, d),
                          d),  # the linear branch
        "ff_out": linear((L, f, d), ("layers", "mlp", "embed"), "blocks.{layer}.ff_out.weight", (d, f), f,
                         layer_scale=True),  # the block's down projection
    }
    for name, n_in in LORA_TARGETS.items() if lora else ():
        w = blocks[name]
        r = lora.rank
        blocks[f"{name}_lora_a"] = Param(w.shape[:1 + n_in] + (r,), w.axes[:1 + n_in] + (None,), "normal", "adapter",
                                         "", (), fan_in=w.fan_in)
        blocks[f"{name}_lora_b"] = Param((L, r) + w.shape[1 + n_in:], ("layers", None) + w.axes[1 + n_in:], "zeros",
                                         "adapter", "", ())
    return {
        "wte": Param((v, d), ("vocab", "embed"), "normal", "embedding", "wte.weight", (v, d), fan_in=d),
        "blocks": blocks,
        "ln_f": norm((d,), ("norm",), "ln_f.weight"),
        # The output head: HF calls it `ff_out` too (model.transformer.ff_out, not a block's ff_out); none when
        # model.tie_embeddings (the head is wte transposed).
        **({} if m.tie_embeddings else {
            "lm_head": linear((d, v), ("embed", "vocab"), "ff_out.weight", (v, d), d, group="embedding")}),
    }


def is_param(x):
    return isinstance(x, Param)


def flat_params(m, lora=None):
    """The table flat: {"wte": Param, "blocks.q_proj": Param, ...} in initialisation order."""
    out = {}
    for k, v in param_shapes(m, lora).items():
        out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def params_like(tree, m, lora=None):
    """The Params of the leaves of `tree` (params, or any part of them), looked up by key path: the same nesting."""
    table = param_shapes(m, lora)

    def lookup(path, _):
        p = table
        for k in path:
            p = p[k.key]
        return p

    return jax.tree_util.tree_map_with_path(lookup, tree)


def count_params(m, embeddings=True, lora=None):
    """Exact parameter count from shapes (nothing allocated). Non-embedding excludes wte and the output head; lora
    (LoRA) counts its adapters too."""
    return sum(int(np.prod(p.shape)) for p in flat_params(m, lora).values() if embeddings or p.group != "embedding")


def lora_merged(w, a, b, scale):
    """W + scale A B of stacked weights and their adapters (numpy or jax; any layers of them), computed in float32
    and returned in W's dtype: w [L, *in, *out], a [L, *in, r], b [L, r, *out]."""
    n, r = a.shape[0], a.shape[-1]
    a, b = a.astype(np.float32).reshape(n, -1, r), b.astype(np.float32).reshape(n, r, -1)
    return (w.astype(np.float32) + scale * (a @ b).reshape(w.shape)).astype(w.dtype)


def merge_lora(params, lora):
    """params with each adapted projection W replaced by W + scale A B and the adapters removed: the plain model
    that computes what the LoRA model computes (exports, inference)."""
    blocks = {k: v for k, v in params["blocks"].items() if "_lora_" not in k}
    for name in LORA_TARGETS if lora else ():
        blocks[name] = lora_merged(blocks[name], params["blocks"][f"{name}_lora_a"],
                                   params["blocks"][f"{name}_lora_b"], lora.scale)
    return {**params, "blocks": blocks}


def head_weight(params, m):
    """The output head [d_model, vocab]: lm_head, or the embedding transposed when model.tie_embeddings (a tied
    head, as in Llama checkpoints with tie_word_embeddings: logits = x @ wte.T)."""
    return params["wte"].T if m.tie_embeddings else params["lm_head"]


def shift(x, blocks=None):
    """model.shift_logits (the token shift of Dream and Fast-dLLM v2; docs/adaptation.md#the-token-shift): position
    i's output is position i - 1's, so a masked token at i is predicted where an autoregressive head predicts it.
    Position 0 keeps its own (nothing predicts it: diffusion never masks it). x [B, T, ...]; under block
    diffusion's pair [x_t ; x_0] (blocks.pair), the first position of each block of x_t takes the clean copy's
    previous position instead: in decoding, that position belongs to a finished block (clean context)."""
    prev = jnp.concatenate([x[:, :1], x[:, :-1]], 1)
    if blocks is None or not blocks.pair:
        return prev
    length = x.shape[1] // 2
    i = jnp.arange(length)
    starts = ((i % blocks.size == 0) & (i > 0)).reshape((1, length) + (1,) * (x.ndim - 2))
    return jnp.concatenate([jnp.where(starts, prev[:, length:], prev[:, :length]), prev[:, length:]], 1)


def first_predicted(m):
    """The first position the model predicts: 1 under model.shift_logits (nothing predicts position 0; diffusion
    never masks it and bounds do not score it), else 0."""
    return int(bool(m.shift_logits))


def rms_norm(x, weight, eps):
    """RMSNorm: normalise in float32, cast back to the activation dtype, then scale."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype) * weight.astype(x.dtype)


def rope(x, theta, positions=None):
    """Rotate-half rotary embedding over the full head dim, computed in float32. positions [T]: the absolute
    positions of x's T rows (default 0..T-1; a KV-cached window passes its own)."""
    t, d = x.shape[1], x.shape[-1]
    positions = jnp.arange(t) if positions is None else positions
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[None, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[None, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def dense(x, w, n_in=1, **kw):
    """Contracts the last n_in axes of x with the first n_in of w as one 2-D matmul ([tokens, in] @ [in, out]).
    XLA:CPU differentiates 3-D einsums ("btd,df->btf") with transposing copies that cost as much as the matmuls
    (about 2x slower backward, measured); on TPU and GPU the reshapes are free."""
    lead, k = x.shape[:x.ndim - n_in], math.prod(x.shape[x.ndim - n_in:])
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1), **kw)
    return y.reshape(lead + w.shape[n_in:])


class Model:
    """Static structure of the Transformer; see the module docstring."""

    def __init__(self, m, sharder=None, lora=None):
        """m: the `model` config. sharder (sharding.Sharder): activation sharding constraints and the mesh for
        kernels that run per shard; None on one device. lora (LoRA, lora_of(cfg)): the params hold adapters."""
        self.m, self.lora = m, lora
        self.hd = head_dim(m)
        self.dtype = jnp.dtype(m.dtype)
        self.param_dtype = jnp.dtype(m.param_dtype)
        self.sharder = sharder
        self.attention = attention_lib.get_attention(m.attention, self.dtype, attention_lib.platform_of(sharder))
        if m.context_parallel not in context_parallel.STRATEGIES:
            raise LladaError(f"unknown model.context_parallel={m.context_parallel!r}; expected one of "
                             f"{', '.join(context_parallel.STRATEGIES)}.")
        # ring attention over a sequence split into C > 1 parts (with one part there is nothing to pass around)
        self.ring = attention_lib.context_size(sharder) if m.context_parallel == "ring" else 1
        if self.ring > 1:
            self.attention = context_parallel.ring_attention
        self.constrain = sharder.constrain if sharder else (lambda x, axes: x)
        if m.remat not in REMAT_POLICIES:
            raise LladaError(f"unknown model.remat={m.remat!r}; expected one of {', '.join(REMAT_POLICIES)}.")

    # -- parameters --------------------------------------------------------------------------------------------
    def param_axes(self):
        return jax.tree.map(lambda p: p.axes, param_shapes(self.m, self.lora), is_leaf=is_param)

    def abstract_params(self):
        return jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, self.param_dtype),
                            param_shapes(self.m, self.lora), is_leaf=is_param)

    def init(self, key):
        """The release's "mitchell" init from the table: truncated normal (+-3 std), std 1/sqrt(fan_in); the residual
        output projections (attn_out, ff_out) further divided by sqrt(2 (layer + 1)); norms 1. One key per normal
        parameter, in the table's order. LoRA adapters: A as its projection, B zeros (so the model starts as the
        base model), from keys of their own (the base draws as without LoRA)."""
        m, dt = self.m, self.param_dtype
        table = param_shapes(m, self.lora)
        n_random = sum(p.init == "normal" for p in flat_params(m).values())
        keys = iter(jax.random.split(key, max(16, n_random)))
        adapter_keys = iter(jax.random.split(jax.random.fold_in(key, 1), len(LORA_TARGETS)))

        def make(p):
            if p.init in ("ones", "zeros"):
                return (jnp.ones if p.init == "ones" else jnp.zeros)(p.shape, dt)
            std = m.init_std if m.init_std > 0 else 1.0 / math.sqrt(p.fan_in)
            k = next(adapter_keys if p.group == "adapter" else keys)
            w = jax.random.truncated_normal(k, -3.0, 3.0, p.shape, jnp.float32) * std
            if p.layer_scale:  # leading axis is the layer
                scale = 1.0 / jnp.sqrt(2.0 * (jnp.arange(m.n_layers, dtype=jnp.float32) + 1.0))
                w = w * scale.reshape((m.n_layers,) + (1,) * (len(p.shape) - 1))
            return w.astype(dt)

        # In the table's order (a dict comprehension keeps it; jax.tree.map would sort the keys).
        return {k: {kk: make(vv) for kk, vv in v.items()} if isinstance(v, dict) else make(v) for k, v in table.items()}

    # -- forward -----------------------------------------------------------------------------------------------
    def block(self, p, x, key_mask, segment_ids, causal, positions=None, cache=None, blocks=None, index=None):
        """One Transformer block; p holds this layer's weights (already in the compute dtype). Returns (x, (k, v)),
        the keys and values of x's rows (unused, and so removed by XLA, unless a caller builds a KV cache).

        positions: absolute positions of x's rows (default 0..T-1). cache = (k_cache, v_cache, start, fresh_from)
        [B, T_all, kv_heads, head_dim]: x is the window at positions start..start+W-1 of a longer sequence; keys and
        values of positions < fresh_from come from the cache, the window's are computed now, the rest of the cache
        is used as is (the approximate caches of docs/sampling.md#kv-caches). index [T]: the rows' indices in the
        whole sequence when the model reordered it for ring attention (zig-zag)."""
        m, c = self.m, self.constrain

        def proj(x, name):  # x W (+ scale x A B under LoRA: two thin matmuls, no W-sized product)
            n_in = LORA_TARGETS[name]
            y = dense(x, p[name], n_in)
            if self.lora is None:
                return y
            return y + dense(dense(x, p[f"{name}_lora_a"], n_in), p[f"{name}_lora_b"]) * self.lora.scale

        h = rms_norm(x, p["attn_norm"], m.norm_eps)
        q = c(proj(h, "q_proj"), ("batch", "act_seq", "heads", "head_dim"))
        k = c(proj(h, "k_proj"), ("batch", "act_seq", "kv_heads", "head_dim"))
        v = c(proj(h, "v_proj"), ("batch", "act_seq", "kv_heads", "head_dim"))
        q, k = rope(q, m.rope_theta, positions), rope(k, m.rope_theta, positions)
        keys, values = k, v
        if cache is not None:
            kc, vc, start, fresh_from = cache
            cached = (jnp.arange(kc.shape[1]) < fresh_from)[None, :, None, None]
            keys = jnp.where(cached, kc, jax.lax.dynamic_update_slice_in_dim(kc, k.astype(kc.dtype), start, 1))
            values = jnp.where(cached, vc, jax.lax.dynamic_update_slice_in_dim(vc, v.astype(vc.dtype), start, 1))
        kw = ({} if blocks is None else {"blocks": blocks}) | ({} if index is None else {"index": index})
        a = self.attention(q, keys, values, key_mask=key_mask, segment_ids=segment_ids, causal=causal,
                           sharder=self.sharder, **kw)
        x = x + c(proj(a, "attn_out"), ("batch", "act_seq", "act_embed"))
        h = rms_norm(x, p["ff_norm"], m.norm_eps)
        gate, up = proj(h, "ff_proj"), proj(h, "up_proj")
        hidden = c(jax.nn.silu(gate) * up, ("batch", "act_seq", "mlp"))
        return x + c(proj(hidden, "ff_out"), ("batch", "act_seq", "act_embed")), (k, v)

    def apply(self, params, tokens, key_mask=None, segment_ids=None, causal=False, blocks=None):
        """tokens [B, T] int -> logits [B, T, vocab] float32. key_mask [B, T] bool (True = real token) hides padding
        and random-length tails from every query; segment_ids [B, T] restricts attention to one's own document;
        causal=True gives the autoregressive baseline; blocks (attention.Blocks) block diffusion's pattern (with
        pair=True, tokens is [x_t ; x_0] and both halves sit at positions 0..T/2-1)."""
        return self.forward(params, tokens, key_mask, segment_ids, causal, blocks=blocks)[0]

    def forward(self, params, tokens, key_mask=None, segment_ids=None, causal=False, *, kv=None, start=0,
                fresh_from=0, return_kv=False, head=True, blocks=None):
        """apply() with a key/value cache, for decoding. tokens [B, W] is the window at absolute positions
        start..start+W-1; kv = (k, v) [layers, B, T_all, kv_heads, head_dim] from an earlier call (see block();
        key_mask then covers all T_all positions). Returns (logits [B, W, vocab] float32, (k, v) of the window per
        layer if return_kv else None). head=False returns the final normalised hidden states [B, W, d_model] (compute
        dtype) instead of logits, for a loss that applies the output head itself (diffusion.chunked_cross_entropy).
        model.shift_logits shifts the outputs (shift()) of whole sequences only: a cached window's (kv given) are
        its positions' own, and its caller supplies the output before the window (the decoders keep it)."""
        m = self.m
        pair = blocks is not None and blocks.pair
        length = tokens.shape[1] // 2 if pair else tokens.shape[1]
        if length > m.max_seq_len:
            raise LladaError(f"sequence length {length} exceeds model.max_seq_len={m.max_seq_len}; "
                             f"shorten train.seq_len or raise model.max_seq_len.")
        p = jax.tree.map(lambda w: w.astype(self.dtype), params)
        x = self.constrain(jnp.take(p["wte"], tokens, axis=0), ("batch", "act_seq", "act_embed"))
        positions = None if kv is None else start + jnp.arange(tokens.shape[1])
        if pair:  # x_t and x_0 share positions
            positions = jnp.arange(tokens.shape[1]) % length
        if blocks is not None and kv is not None:
            blocks = dataclasses.replace(blocks, q_start=start)
        layout = index = None
        if self.ring > 1 and kv is None:  # ring attention: padded to whole chunks, masked work balanced (zig-zag)
            layout = context_parallel.Layout.of(tokens.shape[1], self.ring, causal or blocks is not None, pair)
            x, key_mask, segment_ids = layout.arrange(x, key_mask, segment_ids)
            x = self.constrain(x, ("batch", "act_seq", "act_embed"))
            positions = layout.index % length if pair else layout.index
            index = layout.index if layout.zigzag else None

        def layer(x, xs):
            cache = None if kv is None else (xs[1], xs[2], start, fresh_from)
            x, new_kv = self.block(xs[0], x, key_mask, segment_ids, causal, positions, cache, blocks, index)
            return x, (new_kv if return_kv else None)

        if m.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[m.remat], prevent_cse=not m.scan_layers)
        xs = (p["blocks"],) if kv is None else (p["blocks"], kv[0], kv[1])
        if m.scan_layers:
            x, new_kv = jax.lax.scan(layer, x, xs)
        else:
            outs = []
            for i in range(m.n_layers):
                x, out = layer(x, jax.tree.map(lambda w: w[i], xs))
                outs.append(out)
            new_kv = jax.tree.map(lambda *ws: jnp.stack(ws), *outs) if return_kv else None
        if layout is not None:
            x = self.constrain(layout.restore(x), ("batch", "act_seq", "act_embed"))
            new_kv = None if new_kv is None else layout.restore(new_kv, axis=2)
        x = rms_norm(x, p["ln_f"], m.norm_eps)
        if m.shift_logits and kv is None:
            x = shift(x, blocks)
        if not head:
            return x, new_kv
        logits = dense(x, head_weight(p, m), preferred_element_type=jnp.float32)
        return self.constrain(logits, ("batch", "act_seq", "vocab")), new_kv


def flops_per_token(m, seq_len, causal=False, pair=False, lora=None):
    """Model FLOPs of one training token (forward + backward): 6 N_non-embedding + the output head + attention.

    Attention per layer and token: 2 matmuls (q k^T, p v) of 2 * seq_len * n_heads * head_dim FLOPs forward, times
    3 for forward + backward; full bidirectional attention (half of that for the causal baseline). pair=True: block
    diffusion's [x_t ; x_0] input, so every training token is two model tokens (12 N), each attending to about L / 2
    of the 2L keys (as many attention FLOPs as one token under full attention over L; kernels that skip masked
    tiles, splash, do about that much); the output head counts once (the clean half carries no loss, and the
    chunked loss skips it). lora (LoRA): frozen weights get no weight gradient, so 4 N instead of 6 N (and 4 for
    the head), plus 6 per adapter parameter. Context parallelism changes none of this: the devices share the same
    FLOPs (ring attention skips the tiles a causal or block mask rules out, as splash does)."""
    attn = 12 * m.n_layers * seq_len * m.n_heads * head_dim(m)
    if causal:
        attn //= 2
    per = 4 if lora else 6
    n = count_params(m, embeddings=False)
    adapters = 6 * (count_params(m, False, lora) - n)
    return (2 if pair else 1) * (per * n + adapters) + per * m.d_model * m.vocab_size + attn
