"""The reverse process (REFERENCE.md section 4) and Fast-dLLM decoding (section 6): semi-autoregressive blocks,
low-confidence / random remasking, classifier-free guidance, the EOS rules, threshold decoding and KV caches.

The whole loop is one jitted program with static shapes: blocks and steps are `lax` loops, top-k is a rank mask,
and `steps`, `block_length` (uncached), `temperature`, `cfg_scale` and `threshold` are traced, so one compilation
serves every such setting of a (batch, prompt length, gen length) shape. What changes the program is static:
`remasking`, the two EOS switches, whether CFG / threshold are on, `cache` (and then `block_length`).

Config field names (the `sampling.*` block mirrors `SamplingArgs`): gen_length, block_length, steps, temperature,
cfg_scale, remasking ("low_confidence" | "random"), logits_eos_inf, confidence_eos_eot_inf, threshold (None = off),
cache (None | "prefix" | "dual"), attend_padding. Token ids come from `tokens.*` as `TokenIds(mask_id, eos_id, eot_id)`.
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import attention, model as model_lib
from llada_jax.errors import LladaError

REMASKING = ("low_confidence", "random")
CACHES = (None, "prefix", "dual")


class SamplingError(LladaError):
    """Sampling arguments that cannot work; the message says what was wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class SamplingArgs:
    """Arguments of the reverse process; the defaults are the official generate()'s."""
    gen_length: int = 128
    block_length: int = 128  # = gen_length: pure diffusion; smaller: semi-autoregressive blocks
    steps: int = 128  # a multiple of the number of blocks; ignored by threshold decoding
    temperature: float = 0.0  # 0: argmax; > 0: Gumbel-max sampling of softmax(logits / T)
    cfg_scale: float = 0.0  # > 0: classifier-free guidance, logits = u + (w + 1)(c - u)
    remasking: str = "low_confidence"  # or "random"
    logits_eos_inf: bool = False  # EOS logit -inf before sampling
    confidence_eos_eot_inf: bool = False  # EOS/EoT predictions get confidence 0 (the official chained assignment)
    threshold: Optional[float] = None  # Fast-dLLM: commit every masked block position with confidence >= threshold
    cache: Optional[str] = None  # Fast-dLLM: None | "prefix" | "dual" (needs a model_lib.Model)
    attend_padding: bool = False  # True: left pads stay visible as keys, as the released modeling code computes


@dataclasses.dataclass(frozen=True)
class TokenIds:
    mask_id: int
    eos_id: int
    eot_id: int


def validate(args, model):
    """Checks done before tracing; errors say what was wrong and how to fix it."""
    if args.gen_length <= 0 or args.block_length <= 0:
        raise SamplingError(f"gen_length={args.gen_length} and block_length={args.block_length} must be positive.")
    if args.gen_length % args.block_length:
        raise SamplingError(f"gen_length={args.gen_length} must be a multiple of block_length={args.block_length}; "
                            f"e.g. block_length={args.gen_length} (pure diffusion) or a divisor of gen_length.")
    num_blocks = args.gen_length // args.block_length
    if args.threshold is None and (args.steps <= 0 or args.steps % num_blocks):
        raise SamplingError(f"steps={args.steps} must be a positive multiple of the number of blocks "
                            f"(gen_length / block_length = {num_blocks}); e.g. steps={args.gen_length}.")
    if args.remasking not in REMASKING:
        raise SamplingError(f"remasking={args.remasking!r}; expected one of {', '.join(REMASKING)}.")
    if args.cache not in CACHES:
        raise SamplingError(f"cache={args.cache!r}; expected None, 'prefix' or 'dual'.")
    if args.cache is not None and not isinstance(model, model_lib.Model):
        raise SamplingError(f"cache={args.cache!r} needs the Transformer itself (a model_lib.Model) to keep keys and "
                            f"values; got {type(model).__name__}. Pass the Model, or cache=None with an apply_fn.")
    if args.temperature < 0 or args.cfg_scale < 0:
        raise SamplingError(f"temperature={args.temperature} and cfg_scale={args.cfg_scale} must be >= 0.")


