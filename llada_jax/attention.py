"""Attention backends: bidirectional (LLaDA), causal (the ARM baseline) or block-causal (block diffusion), with key
and segment masks.

q: [B, T, H, D], k/v: [B, S, K, D] with H a multiple of K (grouped-query attention). key_mask: [B, S] bool, True
for real keys. segment_ids: [B, T] int; a query attends only to keys of its own segment. blocks: a `Blocks`, the
block-diffusion pattern (the same for every row of the batch).
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from llada_jax.errors import LladaError


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Block diffusion's attention pattern (BD3-LM, docs/architecture.md#attention) over blocks of `size` positions.

    Every position gets an id 2 * block + clean; a query attends to keys of its own id and to clean keys of ids up
    to its own. pair=True: the sequence is BD3-LM's [x_t ; x_0] of length 2L (both halves at positions 0..L-1): a
    noisy block sees itself (bidirectionally) and the clean blocks before it, a clean block the clean blocks up to
    itself. pair=False: one clean copy, block-causal (block b sees blocks <= b): the sampler, whose current block
    is the only one with masks, and the per-block reference. q_start: absolute position of the first query (a
    cached window of queries; may be traced); keys always start at 0."""
    size: int
    pair: bool = False
    q_start: object = 0

    def id_of(self, i, length):
        """Ids of positions i (numpy or jax integer arrays) of a sequence of `length` (the whole sequence, 2L if
        pair). Plain arithmetic, so the splash kernel can evaluate it too."""
        if self.pair:
            half = length // 2
            return (i % half) // self.size * 2 + (i >= half).astype(i.dtype)
        return i // self.size * 2 + 1

    @staticmethod
    def allowed(q_id, k_id):
        return (k_id == q_id) | ((k_id % 2 == 1) & (k_id <= q_id))

    def ids(self, q_len, k_len):
        """(query ids [T], key ids [S]) int32."""
        return (self.id_of(self.q_start + jnp.arange(q_len, dtype=jnp.int32), k_len),
                self.id_of(jnp.arange(k_len, dtype=jnp.int32), k_len))

    def mask(self, q_len, k_len):
        """[T, S] bool, computed from the ids (nothing [T, S] is a constant of the program)."""
        q_id, k_id = self.ids(q_len, k_len)
        return self.allowed(q_id[:, None], k_id[None, :])


def _mask(batch, q_len, k_len, key_mask, segment_ids, causal, blocks=None):
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
    if blocks is not None:
        mask = both(mask, blocks.mask(q_len, k_len)[None, None])
    return mask


def context_axes(sharder):
    """The mesh axes that split the sequence of activations (the `act_seq` rule: `context` in training), or None."""
    return sharder.spec(("act_seq",))[0] if sharder is not None else None


def context_size(sharder):
    """How many devices split the sequence (1 without a sharder or a context axis)."""
    axes = context_axes(sharder)
    names = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([sharder.mesh.shape[n] for n in names]))


