"""Block diffusion's decoder (objective=block, BD3-LM; docs/sampling.md): the blocks of the sequence are decoded
left to right, each by the rules of one block of the reverse process, with everything before it clean context
under block-causal attention and, cached, its keys and values computed once.

One jitted program: a `while_loop` over blocks (stopping once every row has an EOS) around a `while_loop` over a
block's denoising steps. The functions below are the loop bodies; `_Context` is what every one of them reads.
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from llada_jax import attention, model as model_lib, sampling
from llada_jax.sampling import SamplingError
from llada_jax.sampling_args import num_blocks


class _Context(NamedTuple):
    """The inputs of one call that every block and step reads (st: the static half of the arguments)."""
    model: model_lib.Model
    params: dict
    key: jax.Array
    dyn: dict
    st: dict
    pos: jax.Array  # [T] positions of the sequence (whole blocks from position 0)
    prompt_region: jax.Array  # [B, T] the row's prompt, moved to position 0
    key_mask: jax.Array  # [B, T]
    blocks: attention.Blocks  # the block-causal mask
    steps_per_block: jax.Array
    noise_width: int  # the sequence length of gen_length rounded up to whole blocks: the random remasking draw's width


class _Blocks(NamedTuple):
    """The state of the loop over blocks."""
    blk: jax.Array  # the block being decoded
    x: jax.Array  # [B, T] the sequence
    kv: tuple  # (keys, values) of the finished blocks, or None (uncached)
    order: jax.Array  # [B, T] the global step at which each position was committed, -1 if never
    n_step: jax.Array  # denoising steps run
    passes: jax.Array  # model evaluations
    prev: jax.Array  # [B, V] model.shift_logits, cached: the finished blocks' last logits (model.shift's input)


def _guided(ctx, call, x):
    """call(tokens, key_mask) -> (logits, aux) on the batch, with classifier-free guidance when it is on."""
    return sampling.guided(call, x, ctx.key_mask, ctx.prompt_region, ctx.dyn["cfg_scale"], ctx.st["ids"].mask_id,
                           ctx.st["use_cfg"])


def _window(ctx, x, start, kv):
    """The block at [start, start + block_length) against the cache: (logits, its keys and values)."""
    bl = ctx.st["block_length"]
    return _guided(ctx, lambda t, km: ctx.model.forward(
        ctx.params, jax.lax.dynamic_slice_in_dim(t, start, bl, 1), km, kv=kv, start=start, fresh_from=start,
        return_kv=True, blocks=ctx.blocks), x)


def _block_logits(ctx, x, start, kv, prev):
    """The logits of the block at `start`: a window pass against the cache, or (uncached) a whole-sequence pass.
    With model.shift_logits a window's logits are shifted here: its first position takes `prev`, the last logits of
    the finished blocks (as the whole-sequence pass's shift gives it)."""
    if ctx.st["cached"]:
        logits = _window(ctx, x, start, kv)[0]
        if ctx.model.m.shift_logits:
            logits = jnp.concatenate([prev[:, None].astype(logits.dtype), logits[:, :-1]], 1)
        return logits
    bl = ctx.st["block_length"]
    logits = _guided(ctx, lambda t, km: (ctx.model.apply(ctx.params, t, km, blocks=ctx.blocks), None), x)[0]
    return jax.lax.dynamic_slice_in_dim(logits, start, bl, 1)


def _finished(ctx, x, blk):
    """[B] rows with an EOS among the generated positions of the blocks before `blk`."""
    generated = ~ctx.prompt_region & (ctx.pos < blk * ctx.st["block_length"])[None, :]
    return jnp.any((x == ctx.st["ids"].eos_id) & generated, -1)


def _in_block(ctx, a, start):
    return jax.lax.dynamic_slice_in_dim(a, start, ctx.st["block_length"], 1)


def _step_open(ctx, start, carry):
    """Whether the block at `start` takes another denoising step: it has a [MASK] left, and steps remain (threshold
    decoding: at most block_length steps, as a [MASK] prediction stays masked)."""
    i, x = carry[:2]
    limit = ctx.st["block_length"] if ctx.st["use_threshold"] else ctx.steps_per_block
    return jnp.any(_in_block(ctx, x, start) == ctx.st["ids"].mask_id) & (i < limit)


def _step(ctx, start, masked0, kv, prev, carry):
    """One denoising step of the block at `start` (which had masked0 [MASK]s per row when it opened); only [MASK]
    positions are candidates, so a prompt tail inside the block is kept."""
    i, x, order, n_step, passes = carry
    bl, ids = ctx.st["block_length"], ctx.st["ids"]
    k_gumbel, k_random = sampling.step_noise_key(ctx.key, n_step)
    commit, x0 = sampling.decide(_block_logits(ctx, x, start, kv, prev), _in_block(ctx, x, start),
                                 jnp.ones((bl,), bool),
                                 sampling.commit_count(masked0, ctx.steps_per_block, i), ctx.dyn["temperature"],
                                 ctx.dyn["threshold"], (k_gumbel, k_random, start, ctx.noise_width), ctx.st)
    x, order = sampling.apply_commit(x, order, commit, x0, start, start, n_step, ids.mask_id)
    return i + 1, x, order, n_step + 1, passes + 1


def _commit_kv(ctx, x, start, kv):
    """(The cache with the finished block's clean keys and values written at `start`, the block's last logits)."""
    logits, new = _window(ctx, x, start, kv)
    kv = tuple(jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), start, 2) for c, n in zip(kv, new))
    return kv, logits[:, -1]


