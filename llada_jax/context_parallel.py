"""Context parallelism's ring strategy and load balancing (docs/architecture.md#context-parallelism).

`model.context_parallel=ring` with `mesh.context = C > 1`: each device keeps its C-th of the queries, keys and
values; the key/value chunks travel around the ring of context devices with `ppermute` (C - 1 hops), and every
device accumulates its queries' attention over each chunk as it passes (an online softmax over the chunks' partial
outputs and log-sum-exps). The backward pass (a custom VJP) runs the ring again: the chunks travel with their key
and value gradient accumulators, which make one more hop to arrive home. The work of one (queries, key chunk) pair
is flash attention's (attention.Tiles): items none of whose queries sees any key of the chunk are skipped, so a
fully masked pair costs only its mask test. No device ever holds more than one foreign chunk.

Causal and block-causal masks leave the late queries most of the work under a contiguous split. With the ring
the model reorders the sequence in **zig-zag** order (`zigzag`): cut into 2C chunks, device i holds chunks i and
2C - 1 - i, one early and one late, so every device does about the same work; the positions, masks and block ids
follow each token (attention_rows' indices), and the outputs return to sequence order after the last layer. The
key chunk of each hop is attended to in its two halves, so the skipped pairs of the zig-zag layout (about half of
them under a causal mask) cost nothing.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from llada_jax import attention
from llada_jax.errors import LladaError

STRATEGIES = ("allgather", "ring")


def zigzag(x, c, axis=1):
    """x in sequence order along `axis` (length T, a multiple of 2c) -> zig-zag order: the 2c chunks of T / 2c
    ordered 0, 2c-1, 1, 2c-2, ..., so that a split into c contiguous parts gives part i the chunks i and 2c-1-i."""
    x = jnp.moveaxis(x, axis, 0)
    y = x.reshape((2 * c, x.shape[0] // (2 * c)) + x.shape[1:])
    y = jnp.stack([y[:c], jnp.flip(y[c:], 0)], 1).reshape(x.shape)
    return jnp.moveaxis(y, 0, axis)


def unzigzag(x, c, axis=1):
    """The inverse of zigzag: back to sequence order."""
    x = jnp.moveaxis(x, axis, 0)
    y = x.reshape((c, 2, x.shape[0] // (2 * c)) + x.shape[1:])
    y = jnp.concatenate([y[:, 0], jnp.flip(y[:, 1], 0)], 0).reshape(x.shape)
    return jnp.moveaxis(y, 0, axis)


class Layout(NamedTuple):
    """How the model lays a whole sequence of t positions out for ring attention over c devices: padded at the end
    to whole chunks (the padding's keys masked; outputs cut back), and for causal and block masks in zig-zag order
    over 2c chunks. Block diffusion's pair [x_t ; x_0] cannot be padded at its end; its length must divide."""
    t: int
    c: int
    zigzag: bool
    pad: int

    @staticmethod
    def of(t, c, masked, pair):
        pad = -t % (2 * c if masked else c)
        if pad and pair:
            raise LladaError(f"ring attention splits block diffusion's [x_t ; x_0] input of {t} positions into "
                             f"{2 * c} chunks (2 x mesh.context); choose a sequence length that divides into them, "
                             f"or model.context_parallel=allgather.")
        return Layout(t, c, masked, pad)

    @property
    def index(self):
        """[t + pad] int32: each row's index in the (padded) sequence."""
        i = jnp.arange(self.t + self.pad, dtype=jnp.int32)
        return zigzag(i, self.c, axis=0) if self.zigzag else i

    def arrange(self, x, key_mask, segment_ids):
        """x [B, t, ...] and its rows [B, t] (None: absent) in the layout."""
        if self.pad:
            b = x.shape[0]
            x = jnp.pad(x, [(0, 0), (0, self.pad)] + [(0, 0)] * (x.ndim - 2))
            real = jnp.ones((b, self.t), bool) if key_mask is None else key_mask
            key_mask = jnp.concatenate([real, jnp.zeros((b, self.pad), bool)], 1)
            segment_ids = None if segment_ids is None else jnp.pad(segment_ids, [(0, 0), (0, self.pad)])
        if self.zigzag:
            x, key_mask, segment_ids = (None if r is None else zigzag(r, self.c) for r in (x, key_mask, segment_ids))
        return x, key_mask, segment_ids

    def restore(self, x, axis=1):
        """The layout's x back in sequence order, without the padding."""
        x = unzigzag(x, self.c, axis) if self.zigzag else x
        return jax.lax.slice_in_dim(x, 0, self.t, axis=axis)


def ring_attention(q, k, v, key_mask=None, segment_ids=None, causal=False, sharder=None, blocks=None, index=None,
                   block_rows=512):
    """Attention with q, k, v [B, T, ., D] split over the context axes along T (`index` [T]: each row's position
    in the whole sequence when it is reordered, e.g. zig-zag; default 0..T-1). Equal to the reference. A window of
    queries over a longer cache (decoding) has nothing to ring: it goes to flash attention with gathered keys."""
    b, t = q.shape[:2]
    if k.shape[1] != t or (blocks is not None and (not isinstance(blocks.q_start, int) or blocks.q_start)):
        return attention.flash_attention(q, k, v, key_mask, segment_ids, causal, sharder, blocks, block_rows)
    axes, c = attention.context_axes(sharder), attention.context_size(sharder)
    k_rows, q_rows = attention.attention_rows(b, t, t, key_mask, segment_ids, blocks, index, index)
    batch, heads = sharder.spec(("batch",))[0], sharder.spec(("heads",))[0]
    seq, rows = P(batch, axes, heads, None), P(batch, axes)
    flags = (causal, segment_ids is not None, blocks is not None)

    def local(q, k, v, *rows):
        tiles = attention.Tiles.of(q, k, *flags, block_rows, skip=True)
        q, rows = attention.tied(q, rows)
        return tiles.from_q_items(_ring(tiles, axes, c)(tiles.q_items(q), tiles.kv_items(k), tiles.kv_items(v),
                                                        rows[:4], rows[4:]))

    return jax.shard_map(local, mesh=sharder.mesh, in_specs=(seq,) * 3 + (rows,) * 7, out_specs=seq,
                         check_vma=False)(q, k, v, *k_rows, *q_rows)


def _halves(ki, vi, k_rows):
    """The key chunk [B, KV, S, D] (and its rows [B, S]) as its two halves (one, if S is odd)."""
    s = ki.shape[2]
    n = 2 if s % 2 == 0 else 1
    cut = lambda x, j, axis: jax.lax.slice_in_dim(x, j * s // n, (j + 1) * s // n, axis=axis)
    return [(cut(ki, j, 2), cut(vi, j, 2), tuple(cut(r, j, 1) for r in k_rows)) for j in range(n)]


def _ring(tiles, axes, c):
    """The ring over the local items: run(qi, ki, vi, k_rows, q_rows) -> out like qi, with its custom VJP."""
    hop = lambda x: jax.lax.ppermute(x, axes, [(i, (i + 1) % c) for i in range(c)])

    def forward(qi, ki, vi, k_rows, q_rows):
        o = jnp.zeros(qi.shape, jnp.float32)
        lse = jnp.full(qi.shape[:-1], attention.NEG, jnp.float32)
        for step in range(c):
            nxt = hop((ki, vi, k_rows)) if step < c - 1 else None  # sent while this chunk is computed
            for kj, vj, rj in _halves(ki, vi, k_rows):
                oj, lj = tiles.forward(qi, kj, vj, rj + q_rows)
                new = jnp.logaddexp(lse, lj)
                o = o * jnp.exp(lse - new)[..., None] + oj.astype(jnp.float32) * jnp.exp(lj - new)[..., None]
                lse = new
            if nxt is not None:  # the next hop starts once this chunk is done: one chunk in flight, overlapped
                (ki, vi, k_rows), o, lse = jax.lax.optimization_barrier((nxt, o, lse))
        return o.astype(qi.dtype), lse

    @jax.custom_vjp
    def run(qi, ki, vi, k_rows, q_rows):
        return forward(qi, ki, vi, k_rows, q_rows)[0]

    def run_fwd(qi, ki, vi, k_rows, q_rows):
        o, lse = forward(qi, ki, vi, k_rows, q_rows)
        return o, (qi, ki, vi, k_rows, q_rows, o, lse)

    def run_bwd(res, do):
        qi, ki, vi, k_rows, q_rows, o, lse = res
        do, (k_rows, q_rows) = attention.tied(do, (k_rows, q_rows))
        dq = jnp.zeros(qi.shape, jnp.float32)
        dk, dv = jnp.zeros(ki.shape, jnp.float32), jnp.zeros(vi.shape, jnp.float32)
        for step in range(c):
            nxt = hop((ki, vi, k_rows)) if step < c - 1 else None
            grads = [tiles.backward(qi, kj, vj, rj + q_rows, o, lse, do) for kj, vj, rj in _halves(ki, vi, k_rows)]
            dq = dq + sum(g[0] for g in grads)
            dk = dk + jnp.concatenate([g[1] for g in grads], 2)
            dv = dv + jnp.concatenate([g[2] for g in grads], 2)
            dk, dv = hop((dk, dv))  # the gradients travel with their chunk; after the last hop they are home
            if nxt is not None:
                (ki, vi, k_rows), dq = jax.lax.optimization_barrier((nxt, dq))
        return dq.astype(qi.dtype), dk.astype(ki.dtype), dv.astype(vi.dtype), None, None

    run.defvjp(run_fwd, run_bwd)
    return run