def xla_attention(q, k, v, key_mask=None, segment_ids=None, causal=False, sharder=None, blocks=None):
    """The reference: softmax(q k^T / sqrt(D)) v with float32 logits and softmax. Under context parallelism the
    keys and values are gathered whole and the queries stay split (all-gather context parallelism)."""
    if context_axes(sharder) is not None:
        k, v = (sharder.constrain(x, ("batch", None, "kv_heads", "head_dim")) for x in (k, v))
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(d).astype(jnp.float32)
    mask = _mask(b, t, k.shape[1], key_mask, segment_ids, causal, blocks)
    if mask is not None:
        logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def _splash_blocks_mask(t, blocks):
    """The `Blocks` pattern of a whole sequence of t positions as a splash mask that the kernel computes from
    positions (block-sparse: tiles it rules out entirely are skipped; no [T, T] array)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    class BlocksMask(sm._ComputableMask):
        def __init__(self):
            super().__init__((t, t), lambda qi, ki: Blocks.allowed(blocks.id_of(qi, t), blocks.id_of(ki, t)))

        def __eq__(self, other):
            return isinstance(other, BlocksMask) and self.key == other.key

        def __hash__(self):
            return hash(self.key)

        key = ("blocks", t, blocks.size, blocks.pair)

    return BlocksMask()


def splash_attention(q, k, v, key_mask=None, segment_ids=None, causal=False, sharder=None, blocks=None,
                     interpret=None):
    """TPU splash attention (Pallas), in interpret mode off TPU (interpret=None: decided by the sharder's mesh
    devices, else the default backend; a TPU mesh compiled ahead of time from a CPU host gets the real kernel).
    Grouped-query heads share one MQA kernel per KV head. Padding and documents become splash segment ids (real
    tokens: segment + 1, padding: 0), so real queries see exactly the keys the reference lets them see; outputs at
    padding positions are unspecified (never used).
    blocks: whole sequences only (q_start 0, as many queries as keys: training and the ELBO), a mask computed in
    the kernel. On a mesh the kernel runs per shard under shard_map: batch over the `batch` axes, heads over
    `tensor`."""
    # Pallas' TPU kernels load lazily: only this backend needs them (0.16 s to import).
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
        splash_attention_mask as sm,
    )

    b, t, h, d = q.shape
    if blocks is not None and (k.shape[1] != t or not isinstance(blocks.q_start, int) or blocks.q_start):
        raise LladaError("splash attention takes block masks of whole sequences only (training, the ELBO); use "
                         "model.attention=flash or xla for cached decoding windows.")
    seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32) + 1
    if key_mask is not None:
        seg = jnp.where(key_mask, seg, 0)
    # Context parallelism: with the full mask the local queries attend to all keys through the same kernel (keys,
    # values and their segment ids gathered whole); causal and block masks would need the shard's offset in the
    # kernel's static mask, so their sequences are gathered whole instead.
    # The kernel tiles the local queries in multiples of 128 too.
    split = context_axes(sharder) is not None and not causal and blocks is None
    split = split and (t // context_size(sharder)) % 128 == 0
    if interpret is None:
        interpret = platform_of(sharder) != "tpu"
    if not interpret and (t % 128 or k.shape[1] % 128):  # (interpret mode, for tests, takes any length)
        raise LladaError(f"splash attention tiles sequences in multiples of 128 tokens on TPU; got {t} queries and "
                         f"{k.shape[1]} keys. Use model.attention=auto (splash where it fits, else xla) or xla.")

    def local(q, k, v, seg, q_seg=None):
        q_seg = seg if q_seg is None else q_seg
        tq, kv_local, groups = q.shape[1], k.shape[2], q.shape[2] // k.shape[2]
        bq, bk = min(512, tq), min(512, t)
        sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                              block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
        if blocks is not None:
            base = _splash_blocks_mask(t, blocks)
        else:
            base = sm.CausalMask((t, t)) if causal else sm.FullMask((tq, t))
        mask = sm.MultiHeadMask([base] * groups)
        kernel = sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)
        qh = (q * (1.0 / d ** 0.5)).astype(q.dtype).reshape(q.shape[0], tq, kv_local, groups, d)
        qh = qh.transpose(0, 2, 3, 1, 4)  # [B, KV, G, T, D]
        kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, T, D]
        per_head = lambda q1, k1, v1, s1, sq: kernel(q1, k1, v1, segment_ids=sk.SegmentIds(sq, s1))
        out = jax.vmap(jax.vmap(per_head, in_axes=(0, 0, 0, None, None)))(qh, kh, vh, seg, q_seg)
        return out.transpose(0, 3, 1, 2, 4).reshape(q.shape)

    return _per_shard(local, sharder, q, k, v, seg, q_rows=(seg,) if split else ())


def _per_shard(local, sharder, q, k, v, *rows, q_rows=()):
    """local(q, k, v, *rows, *q_rows) on each shard of a mesh (batch over the `batch` axes, heads over `tensor`;
    rows are [B, S] per-key arrays, q_rows [B, T] per-query ones), or directly on one device. With q_rows given,
    the queries (and q_rows) stay split over the context axes and every shard gets the whole keys and values
    (all-gather context parallelism); without, or when the queries do not divide over them (a decoding window),
    a sequence split over them is gathered whole."""
    if sharder is None or sharder.mesh.size == 1:
        return local(q, k, v, *rows, *q_rows)
    batch = sharder.spec(("batch",))[0]
    heads = sharder.spec(("heads",))[0]
    ctx = context_axes(sharder) if q_rows else None
    ctx = ctx if ctx is not None and q.shape[1] % context_size(sharder) == 0 else None
    qs, kvs = P(batch, ctx, heads, None), P(batch, None, heads, None)
    return jax.shard_map(local, mesh=sharder.mesh,
                         in_specs=(qs, kvs, kvs) + (P(batch, None),) * len(rows) + (P(batch, ctx),) * len(q_rows),
                         out_specs=qs, check_vma=False)(q, k, v, *rows, *q_rows)


def flash_attention(q, k, v, key_mask=None, segment_ids=None, causal=False, sharder=None, blocks=None,
                    block_rows=512):
    """Exact attention computed one (sequence, KV head, query block) at a time, flash-attention style in plain XLA:
    the forward keeps only the output and the log-sum-exp, the backward recomputes the probabilities of one item
    at a time (a custom VJP). Equal to the reference within float32 rounding; on the CPU its working set stays in
    cache where the reference streams [B, H, T, S] scores through memory several times (the CPU default). An item
    none of whose queries may see any key is skipped (its output 0)."""
    b, t = q.shape[:2]
    s = k.shape[1]
    k_rows, q_rows = attention_rows(b, t, s, key_mask, segment_ids, blocks)

    def local(q, k, v, *rows):
        return Tiles.of(q, k, causal, segment_ids is not None, blocks is not None, block_rows).attend(q, k, v, rows)

    return _per_shard(local, sharder, q, k, v, *k_rows, q_rows=q_rows)


NEG = -1e30  # the log-sum-exp of a query that sees no key (finite: merging two of them stays finite)


def attention_rows(b, t, s, key_mask, segment_ids, blocks, q_index=None, k_index=None):
    """The per-row inputs of the masks, as [B, S] key rows (mask, segment, block id, position) and [B, T] query rows
    (segment, block id, position): positions are indices in the whole sequence (default 0..T-1 and 0..S-1; block
    ids derive from them), so that rows split or reordered with the sequence keep their meaning."""
    q_index = jnp.arange(t, dtype=jnp.int32) if q_index is None else q_index
    k_index = jnp.arange(s, dtype=jnp.int32) if k_index is None else k_index
    if blocks is not None:
        q_index = q_index + blocks.q_start
        q_id, k_id = blocks.id_of(q_index, s), blocks.id_of(k_index, s)
    else:
        q_id, k_id = jnp.zeros((t,), jnp.int32), jnp.ones((s,), jnp.int32)
    seg = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    rows = lambda x, n: jnp.broadcast_to(x, (b, n))
    k_rows = (jnp.ones((b, s), bool) if key_mask is None else key_mask,
              seg if segment_ids is not None else jnp.zeros((b, s), jnp.int32), rows(k_id, s), rows(k_index, s))
    return k_rows, (seg, rows(q_id, t), rows(q_index, t))


def tied(x, rows):
    """(x, rows) with rows made to depend on x (an optimization barrier; nothing is copied). The masks of attention
    derive from rows that are the same in every layer: under a scan over layers XLA would hoist their computation
    out of the loop and keep every item's [rows, S] mask alive at once (20 GiB instead of 2 for one v5p chip's 4096
    queries over 32768 keys, measured); tied to the layer's queries they are computed where they are used."""
    return jax.lax.optimization_barrier((x, rows))


