"""Context parallelism on 8 simulated devices (context 4 x data 2): both strategies, every mask (full, causal, block
diffusion's two copies), with padded rows, random lengths and documents, equal the unsharded reference, forward
and gradients (docs/architecture.md#context-parallelism)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import attention, config as config_lib, context_parallel, sharding

T = 128  # 8 zig-zag chunks of 16 over 4 devices


def _sharder(context=4, data=2):
    cfg = config_lib.default_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.context = data, 1, context
    return sharding.Sharder(sharding.make_mesh(cfg.mesh, jax.devices()), cfg.sharding.rules)


def _case(seed=0, b=2, h=4, kv=2, d=16):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, T, h, d))
    k, v = (jax.random.normal(key, (b, T, kv, d)) for key in ks[1:3])
    lengths = jnp.array([T, 77])  # a whole row and a random-length (padded) one
    key_mask = jnp.arange(T)[None] < lengths[:, None]
    segments = (jnp.arange(T)[None] >= jnp.array([[40], [90]])).astype(jnp.int32)  # two documents per row
    weights = jax.random.normal(ks[3], q.shape) * key_mask[:, :, None, None]  # a loss on real queries only
    return q, k, v, key_mask, segments, weights


MASKS = {"full": {}, "causal": {"causal": True}, "block": {"blocks": attention.Blocks(16, pair=True)},
         "block_one_copy": {"blocks": attention.Blocks(8)}}


def _value_and_grads(fn, q, k, v, weights, **kw):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, **kw) * weights)
    with jax.default_matmul_precision("highest"):
        out, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
        fwd = jax.jit(lambda q, k, v: fn(q, k, v, **kw))(q, k, v)
    return fwd, out, grads


def _assert_close(got, want, weights, real):
    fwd, out, grads = got
    ref_fwd, ref, ref_grads = want
    np.testing.assert_allclose(np.asarray(fwd * real), np.asarray(ref_fwd * real), atol=1e-5)
    np.testing.assert_allclose(float(out), float(ref), atol=1e-5 * float(jnp.sum(jnp.abs(weights))))
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("strategy", ["allgather", "ring", "ring_zigzag"])
def test_split_sequence_equals_unsharded_attention(mask, strategy):
    """The sequence split over 4 context devices: forward outputs (real queries) and gradients wrt q, k, v equal
    the XLA reference on one device to 1e-5. ring_zigzag: the sequence in zig-zag order, its positions passed along,
    outputs and gradients put back in order."""
    q, k, v, key_mask, segments, weights = _case()
    sharder = _sharder()
    spec = ("batch", "act_seq", "heads", "head_dim")
    kw = {"key_mask": key_mask, "segment_ids": segments, **MASKS[mask]}
    want = _value_and_grads(attention.xla_attention, q, k, v, weights, **kw)

    if strategy == "allgather":
        def fn(q, k, v, **kw):
            return attention.flash_attention(*(sharder.constrain(x, spec) for x in (q, k, v)), sharder=sharder, **kw)
    else:
        zig = strategy == "ring_zigzag"
        order = context_parallel.zigzag(jnp.arange(T)[None], 4)[0] if zig else None
        there = (lambda x: context_parallel.zigzag(x, 4)) if zig else (lambda x: x)
        back = (lambda x: context_parallel.unzigzag(x, 4)) if zig else (lambda x: x)

        def fn(q, k, v, key_mask, segment_ids, **kw):
            q, k, v = (sharder.constrain(there(x), spec) for x in (q, k, v))
            out = context_parallel.ring_attention(q, k, v, there(key_mask), there(segment_ids), sharder=sharder,
                                                  index=order, block_rows=32, **kw)
            return back(out)
    _assert_close(_value_and_grads(fn, q, k, v, weights, **kw), want, weights, key_mask[:, :, None, None])


def test_zigzag_order():
    """8 chunks over 4 devices: device i holds chunks i and 7 - i; unzigzag inverts it."""
    x = jnp.arange(16)[None]
    z = context_parallel.zigzag(x, 4)
    assert z[0].reshape(4, 4).tolist() == [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]]
    np.testing.assert_array_equal(context_parallel.unzigzag(z, 4), x)
    y = jnp.arange(2 * 16 * 3).reshape(2, 16, 3)
    np.testing.assert_array_equal(context_parallel.unzigzag(context_parallel.zigzag(y, 2), 2), y)


@pytest.fixture(scope="module", params=["mdm", "block"])
def run_dir(request, tmp_path_factory):
    """A tiny run (one device, 3 steps) of the LLaDA objective and of block diffusion (blocks of 4)."""
    from conftest import tiny_config

    from llada_jax import train
    d = tmp_path_factory.mktemp(request.param)
    cfg = tiny_config()
    cfg.model.vocab_size = 64  # the synthetic character vocabulary
    cfg.objective, cfg.diffusion.block_size = request.param, 4
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 3, 3, 3
    train.train(cfg, str(d), log=lambda *a: None)
    return str(d)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["allgather", "ring"])
def test_sampling_and_likelihood_on_a_split_sequence_equal_one_device(run_dir, strategy):
    """`llada sample` (the uncached reverse process) and `llada eval`'s bound with the sequence split over
    mesh.context=4 (x fsdp 2) equal one device: the logits of a 14-token sequence (ring: padded to 16) to 1e-5, the
    generated tokens exactly, the ELBO to 1e-5."""
    from llada_jax import evaluate, inference, objectives
    overrides = [("sampling.gen_length", "8"), ("sampling.steps", "8"), ("sampling.cache", "none")]
    one = inference.load_run(run_dir, overrides + [("mesh.fsdp", "1")], devices=jax.devices()[:1])
    split = inference.load_run(run_dir, overrides + [("mesh.fsdp", "2"), ("mesh.context", "4"),
                                                     ("model.context_parallel", strategy)])
    assert split.model.sharder.spec(("batch", "act_seq"))[1] == "context"
    assert split.model.ring == (4 if strategy == "ring" else 1)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 14)), jnp.int32)
    key_mask = jnp.arange(14)[None] < jnp.array([[14], [9]])
    obj = objectives.get(one.cfg)
    kw = {"blocks": attention.Blocks(4)} if obj.block_size(one.cfg) else {}
    want = one.model.apply(one.params, tokens, key_mask, **kw)
    got = jax.jit(lambda p: split.model.apply(p, tokens, key_mask, **kw))(split.params)
    real = key_mask[:, :, None]
    np.testing.assert_allclose(np.asarray(got * real), np.asarray(want * real), atol=1e-5)
    key = jax.random.key(3)
    np.testing.assert_array_equal(split.sample(["12+34=", "7+5="], key=key)["tokens"],
                                  one.sample(["12+34=", "7+5="], key=key)["tokens"])
    bound = {name: evaluate.evaluate_run(run, jax.random.key(0), perplexity=4, tasks=False,
                                         log=lambda *a: None)["elbo/nll"] for name, run in (("one", one),
                                                                                           ("split", split))}
    assert bound["split"] == pytest.approx(bound["one"], rel=1e-5)


@pytest.mark.parametrize("mask", ["causal", "block_one_copy", "block"])
def test_ring_model_pads_and_reorders_whole_sequences(mask):
    """The model under ring attention (context 4): a 14-token sequence is padded to 16 (2 x 4 zig-zag chunks of 2)
    and put back; the block pair is 2 x 16. Logits equal one device to 1e-5, and a pair that does not divide is
    refused with what to change."""
    from conftest import tiny_config

    from llada_jax import model as model_lib
    cfg = tiny_config()
    cfg.model.context_parallel = "ring"
    one = model_lib.Model(cfg.model)
    ring = model_lib.Model(cfg.model, sharder=_sharder())
    assert ring.ring == 4
    params = one.init(jax.random.key(0))
    t = 32 if mask == "block" else 14
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 48, (2, t)), jnp.int32)
    key_mask = jnp.arange(t)[None] < jnp.array([[t], [t - 5]])
    kw = {"causal": {"causal": True}, "block_one_copy": {"blocks": attention.Blocks(4)},
          "block": {"blocks": attention.Blocks(4, pair=True)}}[mask]
    want = one.apply(params, tokens, key_mask, **kw)
    got = jax.jit(lambda p: ring.apply(p, tokens, key_mask, **kw))(params)
    real = key_mask[:, :, None]
    np.testing.assert_allclose(np.asarray(got * real), np.asarray(want * real), atol=1e-5)
    if mask == "block":
        with pytest.raises(ValueError, match="divides into them"):
            ring.apply(params, tokens[:, :28], key_mask[:, :28], **kw)
