"""The reverse process and Fast-dLLM decoding (docs/sampling.md): semi-autoregressive blocks, low-confidence /
random remasking, classifier-free guidance, the EOS rules, threshold decoding and KV caches; the pieces the other
decoders share (one denoising step's decision, the commit, guidance, the Gumbel noise); the left-to-right decoder
of the autoregressive baseline. Block diffusion's decoder is in block_sampling.py.

The whole loop is one jitted program with static shapes: blocks and steps are `lax` loops, top-k is a rank mask,
and `steps`, `block_length` (uncached), `temperature`, `cfg_scale` and `threshold` are traced, so one compilation
serves every such setting of a (batch, prompt length, gen length) shape. What changes the program is static:
`remasking`, the two EOS switches, whether CFG / threshold are on, `cache` (and then `block_length`).

The arguments are sampling_args.SamplingArgs (the config's `sampling` block); token ids by role are TokenIds.
"""
import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import attention, model as model_lib
from llada_jax.errors import LladaError
from llada_jax.sampling_args import CACHES, REMASKING, SamplingArgs, TokenIds

__all__ = ["SamplingArgs", "TokenIds", "SamplingError", "validate", "generate", "generate_ar", "left_pad",
           "answer_ids"]


class SamplingError(LladaError):
    """Sampling arguments that cannot work; the message says what was wrong and how to fix it."""


