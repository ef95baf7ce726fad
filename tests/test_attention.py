"""Attention backends equal the XLA reference, forward and backward (splash runs in Pallas interpret mode here)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import attention, config as config_lib, sharding


def _inputs(b=2, t=128, h=4, kv=2, d=16, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, t, h, d))
    k = jax.random.normal(ks[1], (b, t, kv, d))
    v = jax.random.normal(ks[2], (b, t, kv, d))
    return q, k, v


def _masks(kind, b=2, t=128):
    lengths = jnp.array([t, 77])
    key_mask = jnp.arange(t)[None] < lengths[:, None]
    segments = (jnp.arange(t)[None] >= jnp.array([[40], [90]])).astype(jnp.int32)  # two documents per row
    return {"none": (None, None), "key_mask": (key_mask, None), "segments": (None, segments),
            "both": (key_mask, segments)}[kind], key_mask if kind in ("key_mask", "both") else jnp.ones((b, t), bool)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "key_mask", "segments", "both"])
@pytest.mark.parametrize("causal", [False, True])
def test_splash_equals_reference_forward_and_backward(kind, causal):
    q, k, v = _inputs()
    (key_mask, segments), real = _masks(kind)
    weights = jax.random.normal(jax.random.key(9), q.shape) * real[:, :, None, None]  # loss on real queries only

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, key_mask=key_mask, segment_ids=segments, causal=causal) * weights)

    ref, ref_grads = jax.value_and_grad(loss(attention.xla_attention), argnums=(0, 1, 2))(q, k, v)
    out, grads = jax.value_and_grad(loss(attention.splash_attention), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(float(out), float(ref), rtol=1e-4)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-4 * float(jnp.abs(r).max()))
    fwd = attention.splash_attention(q, k, v, key_mask=key_mask, segment_ids=segments, causal=causal)
    want = attention.xla_attention(q, k, v, key_mask=key_mask, segment_ids=segments, causal=causal)
    np.testing.assert_allclose(np.asarray(fwd * real[:, :, None, None]), np.asarray(want * real[:, :, None, None]),
                               atol=1e-4)


@pytest.mark.slow
def test_splash_under_shard_map_on_a_mesh():
    cfg = config_lib.default_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
    sharder = sharding.Sharder(sharding.make_mesh(cfg.mesh, jax.devices()), cfg.sharding.rules)
    q, k, v = _inputs(b=4)
    key_mask = jnp.arange(128)[None] < jnp.array([[128], [60], [128], [5]])
    f = jax.jit(lambda q, k, v: attention.splash_attention(q, k, v, key_mask=key_mask, sharder=sharder))
    got = f(q, k, v)
    want = attention.xla_attention(q, k, v, key_mask=key_mask)
    real = key_mask[:, :, None, None]
    np.testing.assert_allclose(np.asarray(got * real), np.asarray(want * real), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["splash", "flash", "xla"])
def test_context_parallel_attention_equals_reference(backend):
    """A sequence split over mesh.context=4 (x data 2): the local queries attend to the gathered keys; forward and
    gradients equal the unsharded reference (key masks and documents; splash: the full mask, the local kernel)."""
    cfg = config_lib.default_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.context = 2, 1, 4
    sharder = sharding.Sharder(sharding.make_mesh(cfg.mesh, jax.devices()), cfg.sharding.rules)
    t = 512 if backend == "splash" else 128  # splash tiles the 4 local query shards in 128s
    q, k, v = _inputs(t=t)
    (key_mask, segments), real = _masks("both", t=t)
    weights = jax.random.normal(jax.random.key(9), q.shape) * real[:, :, None, None]
    spec = ("batch", "act_seq", "heads", "head_dim")

    def loss(fn, **kw):
        def f(q, k, v):
            q, k, v = (sharder.constrain(x, spec) for x in (q, k, v)) if kw else (q, k, v)
            return jnp.sum(fn(q, k, v, key_mask=key_mask, segment_ids=segments, **kw) * weights)
        return f

    fn = getattr(attention, f"{backend}_attention")
    ref, ref_grads = jax.value_and_grad(loss(attention.xla_attention), argnums=(0, 1, 2))(q, k, v)
    out, grads = jax.jit(jax.value_and_grad(loss(fn, sharder=sharder), argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(float(out), float(ref), rtol=1e-4)  # a sum with cancellation: compare outputs too
    fwd = jax.jit(lambda q, k, v: fn(*(sharder.constrain(x, spec) for x in (q, k, v)), key_mask=key_mask,
                                     segment_ids=segments, sharder=sharder))(q, k, v)
    want = attention.xla_attention(q, k, v, key_mask=key_mask, segment_ids=segments)
    np.testing.assert_allclose(np.asarray(fwd * real[:, :, None, None]), np.asarray(want * real[:, :, None, None]),
                               atol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-4 * float(jnp.abs(r).max()))


def test_auto_picks_flash_on_cpu():
    assert attention.get_attention("auto", jnp.bfloat16) is attention.flash_attention
    assert attention.get_attention("auto", jnp.float32, "gpu") is attention.xla_attention
    assert attention.get_attention("auto", jnp.bfloat16, "tpu") is attention.tpu_attention
    with pytest.raises(ValueError, match="expected one of auto"):
        attention.get_attention("flashy")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "key_mask", "segments", "both"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_rows", [512, 64])  # one query block per item, or 4 blocks of 32 x 2 heads
def test_flash_equals_reference_forward_and_backward(kind, causal, block_rows):
    q, k, v = _inputs()
    (key_mask, segments), real = _masks(kind)
    weights = jax.random.normal(jax.random.key(9), q.shape) * real[:, :, None, None]
    flash = lambda *a, **kw: attention.flash_attention(*a, block_rows=block_rows, **kw)
    _assert_equals_reference(flash, q, k, v, weights, 1e-6, 1e-5, key_mask=key_mask, segment_ids=segments,
                             causal=causal)


def _assert_equals_reference(fn, q, k, v, weights, out_atol, grad_atol, **kw):
    """fn(q, k, v, **kw) = the XLA reference: a weighted sum of the outputs and its gradients wrt q, k and v
    (tolerances relative to the weights' scale and to each reference gradient's largest entry)."""
    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v, **kw) * weights)

    with jax.default_matmul_precision("highest"):
        ref, ref_grads = jax.value_and_grad(loss(attention.xla_attention), argnums=(0, 1, 2))(q, k, v)
        out, grads = jax.jit(jax.value_and_grad(loss(fn), argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(float(out), float(ref), atol=out_atol * float(jnp.sum(jnp.abs(weights))))
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=grad_atol * float(jnp.abs(r).max()))


def test_flash_window_of_queries_against_all_keys():
    """A KV-cached window: 16 queries attend to 128 keys (the sampler's cached forward)."""
    q, k, v = _inputs()
    q = q[:, 40:56]
    key_mask = jnp.arange(128)[None] < jnp.array([[128], [90]])
    got = attention.flash_attention(q, k, v, key_mask=key_mask)
    want = attention.xla_attention(q, k, v, key_mask=key_mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


@pytest.mark.slow
def test_flash_under_shard_map_on_a_mesh():
    cfg = config_lib.default_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
    sharder = sharding.Sharder(sharding.make_mesh(cfg.mesh, jax.devices()), cfg.sharding.rules)
    q, k, v = _inputs(b=4)
    key_mask = jnp.arange(128)[None] < jnp.array([[128], [60], [128], [5]])
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, key_mask=key_mask) ** 2 * key_mask[:, :, None, None])
    got = jax.jit(jax.value_and_grad(loss(lambda *a, **kw: attention.flash_attention(*a, sharder=sharder, **kw)),
                                     argnums=(0, 1, 2)))(q, k, v)
    want = jax.value_and_grad(loss(attention.xla_attention), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4 * float(jnp.abs(w).max()))


