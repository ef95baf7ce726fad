"""LoRA (train.lora_rank): adapters on the blocks' projections train, the base stays frozen, exports and every
inference command see the merged weights (docs/adaptation.md#lora)."""
import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import checkpoint, inference, model as model_lib, objectives, train
from llada_jax.convert import hf
from tests.conftest import tiny_config

LORA = model_lib.LoRA(4, 8.0)


def lora_config(tmp_path=None):
    c = tiny_config()
    c.train.lora_rank, c.train.lora_alpha = LORA.rank, LORA.alpha
    c.train.steps, c.train.log_every, c.checkpoint.every_steps = 3, 1, 3
    c.optim.warmup_steps, c.optim.peak_lr = 0, 1e-2
    return c


def random_adapters(params, key):
    """params with every adapter (B included) drawn at random, so they change the model."""
    blocks = dict(params["blocks"])
    for i, k in enumerate(sorted(k for k in blocks if "_lora_" in k)):
        blocks[k] = 0.3 * jax.random.normal(jax.random.fold_in(key, i), blocks[k].shape)
    return {**params, "blocks": blocks}


def test_adapters_start_at_zero_and_merge_exactly():
    m = tiny_config().model
    key = jax.random.key(0)
    base = model_lib.Model(m).init(key)
    with_lora = model_lib.Model(m, lora=LORA).init(key)
    # the base draws as without LoRA, and B = 0: the LoRA model starts as the base model
    for k, v in base["blocks"].items():
        np.testing.assert_array_equal(with_lora["blocks"][k], v)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, m.vocab_size)
    np.testing.assert_array_equal(model_lib.Model(m, lora=LORA).apply(with_lora, tokens),
                                  model_lib.Model(m).apply(base, tokens))
    # x W + s x A B (two thin matmuls) == x (W + s A B) (the merged weights), and the merge is W + s A B in float64
    params = random_adapters(with_lora, jax.random.key(2))
    merged = model_lib.merge_lora(params, LORA)
    assert set(merged["blocks"]) == set(base["blocks"])
    np.testing.assert_allclose(model_lib.Model(m, lora=LORA).apply(params, tokens),
                               model_lib.Model(m).apply(merged, tokens), rtol=1e-4, atol=1e-4)
    a = np.asarray(params["blocks"]["attn_out_lora_a"], np.float64)  # [L, heads, head_dim, r]
    b = np.asarray(params["blocks"]["attn_out_lora_b"], np.float64)  # [L, r, d]
    want = np.asarray(base["blocks"]["attn_out"], np.float64) + LORA.scale * np.einsum("lhkr,lrd->lhkd", a, b)
    np.testing.assert_allclose(merged["blocks"]["attn_out"], want, rtol=1e-6, atol=1e-6)


def test_only_adapters_train_with_the_gradient_of_the_merged_weights(one_device):
    cfg = lora_config()
    setup = train.Setup(cfg, one_device)
    state = setup.init_state()
    state = {**state, "params": random_adapters(state["params"], jax.random.key(3))}
    before = jax.device_get(state["params"])
    assert set(state["opt_state"][1][0].mu["blocks"]) == {k for k in before["blocks"] if "_lora_" in k}
    batch = setup.put_batch(next(train.make_data(cfg)))
    key = jax.random.key(4)
    _, _, grads = setup.loss_and_grads(state["params"], batch, key)
    # the same gradient another way: through the merged weights W + s A B (chain rule by autodiff of the merge)
    noise = objectives.draw_noise(key, batch, cfg)
    trainable, frozen = train.split_trainable(state["params"], setup.lora)
    plain = model_lib.Model(cfg.model)

    def merged_loss(adapters):
        params = model_lib.merge_lora(train.join_trainable(adapters, frozen), LORA)
        return objectives.loss_given_noise(plain, params, batch, noise, cfg)[0]

    want = jax.grad(merged_loss)(trainable)
    assert set(grads["blocks"]) == set(want["blocks"])
    for k in want["blocks"]:
        np.testing.assert_allclose(grads["blocks"][k], want["blocks"][k], rtol=2e-4, atol=1e-6)
    for step in range(2):
        state, _ = setup.step(state, batch, step)
    after = jax.device_get(state["params"])
    for k, v in before["blocks"].items():
        if "_lora_" in k:
            assert not np.array_equal(after["blocks"][k], v), k
        else:
            np.testing.assert_array_equal(after["blocks"][k], v)
    np.testing.assert_array_equal(after["wte"], before["wte"])


def test_lora_run_from_a_base_run_exports_and_loads_merged(tmp_path, one_device):
    base_cfg = tiny_config()
    base_cfg.train.steps, base_cfg.checkpoint.every_steps = 2, 2
    base_dir, run_dir = str(tmp_path / "base"), str(tmp_path / "lora")
    train.train(base_cfg, base_dir, log=lambda *a: None, devices=one_device)
    base, _ = checkpoint.restore_params(base_dir, model_lib.Model(base_cfg.model).abstract_params())
    cfg = lora_config()
    cfg.checkpoint.init_from = base_dir
    train.train(cfg, run_dir, log=lambda *a: None, devices=one_device)
    saved, _ = checkpoint.restore_params(run_dir, model_lib.Model(cfg.model, lora=LORA).abstract_params())
    for k, v in base["blocks"].items():  # the base came from init_from and stayed frozen
        np.testing.assert_array_equal(saved["blocks"][k], v)
    assert any(np.abs(saved["blocks"][f"{n}_lora_b"]).max() > 0 for n in model_lib.LORA_TARGETS)
    merged = jax.device_get(model_lib.merge_lora(saved, LORA))
    # every inference command loads the merged weights ...
    run = inference.load_run(run_dir, devices=one_device)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), jax.device_get(run.params),
                 merged)
    # ... and to-hf merges as it streams: the export imports back as the merged weights
    hf.to_hf(run_dir, str(tmp_path / "hf"), dtype="float32", log=lambda *a: None)
    hf.from_hf(str(tmp_path / "hf"), str(tmp_path / "back"), log=lambda *a: None)
    back, _ = checkpoint.restore_params(str(tmp_path / "back"), model_lib.Model(cfg.model).abstract_params())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), back, merged)


def test_lora_flops_skip_the_frozen_weight_gradients():
    m = tiny_config().model
    n, head = model_lib.count_params(m, embeddings=False), m.d_model * m.vocab_size
    adapters = model_lib.count_params(m, lora=LORA) - model_lib.count_params(m)
    per_layer = sum(LORA.rank * (np.prod(p.shape[1:1 + k]) + np.prod(p.shape[1 + k:]))
                    for name, k in model_lib.LORA_TARGETS.items()
                    for p in [model_lib.param_shapes(m)["blocks"][name]])
    assert adapters == m.n_layers * per_layer
    attn = 12 * m.n_layers * 16 * m.n_heads * model_lib.head_dim(m)
    assert model_lib.flops_per_token(m, 16, lora=LORA) == 4 * n + 6 * adapters + 4 * head + attn
    assert model_lib.flops_per_token(m, 16) == 6 * n + 6 * head + attn
    assert jnp.dtype(model_lib.Model(m, lora=LORA).abstract_params()["blocks"]["q_proj_lora_b"].dtype) == jnp.float32