# -- pieces shared with evaluate.py ------------------------------------------------------------------------------

def commit_count(masked, steps, i):
    """Positions to commit at step i of a block that had `masked` [MASK]s at its start (s = steps per block):
    m // s, plus one for the first m % s steps."""
    return masked // steps + (i < masked % steps)


def with_cfg(run, tokens, key_mask, prompt_region, cfg_scale, mask_id):
    """Classifier-free guidance: `run(tokens, key_mask) -> (logits, aux)` on the batch plus an unconditional copy in
    which every prompt position (pads included) is [MASK]; logits = u + (w + 1)(c - u). aux is the doubled batch's."""
    uncond = jnp.where(prompt_region, mask_id, tokens)
    logits, aux = run(jnp.concatenate([tokens, uncond]), jnp.concatenate([key_mask, key_mask]))
    c, u = jnp.split(logits, 2)
    return u + (cfg_scale + 1.0) * (c - u), aux


def ranks(conf):
    """[B, W] -> rank of each entry in descending order (0 = largest); ties go to the lower position."""
    order = jnp.argsort(-conf, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def step_noise_key(key, step):
    """The noise of global step `step` (counted over all blocks): (gumbel key, remasking key). Drawn as
    gumbel(gumbel key, [B, gen_length, V]) and uniform(remasking key, [B, gen_length]), so tests can recompute it."""
    return jax.random.split(jax.random.fold_in(key, step))


def gumbel(key, shape):
    """Standard Gumbel noise -log(E), E = -log(u) ~ Exp(1), for Gumbel-max sampling, right in both tails.

    The official code draws u in float64 on purpose (arXiv:2409.02908): float32 uniforms cap the noise near 16, so
    a token more than ~16 logits below the top is never drawn. Here u comes from 64 random bits without float64:
    the first bit picks the half of (0, 1) that u lies in, the other 63 give w = min(u, 1 - u) in (0, 1/2] (down
    to 2^-64), and E = -log(w) where u = w, -log1p(-w) where u = 1 - w. Both are accurate to float32 rounding, so
    every token's probability is right to about 1e-7 relative, down to probabilities of about 2^-64."""
    hi, lo = jax.random.bits(key, (2, *shape), jnp.uint32)
    w = (hi & 0x7FFFFFFF).astype(jnp.float32) * 2.0 ** -32 + (lo.astype(jnp.float32) + 0.5) * 2.0 ** -64
    return -jnp.log(jnp.where(hi >> 31 == 1, -jnp.log(w), -jnp.log1p(-w)))


# -- one denoising step ---------------------------------------------------------------------------------------------

def _decide(logits, x_win, eligible, quota, temperature, threshold, noise, st):
    """Steps 4-7 of section 4 on a window of the generated region. logits [B, W, V] float32, x_win [B, W],
    eligible [W] bool (positions before the current block's end: as in the official code, a position of an earlier
    block that was committed as [MASK] is still a candidate; the dual cache sees only its block), quota [B]
    (fixed-step decoding), noise = (gumbel key, remasking key, window offset, G).
    Returns (commit [B, W] bool, x0 [B, W])."""
    ids = st["ids"]
    b, w, vocab = logits.shape
    if st["logits_eos_inf"]:
        logits = logits.at[..., ids.eos_id].set(-jnp.inf)
    k_gumbel, k_random, offset, gen_length = noise

    def sampled(_):
        g = jax.lax.dynamic_slice_in_dim(gumbel(k_gumbel, (b, gen_length, vocab)), offset, w, 1)
        return jnp.argmax(logits / temperature + g, -1)

    x0 = jax.lax.cond(temperature > 0, sampled, lambda _: jnp.argmax(logits, -1), None).astype(x_win.dtype)
    if st["remasking"] == "low_confidence":
        conf_logits = logits
        if st["confidence_eos_eot_inf"]:  # official: `logits_with_noise[eos] = logits[eot] = -inf`; at T = 0 both
            bias = jnp.zeros((vocab,), jnp.float32).at[ids.eot_id].set(-jnp.inf)  # are the same tensor
            bias = bias.at[ids.eos_id].set(jnp.where(temperature == 0, -jnp.inf, bias[ids.eos_id]))
            conf_logits = logits + bias
        picked = jnp.take_along_axis(conf_logits, x0[..., None], -1)[..., 0]
        conf = jnp.exp(picked - jax.nn.logsumexp(conf_logits, -1))
    else:
        conf = jax.lax.dynamic_slice_in_dim(jax.random.uniform(k_random, (b, gen_length)), offset, w, 1)
    candidate = (x_win == ids.mask_id) & eligible[None, :]
    conf = jnp.where(candidate, conf, -jnp.inf)
    rank = ranks(conf)
    if st["use_threshold"]:
        commit = candidate & ((rank == 0) | (conf >= threshold))
    else:
        commit = candidate & (rank < quota[:, None])
    return commit, x0


# -- the loop -------------------------------------------------------------------------------------------------------

def _generate(fn, params, prompt, prompt_mask, key, dyn, st):
    ids, gen_length, cache = st["ids"], st["gen_length"], st["cache"]
    b, p_len = prompt.shape
    t_len = p_len + gen_length
    x = jnp.concatenate([prompt, jnp.full((b, gen_length), ids.mask_id, prompt.dtype)], 1)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((b, gen_length), bool)], 1)
    prompt_region = (jnp.arange(t_len) < p_len)[None, :]
    block_len = st["block_length"] if cache else dyn["block_length"]
    num_blocks = gen_length // block_len
    steps_per_block = dyn["steps"] // num_blocks
    gpos = jnp.arange(gen_length)
    is_model = isinstance(fn, model_lib.Model)
    apply_fn = fn.apply if is_model else fn

    def run(tokens, window=None, kv=None, start=0, fresh_from=0):
        """One model evaluation (CFG: on the doubled batch). window: the positions [start, start + window)."""
        if window is None and not cache:
            call = lambda t, km: (apply_fn(params, t, km), None)
        elif window is None:
            call = lambda t, km: fn.forward(params, t, km, return_kv=True)
        else:
            call = lambda t, km: fn.forward(params, jax.lax.dynamic_slice_in_dim(t, start, window, 1), km, kv=kv,
                                            start=start, fresh_from=fresh_from)
        if st["use_cfg"]:
            return with_cfg(call, tokens, key_mask, prompt_region, dyn["cfg_scale"], ids.mask_id)
        return call(tokens, key_mask)

    def step(state, logits, offset, width, block, i, masked0):
        """Commits on the window [offset, offset + width) of the generated region; logits are the window's."""
        x, order, n_step, counts = state
        x_win = jax.lax.dynamic_slice_in_dim(x, p_len + offset, width, 1)
        wpos = offset + jnp.arange(width)
        eligible = wpos < (block + 1) * block_len
        quota = commit_count(masked0, steps_per_block, i)
        k_gumbel, k_random = step_noise_key(key, n_step)
        commit, x0 = _decide(logits, x_win, eligible, quota, dyn["temperature"], dyn["threshold"],
                             (k_gumbel, k_random, offset, gen_length), st)
        x = jax.lax.dynamic_update_slice_in_dim(x, jnp.where(commit, x0, x_win), p_len + offset, 1)
        o_win = jax.lax.dynamic_slice_in_dim(order, offset, width, 1)
        o_win = jnp.where(commit & (x0 != ids.mask_id), n_step, o_win)
        order = jax.lax.dynamic_update_slice_in_dim(order, o_win, offset, 1)
        return x, order, n_step + 1, counts

    def block_body(block, state):
        x = state[0]
        start = block * block_len  # in the generated region
        in_block = (gpos >= start) & (gpos < start + block_len)
        masked0 = jnp.sum((x[:, p_len:] == ids.mask_id) & in_block[None], -1)
        if cache:  # the block opens with a full pass that also refreshes the cache
            logits, kv = run(x)
            if cache == "dual":
                offset, width = start, block_len
                logits = jax.lax.dynamic_slice_in_dim(logits, p_len + start, block_len, 1)
            else:
                offset, width = 0, gen_length
                logits = logits[:, p_len:]
            x, order, n_step, (full, windows) = step(state, logits, offset, width, block, 0, masked0)
            state, i0 = (x, order, n_step, (full + 1, windows)), 1
        else:
            kv, offset, width, i0 = None, 0, gen_length, 0

        def cond(carry):
            i, (x, *_) = carry
            if st["use_threshold"]:
                left = jnp.any((x[:, p_len:] == ids.mask_id) & in_block[None])
                return left & (i < block_len)  # a block ends when it has no masks (capped: [MASK] predictions)
            return i < steps_per_block

        def body(carry):
            i, (x, order, n_step, (full, windows)) = carry
            if cache:
                logits, _ = run(x, width, kv, p_len + offset, p_len + start)
                windows = windows + 1
            else:
                logits = run(x)[0][:, p_len:]
                full = full + 1
            return i + 1, step((x, order, n_step, (full, windows)), logits, offset, width, block, i, masked0)

        return jax.lax.while_loop(cond, body, (i0, state))[1]

    order = jnp.full((b, gen_length), -1, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    state = (x, order, zero, (zero, zero))
    x, order, n_step, (full, windows) = jax.lax.fori_loop(0, num_blocks, block_body, state)
    return {"tokens": x, "order": order, "steps": n_step, "full_passes": full, "window_passes": windows}


_generate_jit = jax.jit(_generate, static_argnames=("fn", "st"))


class _Static(dict):
    """The static part of the arguments, hashable for jit."""

    def __hash__(self):
        return hash(tuple(sorted(self.items())))


def split_args(args, ids):
    """(static, traced) halves of SamplingArgs."""
    static = _Static(ids=ids, gen_length=args.gen_length, cache=args.cache,
                     block_length=args.block_length if args.cache else None, remasking=args.remasking,
                     logits_eos_inf=args.logits_eos_inf, confidence_eos_eot_inf=args.confidence_eos_eot_inf,
                     use_threshold=args.threshold is not None, use_cfg=args.cfg_scale > 0)
    dyn = {"steps": jnp.int32(args.steps if args.threshold is None else args.gen_length),
           "block_length": jnp.int32(args.block_length), "temperature": jnp.float32(args.temperature),
           "cfg_scale": jnp.float32(args.cfg_scale),
           "threshold": jnp.float32(args.threshold if args.threshold is not None else 1.0)}
    return static, dyn


def generate(model, params, prompt, prompt_mask, key, args, ids):
    """Samples `args.gen_length` tokens after each (left-padded) prompt (REFERENCE.md sections 4 and 6).

    model: a model_lib.Model, or any apply_fn(params, tokens, key_mask) -> logits [B, T, V] float32 (no cache then).
    Pass the same object each call: it is a static argument of the compiled program.
    prompt [B, P] int; prompt_mask [B, P] bool (True = real token; None = all real), pads are hidden as keys unless
    args.attend_padding: the released modeling code ignores the attention mask, so every token attends to the pads.
    Returns a dict: tokens [B, P + gen_length] (prompt ++ answer), order [B, gen_length] (the global step at which
    each position was committed, -1 if never), steps (denoising steps run), full_passes (model evaluations of the
    whole sequence) and window_passes (cached evaluations of the generated region (prefix) or the block (dual));
    with CFG each evaluation runs on the doubled batch."""
    validate(args, model)
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt_mask is None or args.attend_padding:
        prompt_mask = jnp.ones(prompt.shape, bool)
    static, dyn = split_args(args, ids)
    return _generate_jit(model, params, prompt, jnp.asarray(prompt_mask, bool), key, dyn, static)


def left_pad(rows, pad_id, width=None):
    """[[ids], ...] -> (tokens [B, P] int32, mask [B, P] bool), left-padded with pad_id (hidden by the mask) to the
    longest row, or to `width` if that is longer."""
    if not rows or any(len(r) == 0 for r in rows):
        raise SamplingError("every prompt needs at least one token.")
    width = max([len(r) for r in rows] + [width or 0])
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):], mask[i, width - len(r):] = r, True
    return tokens, mask


