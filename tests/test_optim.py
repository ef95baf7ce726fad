"""The paper's Warmup-Stable-Decay schedule in tokens, cosine, and the weight-decay mask."""
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import config as config_lib, model as model_lib, optim


def test_wsd_schedule_of_the_paper():
    cfg = config_lib.load_config("configs/llada_8b.py")
    lr = optim.schedule(cfg)
    per_step = 1280 * 4096
    at = lambda tokens: float(lr(tokens / per_step))
    assert at(0) == 0.0
    assert float(lr(1000)) == pytest.approx(2e-4)  # halfway through the 2000 warmup steps
    assert float(lr(2000)) == pytest.approx(4e-4)
    assert at(1.19e12) == pytest.approx(4e-4)
    assert at(1.21e12) == pytest.approx(1e-4)  # the drop after 1.2T tokens
    assert at(1.99e12) == pytest.approx(1e-4)
    assert at(2.15e12) == pytest.approx(5.5e-5, rel=1e-3)  # halfway down the last 0.3T: linear 1e-4 -> 1e-5
    assert at(2.3e12) == pytest.approx(1e-5, rel=1e-3)


def test_cosine_schedule():
    cfg = config_lib.default_config()
    cfg.optim.schedule, cfg.optim.warmup_steps, cfg.train.steps = "cosine", 10, 110
    lr = optim.schedule(cfg)
    peak, lo = cfg.optim.peak_lr, cfg.optim.peak_lr * cfg.optim.cosine_final_fraction
    assert float(lr(5)) == pytest.approx(peak / 2)
    assert float(lr(60)) == pytest.approx((peak + lo) / 2, rel=1e-5)
    assert float(lr(110)) == pytest.approx(lo, rel=1e-5)


def test_weight_decay_mask():
    cfg = config_lib.default_config()
    params = model_lib.Model(cfg.model).abstract_params()
    mask = optim.decay_mask(params, cfg.optim, cfg.model)
    assert mask["blocks"]["q_proj"] and mask["blocks"]["ff_out"]
    assert not mask["blocks"]["attn_norm"] and not mask["ln_f"]
    assert not mask["wte"] and not mask["lm_head"]
    cfg.optim.decay_embeddings = cfg.optim.decay_norms = True
    mask = optim.decay_mask(params, cfg.optim, cfg.model)
    assert mask["wte"] and mask["ln_f"]


def test_adamw_update_matches_hand_computation():
    cfg = config_lib.default_config()
    cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.clip_norm = "constant", 0, 0.0
    tx, _ = optim.make_optimizer(cfg)
    params = {"blocks": {"q_proj": jnp.full((2,), 2.0)}, "ln_f": jnp.full((2,), 2.0)}
    grads = {"blocks": {"q_proj": jnp.array([0.5, -1.0])}, "ln_f": jnp.array([0.5, -1.0])}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr, wd = cfg.optim.peak_lr, cfg.optim.weight_decay
    adam = -lr * np.sign([0.5, -1.0]) * (1 / (1 + 1e-8 / np.abs([0.5, -1.0])))  # first step: m/sqrt(v) = sign(g)
    np.testing.assert_allclose(updates["ln_f"], adam, rtol=1e-5)  # norms: no decay
    np.testing.assert_allclose(updates["blocks"]["q_proj"], adam - lr * wd * 2.0, rtol=1e-5)


def test_clipping_to_global_norm_one():
    """With b1 = 0 and a huge Adam epsilon the update is linear in the (clipped) gradient, so clipping shows."""
    cfg = config_lib.default_config()
    o = cfg.optim
    o.schedule, o.warmup_steps, o.weight_decay, o.b1, o.b2, o.adam_eps = "constant", 0, 0.0, 0.0, 0.0, 1e6
    g = {"blocks": {"q_proj": jnp.array([3.0, 4.0])}}  # global norm 5
    tx, _ = optim.make_optimizer(cfg)
    clipped, _ = tx.update(g, tx.init(g), g)
    np.testing.assert_allclose(clipped["blocks"]["q_proj"], -o.peak_lr * np.array([0.6, 0.8]) / 1e6, rtol=1e-5)
    o.clip_norm = 0.0  # off
    tx, _ = optim.make_optimizer(cfg)
    plain, _ = tx.update(g, tx.init(g), g)
    np.testing.assert_allclose(plain["blocks"]["q_proj"], -o.peak_lr * np.array([3.0, 4.0]) / 1e6, rtol=1e-5)