def validate(args, model):
    """Checks done before tracing; errors say what was wrong and how to fix it."""
    if args.gen_length <= 0 or args.block_length <= 0:
        raise SamplingError(f"gen_length={args.gen_length} and block_length={args.block_length} must be positive.")
    g, bl = args.gen_length, args.block_length
    if g % bl:
        divisor = max(d for d in range(1, min(g, bl) + 1) if g % d == 0)
        such = f" or a divisor of {g} such as {divisor}" if divisor < g else ""
        raise SamplingError(f"gen_length={g} must be a multiple of block_length={bl}: set block_length={g} (pure "
                            f"diffusion){such}, or gen_length={-(-g // bl) * bl}.")
    check_steps(args, g // bl, f"gen_length / block_length = {g} / {bl}")
    if args.remasking not in REMASKING:
        raise SamplingError(f"remasking={args.remasking!r}; expected one of {', '.join(REMASKING)}.")
    if args.cache not in CACHES:
        raise SamplingError(f"cache={args.cache!r}; expected one of {', '.join(CACHES)}.")
    if args.cached and not isinstance(model, model_lib.Model):
        raise SamplingError(f"cache={args.cache!r} needs the Transformer itself (a model_lib.Model) to keep keys and "
                            f"values; got {type(model).__name__}. Pass the Model, or cache='none' with an apply_fn.")
    if args.temperature < 0 or args.cfg_scale < 0:
        raise SamplingError(f"temperature={args.temperature} and cfg_scale={args.cfg_scale} must be >= 0.")


def check_steps(args, blocks, how):
    """SamplingError unless args.steps is a positive multiple of `blocks` (the number of blocks, `how` it is
    counted) or threshold decoding ignores it; the message names the nearest valid steps."""
    if args.use_threshold or (args.steps > 0 and args.steps % blocks == 0):
        return
    up = blocks * max(1, -(-args.steps // blocks))
    near = f"steps={up}" if up == blocks else f"steps={up - blocks} or {up}"
    raise SamplingError(f"steps={args.steps} must be a positive multiple of the number of blocks ({how} = {blocks}): "
                        f"set {near}, or leave steps out of a `llada sample / chat / eval` command to have them "
                        f"follow gen_length at the run's tokens per step.")


# -- pieces shared by the decoders and the likelihood -----------------------------------------------------------

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


def guided(run, tokens, key_mask, prompt_region, cfg_scale, mask_id, use_cfg):
    """`run(tokens, key_mask) -> (logits, aux)`, with classifier-free guidance (with_cfg) when use_cfg."""
    if use_cfg:
        return with_cfg(run, tokens, key_mask, prompt_region, cfg_scale, mask_id)
    return run(tokens, key_mask)


def ranks(conf):
    """[B, W] -> rank of each entry in descending order (0 = largest); ties go to the lower position."""
    order = jnp.argsort(-conf, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


NOISE_CHUNK = 8  # candidate positions whose Gumbel noise one draw covers


def step_noise_key(key, step):
    """The noise of global step `step` (counted over all blocks): (gumbel key, remasking key). The Gumbel noise of
    window position q (offset + j) is gumbel(fold_in(gumbel key, q), [B, V]), drawn only where some row has a
    candidate (sample_candidates); the remasking noise is uniform(remasking key, [B, gen_length])."""
    return jax.random.split(jax.random.fold_in(key, step))


def noise_bits(key, shape):
    """uint32 bits of `shape` for a JAX key from XLA's counter-based ThreeFry generator (RngBitGenerator), about 3x
    faster on a CPU than jax.random.bits. Like any RngBitGenerator output they are a fixed function of the key on one
    backend and XLA version, not guaranteed equal across them (jax.random's are)."""
    state = jax.random.bits(key, (4,), jnp.uint32)
    return jax.lax.rng_bit_generator(state, shape, jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)[1]


def _gumbel_of(hi, lo):
    """Standard Gumbel noise -log(E), E = -log(u) ~ Exp(1), from 64 random bits per entry (uint32 `hi` and `lo`;
    lo=None puts the low half at its midpoint). The first bit of hi picks the half of (0, 1) that u lies in, the other
    63 give w = min(u, 1 - u) in (0, 1/2] (down to 2^-64); E = -log(w) where u = w and -log1p(-w) where u = 1 - w,
    that one by Kahan's log1p (one logarithm of z = 1 - w rounded, times w / (1 - z), exact because 1 - z is), so each
    entry costs two logarithms."""
    low = 2.0 ** 31 if lo is None else lo.astype(jnp.float32) + 0.5
    w = (hi & 0x7FFFFFFF).astype(jnp.float32) * 2.0 ** -32 + low * 2.0 ** -64
    up = hi >> 31 == 1
    z = jnp.where(up, w, 1 - w)
    log_z = jnp.log(z)
    e = jnp.where(up, -log_z, jnp.where(z == 1, w, log_z * w / (z - 1)))
    return -jnp.log(e)


def gumbel(key, shape):
    """Standard Gumbel noise of `shape`, right in both tails: the high and low 32 bits of each entry's 64 come from
    the two halves of split(key) (noise_bits).

    The official code draws u in float64 on purpose (arXiv:2409.02908): float32 uniforms cap the noise near 16, so
    a token more than ~16 logits below the top is never drawn. From 64 bits without float64, E and g are accurate to
    float32 rounding, so every token's probability is right to about 1e-7 relative, down to probabilities of about
    2^-64 (_gumbel_of)."""
    k_hi, k_lo = jax.random.split(key)
    return _gumbel_of(noise_bits(k_hi, shape), noise_bits(k_lo, shape))


DOUBT = 2.0 ** -16  # relative margin under which a coarse Gumbel-max winner is redrawn with all 64 bits


def gumbel_argmax(scores, keys):
    """argmax(scores[i] + gumbel(keys[i], scores[i].shape), -1) for scores [N, ..., V] float32 and keys [N], drawing
    the low 32 bits of the noise only when the high 32 leave a winner in doubt.

    With hi alone, w is known to an interval of 2^-32 and g = -log(E) to a radius of 2^-31 / w around its value at
    the interval's midpoint (on the interval |dg/dw| <= 3 / w_mid in both halves, and w is within 2^-33 of w_mid;
    the radius is infinite when the top 31 bits are all 0). A winner is sure when its score minus its radius beats
    every other score plus its radius by DOUBT (relative, for float32 rounding); then it is the winner under the full
    64 bits too. Otherwise the low bits of all N draws are drawn and the argmax taken again, so the result is always
    argmax(scores + gumbel(key)) of the full noise: the tail exactness of `gumbel`, for about half its random bits.
    """
    k_hi, k_lo = jax.vmap(jax.random.split, out_axes=1)(keys)
    shape = scores.shape[1:]
    bits = lambda ks: jax.lax.map(lambda k: noise_bits(k, shape), ks)  # not vmap: its batching rule draws other bits
    return refined_argmax(scores, bits(k_hi), lambda: bits(k_lo))


def refined_argmax(scores, hi, lo_bits):
    """gumbel_argmax given the high bits `hi` (uint32, the shape of scores) and a function drawing the low ones."""
    s = scores + _gumbel_of(hi, None)
    h = (hi & 0x7FFFFFFF).astype(jnp.float32)
    radius = jnp.where(h == 0, jnp.inf, 2.0 / (h + 0.5))  # 2^-31 / w_mid
    top = jnp.argmax(s, -1)
    is_top = jnp.arange(s.shape[-1]) == top[..., None]
    best = jnp.max(s, -1)
    low = best - jnp.max(jnp.where(is_top, radius, 0.0), -1)
    rival = jnp.max(jnp.where(is_top, -jnp.inf, s + radius), -1)
    sure = jnp.all(low - rival > DOUBT * (1 + jnp.abs(best)))
    return jax.lax.cond(sure, lambda: top, lambda: jnp.argmax(scores + _gumbel_of(hi, lo_bits()), -1))


def sample_candidates(logits, candidate, temperature, k_gumbel, offset):
    """x0 [B, W] ~ softmax(logits / temperature) by Gumbel-max in the window's columns where some row has a candidate
    (plain argmax in the others: they are never committed), NOISE_CHUNK columns per draw. Column j gets the noise
    gumbel(fold_in(k_gumbel, offset + j), [B, V]) (gumbel_argmax), so a draw depends neither on the window's layout nor
    on which other columns are drawn."""
    b, w, vocab = logits.shape
    chunk = min(w, NOISE_CHUNK)
    slots_len = -(-w // chunk) * chunk
    used = jnp.any(candidate, 0)
    slots = jnp.nonzero(used, size=slots_len, fill_value=w)[0]  # candidate columns first, then w (dropped)

    def draw(i, x0):
        cols = jax.lax.dynamic_slice_in_dim(slots, i * chunk, chunk)
        safe = jnp.minimum(cols, w - 1)
        keys = jax.vmap(lambda q: jax.random.fold_in(k_gumbel, offset + q))(safe)
        picks = gumbel_argmax(jnp.moveaxis(jnp.take(logits, safe, axis=1), 1, 0) / temperature, keys)
        return x0.at[:, cols].set(picks.T.astype(x0.dtype), mode="drop")

    return jax.lax.fori_loop(0, (jnp.sum(used) + chunk - 1) // chunk, draw, jnp.argmax(logits, -1))


# -- one denoising step ---------------------------------------------------------------------------------------------

def decide(logits, x_win, eligible, quota, temperature, threshold, noise, st):
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
    candidate = (x_win == ids.mask_id) & eligible[None, :]

    def predict(where):  # x0: sampled at T > 0 where it can be used, argmax elsewhere
        return jax.lax.cond(temperature > 0, lambda: sample_candidates(logits, where, temperature, k_gumbel, offset),
                            lambda: jnp.argmax(logits, -1)).astype(x_win.dtype)

    x0 = None
    if st["remasking"] == "low_confidence":
        x0 = predict(candidate)
        conf_logits = logits
        if st["confidence_eos_eot_inf"]:  # official: `logits_with_noise[eos] = logits[eot] = -inf`; at T = 0 both
            bias = jnp.zeros((vocab,), jnp.float32).at[ids.eot_id].set(-jnp.inf)  # are the same tensor
            bias = bias.at[ids.eos_id].set(jnp.where(temperature == 0, -jnp.inf, bias[ids.eos_id]))
            conf_logits = logits + bias
        picked = jnp.take_along_axis(conf_logits, x0[..., None], -1)[..., 0]
        conf = jnp.exp(picked - jax.nn.logsumexp(conf_logits, -1))
    else:
        conf = jax.lax.dynamic_slice_in_dim(jax.random.uniform(k_random, (b, gen_length)), offset, w, 1)
    conf = jnp.where(candidate, conf, -jnp.inf)
    rank = ranks(conf)
    if st["use_threshold"]:
        commit = candidate & ((rank == 0) | (conf >= threshold))
    else:
        commit = candidate & (rank < quota[:, None])
    if x0 is None:  # random remasking: the ranking does not read x0, so only the committed positions need a draw
        x0 = predict(commit)
    return commit, x0


def apply_commit(x, order, commit, x0, x_at, order_at, n_step, mask_id):
    """Writes a step's decision into the sequence and the commit order: x[:, x_at + j] = x0[:, j] and
    order[:, order_at + j] = n_step where commit[:, j] (a committed [MASK] prediction keeps its order -1)."""
    width = commit.shape[1]
    x_win = jax.lax.dynamic_slice_in_dim(x, x_at, width, 1)
    x = jax.lax.dynamic_update_slice_in_dim(x, jnp.where(commit, x0, x_win), x_at, 1)
    o_win = jax.lax.dynamic_slice_in_dim(order, order_at, width, 1)
    o_win = jnp.where(commit & (x0 != mask_id), n_step, o_win)
    return x, jax.lax.dynamic_update_slice_in_dim(order, o_win, order_at, 1)


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
    shifted = is_model and fn.m.shift_logits

    def run(tokens, window=None, kv=None, start=0, fresh_from=0):
        """One model evaluation (CFG: on the doubled batch). window: the positions [start, start + window)."""
        if window is None and not cache:
            call = lambda t, km: (apply_fn(params, t, km), None)
        elif window is None:
            call = lambda t, km: fn.forward(params, t, km, return_kv=True)
        else:  # model.shift_logits: from one position earlier, whose output is the first position's (start >= 1)
            first, extra = start - int(shifted), int(shifted)
            call = lambda t, km: (fn.forward(params, jax.lax.dynamic_slice_in_dim(t, first, window + extra, 1), km,
                                             kv=kv, start=first, fresh_from=fresh_from)[0][:, :window], None)
        return guided(call, tokens, key_mask, prompt_region, dyn["cfg_scale"], ids.mask_id, st["use_cfg"])

    def step(state, logits, offset, width, block, i, masked0):
        """Commits on the window [offset, offset + width) of the generated region; logits are the window's."""
        x, order, n_step, counts = state
        x_win = jax.lax.dynamic_slice_in_dim(x, p_len + offset, width, 1)
        wpos = offset + jnp.arange(width)
        eligible = wpos < (block + 1) * block_len
        quota = commit_count(masked0, steps_per_block, i)
        k_gumbel, k_random = step_noise_key(key, n_step)
        commit, x0 = decide(logits, x_win, eligible, quota, dyn["temperature"], dyn["threshold"],
                            (k_gumbel, k_random, offset, gen_length), st)
        x, order = apply_commit(x, order, commit, x0, p_len + offset, offset, n_step, ids.mask_id)
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


class Static(dict):
    """The static part of the arguments, hashable for jit."""

    def __hash__(self):
        return hash(tuple(sorted(self.items())))


def split_args(args, ids):
    """(static, traced) halves of SamplingArgs; the static half has cache None when off."""
    static = Static(ids=ids, gen_length=args.gen_length, cache=args.cache if args.cached else None,
                     block_length=args.block_length if args.cached else None, remasking=args.remasking,
                     logits_eos_inf=args.logits_eos_inf, confidence_eos_eot_inf=args.confidence_eos_eot_inf,
                     use_threshold=args.use_threshold, use_cfg=args.cfg_scale > 0)
    dyn = {"steps": jnp.int32(args.gen_length if args.use_threshold else args.steps),
           "block_length": jnp.int32(args.block_length), "temperature": jnp.float32(args.temperature),
           "cfg_scale": jnp.float32(args.cfg_scale),
           "threshold": jnp.float32(args.threshold if args.use_threshold else 1.0)}
    return static, dyn


def generate(model, params, prompt, prompt_mask, key, args, ids):
    """Samples `args.gen_length` tokens after each (left-padded) prompt (docs/sampling.md).

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

def _generate_ar(model, params, prompt, prompt_mask, key, temperature, gen_length, eos_id):
    """Left-to-right decoding for a causal model (objective=arm): token i is drawn from the prediction at the
    position before it (greedy at T = 0, Gumbel-max of logits / T with the noise of fold_in(key, i) otherwise).
    One pass over the prompt fills a KV cache; then each token is one pass of that token against the cache. Causal
    attention is Blocks(1): block-causal with blocks of one position, which takes the cached window's offset.
    Stops once every row has drawn EOS (the rest of the rows stay EOS)."""
    b, p_len = prompt.shape
    t_len = p_len + gen_length
    m = model.m
    causal = attention.Blocks(1)
    key_mask = jnp.concatenate([prompt_mask, jnp.ones((b, gen_length), bool)], 1)
    empty = (jnp.zeros((m.n_layers, b, t_len, m.n_kv_heads, model.hd), model.dtype),) * 2

    def run(kv, tokens, start):
        """Logits of the window `tokens` at `start`, and the cache with the window's keys and values written."""
        logits, new = model.forward(params, tokens, key_mask, kv=kv, start=start, fresh_from=start, return_kv=True,
                                    blocks=causal)
        return logits[:, -1], tuple(jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), start, 2)
                                    for c, n in zip(kv, new))

    def draw(i, logits):
        return jax.lax.cond(temperature > 0,
                            lambda: gumbel_argmax((logits / temperature)[None], jax.random.fold_in(key, i)[None])[0],
                            lambda: jnp.argmax(logits, -1)).astype(prompt.dtype)

    def body(carry):
        i, x, logits, kv, done = carry
        nxt = jnp.where(done, eos_id, draw(i, logits))
        x = jax.lax.dynamic_update_index_in_dim(x, nxt, p_len + i, 1)
        logits, kv = run(kv, nxt[:, None], p_len + i)
        return i + 1, x, logits, kv, done | (nxt == eos_id)

    logits, kv = run(empty, prompt, 0)
    x = jnp.concatenate([prompt, jnp.full((b, gen_length), eos_id, prompt.dtype)], 1)
    n, x, *_ = jax.lax.while_loop(lambda c: (c[0] < gen_length) & ~jnp.all(c[4]), body,
                                  (jnp.int32(0), x, logits, kv, jnp.zeros((b,), bool)))
    order = jnp.where(jnp.arange(gen_length) < n, jnp.arange(gen_length, dtype=jnp.int32), -1)
    return {"tokens": x, "order": jnp.broadcast_to(order, (b, gen_length)), "steps": n, "full_passes": jnp.int32(1),
            "window_passes": n}


_generate_ar_jit = jax.jit(_generate_ar, static_argnames=("model", "gen_length", "eos_id"))


def validate_ar(args, model):
    """validate() for left-to-right decoding: only gen_length and temperature apply."""
    if not isinstance(model, model_lib.Model):
        raise SamplingError("the autoregressive decoder needs a model_lib.Model (it runs the causal forward pass).")
    if args.gen_length <= 0 or args.temperature < 0:
        raise SamplingError(f"gen_length={args.gen_length} must be positive and temperature={args.temperature} "
                            f">= 0.")


def generate_ar(model, params, prompt, prompt_mask, key, args, ids):
    """Left-to-right decoding of up to `args.gen_length` tokens with a causal model (objective=arm; only gen_length
    and temperature apply), stopping once every row has an EOS. Returns generate()'s dict (order: -1 after the
    stop; window_passes: the tokens decoded)."""
    validate_ar(args, model)
    prompt = jnp.asarray(prompt, jnp.int32)
    prompt_mask = jnp.ones(prompt.shape, bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
    return _generate_ar_jit(model, params, prompt, prompt_mask, key, jnp.float32(args.temperature), args.gen_length,
                            ids.eos_id)