def answer_ids(tokens, prompt_len, eos_id):
    """Host side: the generated ids of one row up to (not including) the first EOS."""
    out = []
    for t in list(tokens)[prompt_len:]:
        if int(t) == eos_id:
            break
        out.append(int(t))
    return out


# -- the autoregressive baseline's decoder ------------------------------------------------------------------------

def _generate_ar(fn, params, prompt, prompt_mask, key, temperature, gen_length):
    """Left-to-right decoding for `objective = "arm"`: token i is drawn from the causal model's prediction at the
    previous position (greedy at T = 0, Gumbel-max of logits / T otherwise); one full causal pass per token."""
    b, p_len = prompt.shape
    x = jnp.concatenate([prompt, jnp.zeros((b, gen_length), prompt.dtype)], 1)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((b, gen_length), bool)], 1)

    def body(i, x):
        logits = fn.apply(params, x, key_mask, causal=True)
        logits = jax.lax.dynamic_index_in_dim(logits, p_len + i - 1, 1, keepdims=False)  # [B, V]
        g = gumbel(jax.random.fold_in(key, i), logits.shape)
        nxt = jax.lax.cond(temperature > 0, lambda: jnp.argmax(logits / temperature + g, -1),
                           lambda: jnp.argmax(logits, -1))
        return jax.lax.dynamic_update_index_in_dim(x, nxt.astype(x.dtype), p_len + i, 1)

    x = jax.lax.fori_loop(0, gen_length, body, x)
    order = jnp.broadcast_to(jnp.arange(gen_length, dtype=jnp.int32), (b, gen_length))
    n = jnp.int32(gen_length)
    return {"tokens": x, "order": order, "steps": n, "full_passes": n, "window_passes": jnp.int32(0)}


