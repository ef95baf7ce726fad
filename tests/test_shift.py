"""model.shift_logits, the token shift of adapting an autoregressive model to diffusion: where each position's
logits come from, the training terms, and the bounds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from llada_jax import attention, diffusion, likelihood, model as model_lib, objectives


def _cfg(objective, shift, block_size=-1, chunk=0):
    cfg = tiny_config()
    cfg.objective = objective
    cfg.model.shift_logits = shift
    cfg.model.loss_chunk = chunk
    cfg.model.attention = "xla"
    cfg.diffusion.block_size = block_size
    return cfg


def test_shift_takes_the_previous_position_and_the_clean_copy_at_block_starts():
    l, size = 6, 3
    x = jnp.arange(2 * 2 * l, dtype=jnp.float32).reshape(2, 2 * l)  # rows of [x_t ; x_0] ids
    got = np.asarray(model_lib.shift(x, attention.Blocks(size, pair=True)))
    want = np.array(x)
    for r in range(2):
        for i in range(2 * l):
            if i == 0:
                continue
            clean = i >= l
            j = i - l if clean else i
            if clean and j == 0:
                want[r, i] = x[r, l - 1]  # no loss there; the rule's by-product
            elif not clean and j % size == 0:
                want[r, i] = x[r, l + j - 1]  # a block start of x_t: the clean copy's previous position
            else:
                want[r, i] = x[r, i - 1]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(model_lib.shift(x)), np.concatenate([x[:, :1], x[:, :-1]], 1))


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [0, 8])
def test_block_size_one_with_the_shift_is_exactly_the_autoregressive_loss(chunk):
    """Every position but the first masked (p = 1): block diffusion with blocks of one token and the shift predicts
    token i from the clean tokens before it, which is next-token prediction; same loss and gradients as arm."""
    block, arm = _cfg("block", True, 1, chunk), _cfg("arm", False, chunk=chunk)
    model = model_lib.Model(block.model)
    params = model.init(jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (4, 16), 0, 48)
    batch = {"tokens": tokens}
    pos = jnp.arange(16)[None, :]
    noise = {"lengths": jnp.full((4,), 16, jnp.int32), "masked": jnp.broadcast_to(pos >= 1, (4, 16)),
             "p": jnp.ones((4, 16))}

    def loss(cfg, p):
        return objectives.loss_given_noise(model_lib.Model(cfg.model), p, batch, noise, cfg)[0]

    lb, gb = jax.value_and_grad(lambda p: loss(block, p))(params)
    la, ga = jax.value_and_grad(lambda p: loss(arm, p))(params)
    np.testing.assert_allclose(lb, la, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), gb, ga)
    logits = model_lib.Model(arm.model).apply(params, tokens, causal=True)
    direct = np.mean(np.asarray(diffusion.cross_entropy(logits[:, :-1], tokens[:, 1:])))
    np.testing.assert_allclose(lb, direct, rtol=1e-6)


def test_the_shift_never_masks_position_zero_and_scores_per_predicted_position():
    cfg = _cfg("mdm", True)
    cfg.diffusion.eps = 1.0  # p = 1: everything maskable is masked
    tokens = jax.random.randint(jax.random.key(0), (8, 16), 0, 48)
    noise = objectives.draw_noise(jax.random.key(3), {"tokens": tokens}, cfg)
    assert not np.any(np.asarray(noise["masked"])[:, 0])
    assert np.all(np.asarray(noise["masked"])[:, 1:][np.arange(16)[1:] < np.asarray(noise["lengths"])[:, None]])
    weights = diffusion.mdm_terms({"tokens": tokens}, noise, cfg)[2]
    np.testing.assert_allclose(np.sum(weights), 1.0, rtol=1e-6)  # an average over the predicted positions


@pytest.mark.slow
def test_the_bound_of_a_shifted_model_scores_all_but_the_first_token():
    """With eps = 1 every scored token is masked with p = 1: the bound is the mean CE of the shifted logits of
    the all-[MASK] input over positions 1.., computed directly."""
    cfg = _cfg("mdm", True)
    model = model_lib.Model(cfg.model)
    params = model.init(jax.random.key(4))
    tokens = np.asarray(jax.random.randint(jax.random.key(5), (3, 16), 3, 48))
    lengths = np.array([16, 9, 12])
    got = likelihood.elbo_perplexity(model, params, tokens, jax.random.key(6), 2, lengths=lengths, eps=1.0)
    assert got["tokens"] == int((lengths - 1).sum())
    total = 0.0
    for row, n in zip(tokens, lengths):
        x = np.where(np.arange(16) >= 1, 2, row)[None, :n]
        ce = diffusion.cross_entropy(model.apply(params, jnp.asarray(x)), jnp.asarray(row[None, :n]))
        total += float(np.sum(np.asarray(ce)[0, 1:]))
    np.testing.assert_allclose(got["nll"], total / (lengths - 1).sum(), rtol=1e-5)


def test_the_shift_is_for_diffusion_objectives():
    with pytest.raises(objectives.ObjectiveError, match="model.shift_logits"):
        objectives.get(_cfg("arm", True))


def test_a_likelihood_without_a_prompt_is_refused_under_the_shift():
    """Nothing predicts a sequence's first token: an empty prompt has no estimate (without the shift it has)."""
    for shift in (True, False):
        model = model_lib.Model(_cfg("mdm", shift).model)
        params = model.init(jax.random.key(7))
        run = lambda: likelihood.log_likelihood(model, params, [], [5, 6], jax.random.key(8), 2, n_samples=2,
                                                batch_size=2)
        if shift:
            with pytest.raises(likelihood.EvalError, match="prompt is empty"):
                run()
        else:
            assert run()[0] < 0