@pytest.mark.slow
def test_model_with_splash_equals_model_with_xla(tiny_cfg):
    from llada_jax import model as model_lib
    tokens = jnp.asarray(np.random.default_rng(0).integers(6, 48, (2, 128)), jnp.int32)
    key_mask = jnp.arange(128)[None] < jnp.array([[128], [70]])
    params = model_lib.Model(tiny_cfg.model).init(jax.random.key(0))
    out = {}
    for backend in ("xla", "splash"):
        tiny_cfg.model.attention = backend
        out[backend] = model_lib.Model(tiny_cfg.model).apply(params, tokens, key_mask=key_mask)
    real = np.asarray(key_mask)[:, :, None]
    np.testing.assert_allclose(np.asarray(out["splash"]) * real, np.asarray(out["xla"]) * real, atol=1e-4)


# -- block diffusion -------------------------------------------------------------------------------------------

def _spec_mask(l, block):
    """BD3-LM's [x_t ; x_0] mask from the words of the paper, by loops."""
    out = np.zeros((2 * l, 2 * l), bool)
    for i in range(2 * l):
        for j in range(2 * l):
            bq, bk, noisy_q, noisy_k = (i % l) // block, (j % l) // block, i < l, j < l
            if noisy_q:
                out[i, j] = (noisy_k and bk == bq) or (not noisy_k and bk < bq)
            else:
                out[i, j] = not noisy_k and bk <= bq
    return out