_generate_ar_jit = jax.jit(_generate_ar, static_argnames=("fn", "gen_length"))


# -- block diffusion's decoder -------------------------------------------------------------------------------------

def _generate_blocks(model, params, prompt, prompt_mask, key, dyn, st):
    """Block diffusion decoding (BD3-LM): every row's prompt is moved to position 0 (as in training; no pads in
    between), and the blocks of the sequence (of st["block_length"], from position 0) are decoded left to right,
    each denoised by the rules of one block of the reverse process (_decide: remasking, steps per block or
    threshold, temperature, CFG, EOS rules) with everything before it clean context under block-causal attention;
    a block once done never changes. A block may hold a prompt's tail (clean, as an SFT prompt in training); blocks
    without [MASK] in any row cost no step. Stops after the block in which every row has an EOS; each row's answer
    is its gen_length positions after its prompt, returned after the left-padded prompt.

    cached: each finished block's keys and values (the prompt's blocks included) are computed once, when it is done
    (a window pass of the clean block); each denoising step feeds only the current block. This is exact, not an
    approximation: block-causal keys and values of clean blocks depend on nothing after them. Uncached: every step
    runs the whole sequence (the reference the cache must reproduce)."""
    ids, gen_length, bl, cached = st["ids"], st["gen_length"], st["block_length"], st["cached"]
    b, p_len = prompt.shape
    lens = jnp.sum(prompt_mask, -1).astype(jnp.int32)  # real prompt tokens per row
    t_len = -(-(p_len + gen_length) // bl) * bl  # whole blocks
    pos = jnp.arange(t_len)
    prompt_region = pos[None, :] < lens[:, None]
    x = jnp.pad(jax.vmap(lambda r, n: jnp.roll(r, n - p_len))(prompt, lens), ((0, 0), (0, t_len - p_len)))
    x = jnp.where(prompt_region, x, ids.mask_id)
    key_mask = jnp.ones((b, t_len), bool)
    blocks = attention.Blocks(bl)
    num_blocks = t_len // bl
    steps_per_block = dyn["steps"] // (gen_length // bl)

    def run(call, x):
        """call(tokens, key_mask) -> (logits, aux) on the batch (CFG: on the doubled batch, as with_cfg does it)."""
        if st["use_cfg"]:
            return with_cfg(call, x, key_mask, prompt_region, dyn["cfg_scale"], ids.mask_id)
        return call(x, key_mask)

    def window(x, start, kv):
        """The block at [start, start + bl) against the cache: (logits, its keys and values)."""
        return run(lambda t, km: model.forward(params, jax.lax.dynamic_slice_in_dim(t, start, bl, 1), km, kv=kv,
                                               start=start, fresh_from=start, return_kv=True, blocks=blocks), x)

    def block_logits(x, start, kv):
        if cached:
            return window(x, start, kv)[0]
        logits = run(lambda t, km: (model.apply(params, t, km, blocks=blocks), None), x)[0]
        return jax.lax.dynamic_slice_in_dim(logits, start, bl, 1)

    def finished(x, blk):
        """Rows with an EOS among the generated positions of the blocks before `blk`."""
        generated = ~prompt_region & (pos < blk * bl)[None, :]
        return jnp.any((x == ids.eos_id) & generated, -1)

    def block_body(state):
        blk, x, kv, order, n_step, passes = state
        start = blk * bl
        in_block = lambda x: jax.lax.dynamic_slice_in_dim(x, start, bl, 1)
        masked0 = jnp.sum(in_block(x) == ids.mask_id, -1)

        def cond(carry):
            i, x = carry[:2]
            left = jnp.any(in_block(x) == ids.mask_id)
            if st["use_threshold"]:
                return left & (i < bl)  # capped: [MASK] predictions stay masked
            return left & (i < steps_per_block)

        def body(carry):
            i, x, order, n_step, passes = carry
            logits = block_logits(x, start, kv)
            x_win = in_block(x)
            k_gumbel, k_random = step_noise_key(key, n_step)
            commit, x0 = _decide(logits, x_win, jnp.ones((bl,), bool), commit_count(masked0, steps_per_block, i),
                                 dyn["temperature"], dyn["threshold"], (k_gumbel, k_random, start, t_len),
                                 st)  # only [MASK] positions are candidates: a prompt tail is kept
            x = jax.lax.dynamic_update_slice_in_dim(x, jnp.where(commit, x0, x_win), start, 1)
            o_win = jax.lax.dynamic_slice_in_dim(order, start, bl, 1)
            o_win = jnp.where(commit & (x0 != ids.mask_id), n_step, o_win)
            order = jax.lax.dynamic_update_slice_in_dim(order, o_win, start, 1)
            return i + 1, x, order, n_step + 1, passes + 1

        _, x, order, n_step, passes = jax.lax.while_loop(cond, body, (jnp.int32(0), x, order, n_step, passes))
        if cached:  # the finished block's clean keys and values, once (not after the last block)
            def commit_kv(kv):
                new = window(x, start, kv)[1]
                return tuple(jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), start, 2)
                             for c, n in zip(kv, new))

            more = (blk + 1 < num_blocks) & ~jnp.all(finished(x, blk + 1))
            kv, passes = jax.lax.cond(more, lambda: (commit_kv(kv), passes + 1), lambda: (kv, passes))
        return blk + 1, x, kv, order, n_step, passes

    def block_cond(state):
        blk, x = state[:2]
        return (blk < num_blocks) & ~jnp.all(finished(x, blk))

    kv = None
    if cached:
        m = model.m
        rows = 2 * b if st["use_cfg"] else b
        kv = (jnp.zeros((m.n_layers, rows, t_len, m.n_kv_heads, model.hd), model.dtype),) * 2
    zero = jnp.zeros((), jnp.int32)
    blk, x, _, order, n_step, passes = jax.lax.while_loop(
        block_cond, block_body, (zero, x, kv, jnp.full((b, t_len), -1, jnp.int32), zero, zero))
    answer = lambda a, n: jax.lax.dynamic_slice_in_dim(a, n, gen_length)  # a row's gen_length after its prompt
    return {"tokens": jnp.concatenate([prompt, jax.vmap(answer)(x, lens)], 1), "order": jax.vmap(answer)(order, lens),
            "steps": n_step, "blocks": blk, "full_passes": zero if cached else passes,
            "window_passes": passes if cached else zero}


