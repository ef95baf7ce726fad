"""The Transformer: exact parameter counts, a float64 numpy reference, bidirectionality, masks, scan and remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from llada_jax import config as config_lib, model as model_lib


def _params(cfg, seed=0):
    return model_lib.Model(cfg.model).init(jax.random.key(seed))


def test_param_counts_of_the_paper_configs():
    c8 = config_lib.load_config("configs/llada_8b.py").model
    assert model_lib.count_params(c8) == 8_015_581_184
    assert model_lib.count_params(c8, embeddings=False) == 8_015_581_184 - 2 * 126464 * 4096
    c1 = config_lib.load_config("configs/llada_1b.py").model
    assert abs(model_lib.count_params(c1) / 1.49e9 - 1) < 0.01
    assert abs(model_lib.count_params(c1, embeddings=False) / 0.97e9 - 1) < 0.01
    # abstract shapes, nothing allocated: q_proj of the 8B model is [layers, d, heads, head_dim]
    abstract = model_lib.Model(c8).abstract_params()
    assert abstract["blocks"]["q_proj"].shape == (32, 4096, 32, 128)
    assert abstract["blocks"]["k_proj"].shape == (32, 4096, 32, 128)
    assert model_lib.Model(c1).abstract_params()["blocks"]["k_proj"].shape == (22, 2048, 4, 64)  # GQA


def test_param_axes_match_param_ranks(tiny_cfg):
    model = model_lib.Model(tiny_cfg.model)
    shapes = jax.tree.map(lambda x: x.shape, model.abstract_params())
    axes = model.param_axes()
    for s, a in zip(jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)),
                    jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        assert len(s) == len(a)


@pytest.mark.slow
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_forward_equals_float64_numpy(tiny_cfg, n_kv_heads):
    tiny_cfg.model.n_kv_heads = n_kv_heads
    tiny_cfg.model.rope_theta = 10.0  # large rotation angles at short lengths: a wrong RoPE convention shows
    params = _params(tiny_cfg)
    tokens = np.random.default_rng(0).integers(0, 48, (2, 12))
    got = model_lib.Model(tiny_cfg.model).apply(params, jnp.asarray(tokens))
    want = reference.forward(jax.device_get(params), tokens, tiny_cfg.model)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_init_follows_the_mitchell_rule(tiny_cfg):
    tiny_cfg.model.d_model, tiny_cfg.model.ffn_dim, tiny_cfg.model.n_layers = 256, 512, 3
    p = jax.device_get(_params(tiny_cfg))
    # std of N(0,1) cut at +-3: 0.987
    assert np.std(p["blocks"]["q_proj"]) == pytest.approx(0.987 / np.sqrt(256), rel=0.05)
    ff_out = p["blocks"]["ff_out"]
    for layer in range(3):  # further divided by sqrt(2 (layer + 1))
        assert np.std(ff_out[layer]) == pytest.approx(0.987 / np.sqrt(512) / np.sqrt(2 * (layer + 1)), rel=0.05)
    assert np.abs(ff_out).max() <= 3 / np.sqrt(512) + 1e-6
    np.testing.assert_array_equal(p["ln_f"], 1.0)


@pytest.mark.slow
def test_attention_is_bidirectional(tiny_cfg):
    params = _params(tiny_cfg)
    model = model_lib.Model(tiny_cfg.model)
    tokens = jnp.arange(10)[None] % 48
    changed = tokens.at[0, -1].set(47)
    first = lambda t: model.apply(params, t)[0, 0]
    assert float(jnp.max(jnp.abs(first(tokens) - first(changed)))) > 1e-4
    causal = lambda t: model.apply(params, t, causal=True)[0, :-1]
    np.testing.assert_array_equal(np.asarray(causal(tokens)), np.asarray(causal(changed)))


@pytest.mark.slow
def test_key_mask_equals_truncation(tiny_cfg):
    params = _params(tiny_cfg)
    model = model_lib.Model(tiny_cfg.model)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 48, (1, 12)))
    mask = jnp.arange(12)[None] < 7
    masked = model.apply(params, tokens, key_mask=mask)[:, :7]
    truncated = model.apply(params, tokens[:, :7])
    np.testing.assert_allclose(np.asarray(masked), np.asarray(truncated), rtol=1e-5, atol=1e-5)


def _loss_and_grads(cfg, params, tokens):
    model = model_lib.Model(cfg.model)
    loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply(p, tokens))[..., 0] ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("variant", [{"scan_layers": False}, {"remat": "full"}, {"remat": "save_dots"},
                                     {"remat": "full", "scan_layers": False}])
@pytest.mark.slow
def test_scan_and_remat_do_not_change_results(tiny_cfg, variant):
    params = _params(tiny_cfg)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 48, (2, 10)))
    base_loss, base_grads = _loss_and_grads(tiny_cfg, params, tokens)
    for k, v in variant.items():
        tiny_cfg.model[k] = v
    loss, grads = _loss_and_grads(tiny_cfg, params, tokens)
    np.testing.assert_allclose(float(loss), float(base_loss), rtol=1e-6)
    for g, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):  # float32 reassociation only
        np.testing.assert_allclose(np.asarray(g), np.asarray(b), rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32(tiny_cfg):
    params = _params(tiny_cfg)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 48, (2, 10)))
    f32 = model_lib.Model(tiny_cfg.model).apply(params, tokens)
    tiny_cfg.model.dtype = "bfloat16"
    bf16 = model_lib.Model(tiny_cfg.model).apply(params, tokens)
    assert bf16.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=0.1)


@pytest.mark.slow
def test_too_long_sequence_is_a_clear_error(tiny_cfg):
    tiny_cfg.model.max_seq_len = 8
    with pytest.raises(ValueError, match="exceeds model.max_seq_len=8"):
        model_lib.Model(tiny_cfg.model).apply(_params(tiny_cfg), jnp.zeros((1, 9), jnp.int32))


def test_flops_per_token_counts_attention_and_head():
    m = config_lib.load_config("configs/llada_8b.py").model
    n = 6_979_588_096
    assert model_lib.flops_per_token(m, 4096) == 6 * n + 6 * 4096 * 126464 + 12 * 32 * 4096 * 32 * 128


@pytest.mark.slow
@pytest.mark.parametrize("scan", [True, False])
def test_forward_with_a_kv_cache_equals_the_full_pass(tiny_cfg, scan):
    """A window fed at its absolute positions with keys/values of everything else from a fresh cache gives the full
    pass's logits (RoPE offsets, cache splicing; both layer loops)."""
    tiny_cfg.model.scan_layers = scan
    tiny_cfg.model.rope_theta = 100.0  # large rotations at short lengths: a wrong position offset shows
    model = model_lib.Model(tiny_cfg.model)
    params = model.init(jax.random.key(3))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 48, (2, 14)))
    key_mask = jnp.ones((2, 14), bool).at[1, :3].set(False)
    want = model.apply(params, tokens, key_mask)
    full, kv = model.forward(params, tokens, key_mask, return_kv=True)
    np.testing.assert_allclose(np.asarray(full), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert kv[0].shape == (tiny_cfg.model.n_layers, 2, 14, tiny_cfg.model.n_kv_heads, model.hd)
    # dual: only the block [8, 12) is fed; prefix: everything from 6 on is fed, keys before 8 come from the cache
    for start, width, fresh in [(8, 4, 8), (6, 8, 8)]:
        win, _ = model.forward(params, tokens[:, start:start + width], key_mask, kv=kv, start=start, fresh_from=fresh)
        np.testing.assert_allclose(np.asarray(win), np.asarray(want[:, start:start + width]), atol=1e-5, rtol=1e-5)
    # a stale cache is really used: corrupting the cached keys before `fresh` changes the window's logits
    bad = (kv[0].at[:, :, :8].multiply(-1.0), kv[1])
    win, _ = model.forward(params, tokens[:, 8:12], key_mask, kv=bad, start=8, fresh_from=8)
    assert np.abs(np.asarray(win) - np.asarray(want[:, 8:12])).max() > 1e-3



def test_tied_head_is_the_embedding_transposed(tiny_cfg):
    """model.tie_embeddings: no lm_head leaf; the logits equal an untied model's whose head is wte.T."""
    untied = _params(tiny_cfg)
    untied["lm_head"] = untied["wte"].T
    n_untied = model_lib.count_params(tiny_cfg.model)
    tiny_cfg.model.tie_embeddings = True
    model = model_lib.Model(tiny_cfg.model)
    tied = {k: v for k, v in untied.items() if k != "lm_head"}
    assert set(model.abstract_params()) == set(model.init(jax.random.key(0))) == set(tied)
    assert model_lib.count_params(tiny_cfg.model) == n_untied - 48 * 32
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 48, (2, 10)))
    got = model.apply(tied, tokens, causal=True)
    tiny_cfg.model.tie_embeddings = False
    want = model_lib.Model(tiny_cfg.model).apply(untied, tokens, causal=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
def test_tied_head_in_the_chunked_loss(tiny_cfg, one_device):
    """The chunked loss (model.loss_chunk: the loss applies the head itself) uses the tied head: the same loss and
    gradients as the plain loss."""
    from llada_jax import train
    from llada_jax.data import synthetic
    tiny_cfg.model.tie_embeddings, tiny_cfg.objective = True, "arm"
    rows = synthetic.SyntheticCorpus(tiny_cfg.train.seq_len, 0).batch(0, tiny_cfg.train.global_batch)
    results = []
    for chunk in (0, 8):
        tiny_cfg.model.loss_chunk = chunk
        setup = train.Setup(tiny_cfg, one_device)
        with jax.default_matmul_precision("highest"):
            loss, _, grads = jax.jit(setup.loss_and_grads)(setup.init_state()["params"], setup.put_batch(rows),
                                                           jax.random.key(3))
        results.append((float(loss), jax.device_get(grads)))
    assert "lm_head" not in results[0][1]
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    for g, r in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[0][1])):
        np.testing.assert_allclose(g, r, atol=1e-6 * np.abs(r).max())