@pytest.mark.slow
def test_blocks_mask_is_the_bd3lm_mask():
    for l, block in ((16, 4), (12, 12), (8, 1)):
        np.testing.assert_array_equal(np.asarray(attention.Blocks(block, pair=True).mask(2 * l, 2 * l)),
                                      _spec_mask(l, block))
        np.testing.assert_array_equal(np.asarray(attention.Blocks(block).mask(l, l)),
                                      np.array([[j // block <= i // block for j in range(l)] for i in range(l)]))
    window = attention.Blocks(4, q_start=jnp.int32(8)).mask(4, 16)  # queries 8..11 (block 2) of 16 keys
    np.testing.assert_array_equal(np.asarray(window), np.arange(16)[None].repeat(4, 0) < 12)


def _blocks_case(fn, kind, blocks, **kw):
    q, k, v = _inputs()
    (key_mask, segments), real = _masks(kind)
    weights = jax.random.normal(jax.random.key(9), q.shape) * real[:, :, None, None]
    _assert_equals_reference(fn, q, k, v, weights, 1e-5, 2e-4, key_mask=key_mask, segment_ids=segments,
                             blocks=blocks, **kw)


@pytest.mark.parametrize("kind", ["none", "both"])
@pytest.mark.parametrize("pair", [True, False])
def test_splash_blocks_equal_reference(kind, pair):
    """The block-diffusion mask computed inside the splash kernel (interpret mode) = the XLA reference."""
    _blocks_case(attention.splash_attention, kind, attention.Blocks(16, pair=pair))


@pytest.mark.parametrize("kind", ["none", "both"])
@pytest.mark.parametrize("pair", [True, False])
def test_flash_blocks_equal_reference(kind, pair):
    flash = lambda *a, **kw: attention.flash_attention(*a, block_rows=64, **kw)
    _blocks_case(flash, kind, attention.Blocks(16, pair=pair))


def test_cudnn_gets_the_block_mask(monkeypatch):
    """cuDNN has no block mask type: cudnn_attention hands jax.nn.dot_product_attention the dense mask. Checked
    here through the same call with implementation='xla' (no GPU on the CPU)."""
    real = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention",
                        lambda *a, implementation=None, **kw: real(*a, implementation="xla", **kw))
    _blocks_case(attention.cudnn_attention, "both", attention.Blocks(16, pair=True))


def test_cudnn_gets_whole_masks(monkeypatch):
    """cuDNN takes a mask only as [B, 1, T, S] ("Bias must have same seq length as QKV, got 1 and 1024" for the
    [B, 1, 1, S] of a key mask, found compiling the train step for H100s): cudnn_attention broadcasts it."""
    real, shapes = jax.nn.dot_product_attention, []

    def spy(*a, mask=None, implementation=None, **kw):
        shapes.append(None if mask is None else mask.shape)
        return real(*a, mask=mask, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    q, k, v = _inputs()
    (key_mask, _), _ = _masks("key_mask")
    got = attention.cudnn_attention(q, k, v, key_mask=key_mask)
    ref = attention.xla_attention(q, k, v, key_mask=key_mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
    assert shapes == [(2, 1, 128, 128)]
    attention.cudnn_attention(q, k, v)
    assert shapes[-1] is None  # no mask: none is made


def test_flash_blocks_window_of_queries():
    """A cached decoding window (block 3 of 8, offset traced) = those rows of the whole block-causal sequence."""
    q, k, v = _inputs()
    key_mask = jnp.arange(128)[None] < jnp.array([[128], [90]])
    full = attention.xla_attention(q, k, v, key_mask=key_mask, blocks=attention.Blocks(16))
    f = jax.jit(lambda q, start: attention.flash_attention(q, k, v, key_mask=key_mask,
                                                           blocks=attention.Blocks(16, q_start=start)))
    got = f(jax.lax.dynamic_slice_in_dim(q, 48, 16, 1), jnp.int32(48))
    np.testing.assert_allclose(np.asarray(got), np.asarray(full[:, 48:64]), atol=1e-5)


def test_splash_and_flash_blocks_on_a_mesh():
    cfg = config_lib.default_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
    sharder = sharding.Sharder(sharding.make_mesh(cfg.mesh, jax.devices()), cfg.sharding.rules)
    q, k, v = _inputs(b=4)
    key_mask = jnp.arange(128)[None] < jnp.array([[128], [60], [128], [100]])
    blocks = attention.Blocks(16, pair=True)
    want = attention.xla_attention(q, k, v, key_mask=key_mask, blocks=blocks)
    real = key_mask[:, :, None, None]
    for fn in (attention.splash_attention, attention.flash_attention):
        got = jax.jit(lambda q, k, v: fn(q, k, v, key_mask=key_mask, blocks=blocks, sharder=sharder))(q, k, v)
        np.testing.assert_allclose(np.asarray(got * real), np.asarray(want * real), atol=1e-4)