_generate_blocks_jit = jax.jit(_generate_blocks, static_argnames=("model", "st"))


def validate_blocks(args, model, block_size):
    """validate() for block diffusion decoding; returns the args it runs with (block_length = block_size)."""
    if not isinstance(model, model_lib.Model):
        raise SamplingError("block diffusion decoding needs a model_lib.Model (it runs block-causal attention and "
                            "keeps keys and values).")
    if args.gen_length % block_size:
        raise SamplingError(f"gen_length={args.gen_length} must be a multiple of the model's block size "
                            f"diffusion.block_size={block_size}; e.g. gen_length="
                            f"{-(-args.gen_length // block_size) * block_size}.")
    args = dataclasses.replace(args, block_length=block_size, cache=None)
    validate(args, model)
    return args


def generate_blocks(model, params, prompt, prompt_mask, key, args, ids, block_size, *, cached=True):
    """Samples up to `args.gen_length` tokens after each (left-padded) prompt with a block-diffusion model
    (objective=block) whose blocks are `block_size` long: each prompt decoded from position 0 with blocks from
    there, as in training (so batching prompts of different lengths changes nothing); steps per block = args.steps
    / (gen_length / block_size); args.block_length, args.cache and args.attend_padding do not apply (the cache is
    always exact; there is no padding inside a row). Generation stops after the block in which every row has an
    EOS; undecoded positions stay [MASK]. Returns generate()'s dict (tokens: the left-padded prompt ++ the answer)
    plus blocks (blocks run); full_passes / window_passes count whole-sequence / cached evaluations (each block's
    steps and each finished block's keys and values)."""
    args = validate_blocks(args, model, block_size)
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt_mask is None:
        prompt_mask = jnp.ones(prompt.shape, bool)
    static, dyn = split_args(args, ids)
    static = _Static({**static, "block_length": block_size, "cached": cached})
    return _generate_blocks_jit(model, params, prompt, jnp.asarray(prompt_mask, bool), key, dyn, static)