class Tiles(NamedTuple):
    """Flash attention's items over the local queries: (sequence, KV head, query block of bq positions), each with
    the g query heads of its KV head (g * bq rows), against all S keys given. The forward and backward of one
    (queries, keys) pair; flash_attention wraps them in a custom VJP, ring attention (context_parallel.py) calls
    them once per key chunk."""
    b: int
    t: int
    kv: int
    g: int
    bq: int
    d: int
    causal: bool
    segmented: bool
    blocked: bool
    skip: bool = False  # skip the tiles none of whose queries sees any key (lax.cond; the ring's masked pairs)

    @staticmethod
    def of(q, k, causal, segmented, blocked, block_rows=512, skip=False):
        b, t, h, d = q.shape
        kv = k.shape[2]
        g = h // kv
        bq = t  # query block: at most block_rows rows (g heads x bq positions) per item when t allows
        while bq * g > block_rows and bq % 2 == 0:
            bq //= 2
        return Tiles(b, t, kv, g, bq, d, causal, segmented, blocked, skip)

    @property
    def nq(self):
        return self.t // self.bq

    def q_items(self, x):
        """[B, T, H, ...] -> [B, KV, nq, g * bq, ...]."""
        b, kv, nq, g, bq = self.b, self.kv, self.nq, self.g, self.bq
        x = x.reshape((b, nq, bq, kv, g) + x.shape[3:])
        return jnp.moveaxis(x, (3, 1, 4), (1, 2, 3)).reshape((b, kv, nq, g * bq) + x.shape[5:])

    def from_q_items(self, x):
        b, kv, nq, g, bq = self.b, self.kv, self.nq, self.g, self.bq
        x = x.reshape((b, kv, nq, g, bq) + x.shape[4:])
        return jnp.moveaxis(x, (1, 2, 3), (3, 1, 4)).reshape((b, self.t, kv * g) + x.shape[5:])

    def kv_items(self, x):
        """[B, S, KV, D] -> [B, KV, S, D]."""
        return x.transpose(0, 2, 1, 3)

    def _allowed(self, rows, bi, blk):
        """[g * bq, S] bool: the keys the queries of block blk of sequence bi may see."""
        kmask, kseg, k_id, k_pos, qseg, q_id, q_pos = rows
        tile = lambda r: jnp.tile(jax.lax.dynamic_slice_in_dim(r[bi], blk * self.bq, self.bq), self.g)[:, None]
        ok = kmask[bi][None, :]
        if self.segmented:
            ok = ok & (tile(qseg) == kseg[bi][None, :])
        if self.blocked:
            ok = ok & Blocks.allowed(tile(q_id), k_id[bi][None, :])
        if self.causal:
            ok = ok & (k_pos[bi][None, :] <= tile(q_pos))
        return ok

    def _scores(self, qx, kx, ok):
        sc = jnp.dot(qx, kx.T, preferred_element_type=jnp.float32) * (1.0 / self.d ** 0.5)
        return jnp.where(ok, sc, jnp.finfo(jnp.float32).min)

    def forward(self, qi, ki, vi, rows):
        """qi [B, KV, nq, rows, D], ki / vi [B, KV, S, D] -> (out like qi, lse [B, KV, nq, rows] float32)."""
        def item(a):
            bi, h, blk, qx = a
            kx, vx, ok = ki[bi, h], vi[bi, h], self._allowed(rows, bi, blk)

            def attend(_):
                sc = self._scores(qx, kx, ok)
                m = jnp.max(sc, -1, keepdims=True)
                p = jnp.where(ok, jnp.exp(sc - m), 0.0)
                l = jnp.sum(p, -1, keepdims=True)
                o = jnp.dot(p.astype(vx.dtype), vx, preferred_element_type=jnp.float32) / jnp.maximum(l, 1e-30)
                return o.astype(qx.dtype), jnp.where(l > 0, m + jnp.log(jnp.maximum(l, 1e-30)), NEG)[:, 0]

            if not self.skip:
                return attend(None)
            return jax.lax.cond(jnp.any(ok), attend,
                                lambda _: (jnp.zeros_like(qx), jnp.full(qx.shape[:1], NEG, jnp.float32)), None)

        o, lse = jax.lax.map(item, self._each(qi))
        return o.reshape(qi.shape), lse.reshape(qi.shape[:-1])

    def backward(self, qi, ki, vi, rows, o, lse, do):
        """The gradients of one (queries, keys) pair given the outputs `o` and log-sum-exps `lse` over all keys
        (the whole sequence, also under ring attention): (dq like qi, dk, dv [B, KV, S, D]), all float32. Key gradients
        are summed over the query blocks in a loop carry (memory: one [S, D] per sequence and head)."""
        def head(a):
            bi, h, qs, os, ls, dos = a
            kx, vx = ki[bi, h], vi[bi, h]

            def block(acc, b):
                blk, qx, ox, lx, dox = b
                ok = self._allowed(rows, bi, blk)

                def grads(_):
                    p = jnp.where(ok, jnp.exp(self._scores(qx, kx, ok) - lx[:, None]), 0.0)
                    dv = jnp.dot(p.T.astype(dox.dtype), dox, preferred_element_type=jnp.float32)
                    dp = jnp.dot(dox, vx.T, preferred_element_type=jnp.float32)
                    delta = jnp.sum(dox.astype(jnp.float32) * ox.astype(jnp.float32), -1, keepdims=True)
                    ds = (p * (dp - delta) * (1.0 / self.d ** 0.5)).astype(qx.dtype)
                    dq = jnp.dot(ds, kx, preferred_element_type=jnp.float32)
                    dk = jnp.dot(ds.T, qx, preferred_element_type=jnp.float32)
                    return dq, dk, dv

                zeros = lambda _: (jnp.zeros(qx.shape, jnp.float32), jnp.zeros(kx.shape, jnp.float32),
                                   jnp.zeros(vx.shape, jnp.float32))
                dq, dk, dv = jax.lax.cond(jnp.any(ok), grads, zeros, None) if self.skip else grads(None)
                return (acc[0] + dk, acc[1] + dv), dq

            acc = (jnp.zeros(kx.shape, jnp.float32), jnp.zeros(vx.shape, jnp.float32))
            (dk, dv), dq = jax.lax.scan(block, acc, (jnp.arange(self.nq), qs, os, ls, dos))
            return dq, dk, dv

        bi, h = (x.reshape(-1) for x in jnp.meshgrid(jnp.arange(self.b), jnp.arange(self.kv), indexing="ij"))
        flat = lambda x: x.reshape((self.b * self.kv,) + x.shape[2:])
        dq, dk, dv = jax.lax.map(head, (bi, h, flat(qi), flat(o), flat(lse), flat(do)))
        unflat = lambda x: x.reshape((self.b, self.kv) + x.shape[1:])
        return unflat(dq), unflat(dk), unflat(dv)

    def _each(self, qi):
        """(sequence, head, block, queries) of every item, flat, for lax.map."""
        bi, h, blk = (x.reshape(-1) for x in jnp.meshgrid(jnp.arange(self.b), jnp.arange(self.kv),
                                                          jnp.arange(self.nq), indexing="ij"))
        return bi, h, blk, qi.reshape((-1,) + qi.shape[3:])

    def attend(self, q, k, v, rows):
        """Attention of q [B, T, H, D] over k, v [B, S, KV, D] under `rows` (attention_rows), a custom VJP."""
        # Everything the rules use is an argument: a custom VJP may not close over tracers (of a scan over layers).
        @jax.custom_vjp
        def run(qi, ki, vi, rows):
            return self.forward(qi, ki, vi, rows)[0]

        def run_fwd(qi, ki, vi, rows):
            o, lse = self.forward(qi, ki, vi, rows)
            return o, (qi, ki, vi, rows, o, lse)

        def run_bwd(res, do):
            qi, ki, vi, rows, o, lse = res
            do, rows = tied(do, rows)
            dq, dk, dv = self.backward(qi, ki, vi, rows, o, lse, do)
            return dq.astype(qi.dtype), dk.astype(ki.dtype), dv.astype(vi.dtype), None

        run.defvjp(run_fwd, run_bwd)
        q, rows = tied(q, rows)
        out = run(self.q_items(q), self.kv_items(k), self.kv_items(v), rows)
        return self.from_q_items(out)