def _decode_block(ctx, s):
    """Denoises block s.blk; cached, then stores its keys and values (unless it is the last block to run)."""
    start = s.blk * ctx.st["block_length"]
    masked0 = jnp.sum(_in_block(ctx, s.x, start) == ctx.st["ids"].mask_id, -1)
    _, x, order, n_step, passes = jax.lax.while_loop(
        functools.partial(_step_open, ctx, start), functools.partial(_step, ctx, start, masked0, s.kv, s.prev),
        (jnp.int32(0), s.x, s.order, s.n_step, s.passes))
    kv, prev = s.kv, s.prev
    if ctx.st["cached"]:
        more = (s.blk + 1 < ctx.pos.shape[0] // ctx.st["block_length"]) & ~jnp.all(_finished(ctx, x, s.blk + 1))
        (kv, prev), passes = jax.lax.cond(more, lambda: (_commit_kv(ctx, x, start, kv), passes + 1),
                                          lambda: ((kv, prev), passes))
    return _Blocks(s.blk + 1, x, kv, order, n_step, passes, prev)


def _blocks_open(ctx, s):
    """Whether another block runs: one is left, and some row has no EOS yet."""
    return (s.blk < ctx.pos.shape[0] // ctx.st["block_length"]) & ~jnp.all(_finished(ctx, s.x, s.blk))


def _generate_blocks(model, params, prompt, prompt_mask, key, dyn, st):
    """Block diffusion decoding: every row's prompt is moved to position 0 (as in training; no pads in between),
    and the blocks of the sequence (of st["block_length"], from position 0) are decoded left to right; a block once
    done never changes. A block may hold a prompt's tail (clean, as an SFT prompt in training); blocks without
    [MASK] in any row cost no step. Each row's answer is its gen_length positions after its prompt, returned after
    the left-padded prompt.

    cached: each finished block's keys and values (the prompt's blocks included) are computed once, when it is done
    (a window pass of the clean block); each denoising step feeds only the current block. This is exact, not an
    approximation: block-causal keys and values of clean blocks depend on nothing after them. Uncached: every step
    runs the whole sequence (the reference the cache must reproduce)."""
    ids, gen_length, bl = st["ids"], st["gen_length"], st["block_length"]
    b, p_len = prompt.shape
    lens = jnp.sum(prompt_mask, -1).astype(jnp.int32)  # real prompt tokens per row
    blocks = num_blocks(gen_length, bl)
    t_len = num_blocks(p_len + gen_length, bl) * bl  # whole blocks
    noise_width = num_blocks(p_len + blocks * bl, bl) * bl  # what t_len is when gen_length is a multiple of bl
    pos = jnp.arange(t_len)
    prompt_region = pos[None, :] < lens[:, None]
    x = jnp.pad(jax.vmap(lambda r, n: jnp.roll(r, n - p_len))(prompt, lens), ((0, 0), (0, t_len - p_len)))
    x = jnp.where(prompt_region, x, ids.mask_id)
    ctx = _Context(model, params, key, dyn, st, pos, prompt_region, jnp.ones((b, t_len), bool), attention.Blocks(bl),
                   dyn["steps"] // blocks, noise_width)
    kv, prev = None, jnp.zeros((b, model.m.vocab_size), jnp.float32)  # position 0 (a prompt token) takes prev
    if st["cached"]:
        m = model.m
        rows = 2 * b if st["use_cfg"] else b
        kv = (jnp.zeros((m.n_layers, rows, t_len, m.n_kv_heads, model.hd), model.dtype),) * 2
    zero = jnp.zeros((), jnp.int32)
    s = jax.lax.while_loop(functools.partial(_blocks_open, ctx), functools.partial(_decode_block, ctx),
                           _Blocks(zero, x, kv, jnp.full((b, t_len), -1, jnp.int32), zero, zero, prev))
    answer = jax.vmap(lambda a, n: jax.lax.dynamic_slice_in_dim(a, n, gen_length))  # gen_length after the prompt
    return {"tokens": jnp.concatenate([prompt, answer(s.x, lens)], 1), "order": answer(s.order, lens),
            "steps": s.n_step, "blocks": s.blk, "full_passes": zero if st["cached"] else s.passes,
            "window_passes": s.passes if st["cached"] else zero}


_generate_blocks_jit = jax.jit(_generate_blocks, static_argnames=("model", "st"))


def validate(args, model, block_size):
    """sampling.validate() for block diffusion decoding; returns the args it runs with (block_length = block_size,
    no Fast-dLLM cache: this decoder's own cache is exact). gen_length need not be a multiple of the block size: the
    number of blocks is gen_length / block_size rounded up (sampling_args.num_blocks), and steps must be a positive
    multiple of it."""
    if not isinstance(model, model_lib.Model):
        raise SamplingError("block diffusion decoding needs a model_lib.Model (it runs block-causal attention and "
                            "keeps keys and values).")
    if args.gen_length <= 0:
        raise SamplingError(f"gen_length={args.gen_length} must be positive.")
    blocks = num_blocks(args.gen_length, block_size)
    sampling.check_steps(args, blocks, f"gen_length / the model's diffusion.block_size = {args.gen_length} / "
                                       f"{block_size}, rounded up")
    args = dataclasses.replace(args, block_length=block_size, cache="none")
    sampling.validate(dataclasses.replace(args, gen_length=blocks * block_size), model)  # the other fields' checks
    return args


def generate(model, params, prompt, prompt_mask, key, args, ids, block_size, *, cached=True):
    """Samples up to `args.gen_length` tokens after each (left-padded) prompt with a block-diffusion model
    (objective=block) whose blocks are `block_size` long: each prompt decoded from position 0 with blocks from
    there, as in training (so batching prompts of different lengths changes nothing); steps per block = args.steps
    / ceil(gen_length / block_size); args.block_length, args.cache and args.attend_padding do not apply (the cache is
    always exact; there is no padding inside a row). Generation stops after the block in which every row has an
    EOS; undecoded positions stay [MASK]. A gen_length that is not a multiple of block_size gives the first
    gen_length tokens of the answer of gen_length rounded up to one, with the same steps (blocks are block-causal:
    only the blocks that hold the answer run). Returns sampling.generate()'s dict (tokens: the left-padded prompt ++
    the answer) plus blocks (blocks run); full_passes / window_passes count whole-sequence / cached evaluations (each
    block's steps and each finished block's keys and values)."""
    args = validate(args, model, block_size)
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt_mask is None:
        prompt_mask = jnp.ones(prompt.shape, bool)
    static, dyn = sampling.split_args(args, ids)
    static = sampling.Static({**static, "block_length": block_size, "cached": cached})
    return _generate_blocks_jit(model, params, prompt, jnp.asarray(prompt_mask, bool), key, dyn, static)