def generate_ar(model, params, prompt, prompt_mask, key, args, ids):
    """Left-to-right decoding of `args.gen_length` tokens with the autoregressive baseline (objective=arm; only
    gen_length and temperature apply). Returns generate()'s dict."""
    if not isinstance(model, model_lib.Model):
        raise SamplingError("the autoregressive decoder needs a model_lib.Model (it runs the causal forward pass).")
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_mask = jnp.ones(prompt.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    return _generate_ar_jit(model, params, prompt, prompt_mask, key, jnp.float32(args.temperature), args.gen_length)


def args_from_config(s):
    """SamplingArgs from the `sampling` config block (threshold <= 0 and cache "none" mean off)."""
    return SamplingArgs(gen_length=s.gen_length, block_length=s.block_length, steps=s.steps,
                        temperature=s.temperature, cfg_scale=s.cfg_scale, remasking=s.remasking,
                        logits_eos_inf=s.logits_eos_inf, confidence_eos_eot_inf=s.confidence_eos_eot_inf,
                        threshold=s.threshold if s.threshold > 0 else None,
                        cache=None if s.cache in ("none", "", None) else s.cache, attend_padding=s.attend_padding)


def token_ids(cfg):
    return TokenIds(mask_id=cfg.tokens.mask_id, eos_id=cfg.tokens.eos_id, eot_id=cfg.tokens.eot_id)