def cudnn_attention(q, k, v, key_mask=None, segment_ids=None, causal=False, sharder=None, blocks=None):
    """cuDNN flash attention on GPU through jax.nn.dot_product_attention (bf16/fp16 inputs). cuDNN has no
    block-causal mask type: `blocks` reaches it as a dense boolean mask like the key and segment masks (exact,
    but no tiles are skipped and the mask is [B, 1, T, S]). cuDNN takes a mask only with both sequence dimensions
    whole ("Bias must have same seq length as QKV, got 1 and 1024" for a [B, 1, 1, S] key mask): it is broadcast."""
    b, t, s = q.shape[0], q.shape[1], k.shape[1]
    mask = _mask(b, t, s, key_mask, segment_ids, False, blocks)
    if mask is not None:
        mask = jnp.broadcast_to(mask, (mask.shape[0], 1, t, s))
        if sharder is not None and mask.shape[0] == b:
            # sharded like q's rows: else the propagated sharding of the mask may be one that JAX's partitioner of
            # the cuDNN call cannot express (AssertionError in explode_superdims with 4 micro-batches on 8 GPUs)
            mask = sharder.constrain(mask, ("batch", None, None, None))
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")


def tpu_attention(q, k, v, key_mask=None, segment_ids=None, causal=False, sharder=None, blocks=None):
    """`auto` on TPU: splash attention where its tiles fit (whole sequences of a multiple of 128 tokens: training,
    the ELBO, uncached decoding), else the XLA reference (short sequences, cached decoding windows)."""
    t = q.shape[1]
    whole = k.shape[1] == t and (blocks is None or (isinstance(blocks.q_start, int) and not blocks.q_start))
    attend = splash_attention if whole and t % 128 == 0 else xla_attention
    return attend(q, k, v, key_mask=key_mask, segment_ids=segment_ids, causal=causal, sharder=sharder, blocks=blocks)


BACKENDS = {"xla": xla_attention, "flash": flash_attention, "cudnn": cudnn_attention,
            "splash": splash_attention}


def platform_of(sharder=None):
    """The platform the program runs on: that of the mesh's devices (which may be TPU devices of a topology
    description on a CPU host), else the default backend."""
    return sharder.mesh.devices.flat[0].platform if sharder is not None else jax.default_backend()


def get_attention(name, dtype=None, platform=None):
    """`auto` picks per platform (default: the default backend): splash on TPU where its tiles fit (tpu_attention),
    cuDNN on GPU for 16-bit compute (else the XLA reference), flash on the CPU."""
    if name == "auto":
        platform = platform or jax.default_backend()
        if platform == "tpu":
            return tpu_attention
        gpu = "cudnn" if dtype in (jnp.bfloat16, jnp.float16) else "xla"
        name = {"gpu": gpu}.get(platform, "flash")
    if name not in BACKENDS:
        raise LladaError(f"unknown attention backend model.attention={name!r}; expected one of auto, "
                         f"{', '.join(BACKENDS)}.")
    return BACKENDS[name]
