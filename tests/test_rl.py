"""RL for diffusion LMs (llada_jax/rl.py, docs/rl.md): d1's mean-field log-probabilities and GRPO loss, VRPO's ELBO
(unbiased by exact enumeration; stratified timesteps; antithetic sampling) and DPO loss, against references computed
another way; sharded over 8 simulated devices = one device."""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from conftest import tiny_config

from llada_jax import model as model_lib, rl, sharding

MASK = 2  # tokens.mask_id of the tiny config; real tokens are drawn from [6, VOCAB)
VOCAB = 32

mean_field = jax.jit(rl.mean_field_logprobs, static_argnames=("model", "mask_id"))
elbo_draws = jax.jit(rl.elbo_draws, static_argnames=("model", "mask_id", "n", "eps", "stratified"))
elbo_logprob = jax.jit(rl.elbo_logprob, static_argnames=("model", "mask_id", "n", "eps", "stratified"))
apply = jax.jit(lambda model, params, x, key_mask: model.apply(params, x, key_mask), static_argnums=0)


def _cfg(shift=False):
    cfg = tiny_config()
    cfg.model.vocab_size = VOCAB
    cfg.model.attention = "xla"
    cfg.model.shift_logits = shift
    return cfg


def _init(m, seed=0):
    """Params of the table's shapes drawn with numpy (std 1 / sqrt(fan_in), norms 1): the model's init scale
    without compiling its init."""
    rng = np.random.default_rng(seed)
    make = lambda p: jnp.asarray(np.ones(p.shape, np.float32) if p.init == "ones" else
                                 (rng.standard_normal(p.shape) / math.sqrt(p.fan_in)).astype(np.float32))
    return jax.tree.map(make, model_lib.param_shapes(m), is_leaf=model_lib.is_param)


@pytest.fixture(scope="module")
def tiny():
    """(model, shifted model, params): one set of params serves both (the shift only moves outputs)."""
    cfg = _cfg()
    return model_lib.Model(cfg.model), model_lib.Model(_cfg(shift=True).model), _init(cfg.model)


def _batch():
    """Three rows of the sampler's layout: prompts of 4, 2 and 3 tokens left-padded to 4, completions of 5, 3 and 1
    tokens right-padded to 5 (pad ids are arbitrary: the key mask hides them)."""
    rng = np.random.default_rng(0)
    prompt_mask = np.arange(4)[None] >= np.array([0, 2, 1])[:, None]
    completion_mask = np.arange(5)[None] < np.array([5, 3, 1])[:, None]
    prompt = np.where(prompt_mask, rng.integers(6, VOCAB, (3, 4)), 0).astype(np.int32)
    completion = np.where(completion_mask, rng.integers(6, VOCAB, (3, 5)), 0).astype(np.int32)
    return prompt, prompt_mask, completion, completion_mask


def _completion_logprobs64(model, params, x, key_mask, completion, shift):
    """[B, L] float64 log p(completion) at the last L positions of x from model.apply (a model without the shift);
    shift: position i's logits taken from position i - 1, as model.shift_logits does."""
    l = completion.shape[1]
    lp = reference.log_softmax(apply(model, params, jnp.asarray(x), jnp.asarray(key_mask)))
    pos = x.shape[1] - l + np.arange(l) - int(shift)
    return np.take_along_axis(lp[:, pos], completion[..., None], -1)[..., 0]


# -- d1: mean-field log-probabilities ------------------------------------------------------------------------------

def test_prompt_noise_masks_real_prompt_tokens_with_probability_p():
    prompt_mask = np.arange(64)[None] >= np.arange(512)[:, None] % 64
    noise = np.asarray(rl.prompt_noise(jax.random.key(0), prompt_mask, 0.15))
    assert not np.any(noise & ~prompt_mask)
    n = prompt_mask.sum()
    assert abs(noise.sum() / n - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    np.testing.assert_array_equal(noise, np.asarray(rl.prompt_noise(jax.random.key(0), prompt_mask, 0.15)))


@pytest.mark.parametrize("shift", [False, True], ids=["plain", "shift"])
@pytest.mark.parametrize("tail", [False, True], ids=["tail-hidden", "tail-visible"])
def test_mean_field_logprobs_equal_a_direct_float64_computation(tiny, shift, tail):
    """The masked input built by hand (prompt noise from rl.prompt_noise with the same key, every completion position
    [MASK]), the plain model's logits, log softmax in float64, gathered; under the shift from the position before.
    tail: the completion's padding attends as [MASK] keys (d1's EOS tail), still unscored."""
    model, shifted, params = tiny
    prompt, prompt_mask, completion, completion_mask = _batch()
    key, p_mask = jax.random.key(3), 0.4
    noise = np.asarray(rl.prompt_noise(key, prompt_mask, p_mask))
    assert noise.any() and not np.all(noise[prompt_mask])  # the case exercises the prompt mask
    keys = np.ones_like(completion_mask) if tail else completion_mask
    got = mean_field(shifted if shift else model, params, prompt, prompt_mask, completion, completion_mask, key,
                     mask_id=MASK, p_mask=p_mask, completion_key_mask=keys)  # the default (None): next test
    x = np.concatenate([np.where(noise, MASK, prompt), np.full_like(completion, MASK)], 1)
    key_mask = np.concatenate([prompt_mask, keys], 1)
    want = np.where(completion_mask, _completion_logprobs64(model, params, x, key_mask, completion, shift), 0.0)
    assert got.shape == (3, 5) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_mean_field_ignores_padding_and_reuses_the_mask_of_a_key(tiny):
    """Changing the pad ids changes nothing (padding is hidden); the same key gives the same prompt mask whatever
    the params (d1's shared mask of the old, reference and current policies): with the prompt mask off the result
    differs, with the same key it equals the direct computation above for other params too."""
    model, _, params = tiny
    prompt, prompt_mask, completion, completion_mask = _batch()
    run = lambda p, pr, c, key=jax.random.key(5), p_mask=0.4: np.asarray(
        mean_field(model, p, pr, prompt_mask, c, completion_mask, key, mask_id=MASK, p_mask=p_mask))
    base = run(params, prompt, completion)
    np.testing.assert_array_equal(run(params, np.where(prompt_mask, prompt, 7), np.where(completion_mask, completion,
                                                                                          9)), base)
    assert np.abs(run(params, prompt, completion, p_mask=0.0) - base).max() > 1e-3
    other = jax.tree.map(lambda w: w * 1.1, params)
    noise = np.asarray(rl.prompt_noise(jax.random.key(5), prompt_mask, 0.4))
    x = np.concatenate([np.where(noise, MASK, prompt), np.full_like(completion, MASK)], 1)
    want = _completion_logprobs64(model, other, x, np.concatenate([prompt_mask, completion_mask], 1), completion, False)
    np.testing.assert_allclose(run(other, prompt, completion), np.where(completion_mask, want, 0), rtol=1e-5,
                               atol=1e-5)


def test_an_empty_prompt_is_refused_only_under_the_shift(tiny):
    _, shifted, params = tiny
    empty, completion, mask = np.zeros((1, 0), np.int32), np.full((1, 2), 7, np.int32), np.ones((1, 2), bool)
    for fn in (rl.mean_field_logprobs, rl.elbo_draws):
        with pytest.raises(rl.RLError, match="prompt is empty"):
            fn(shifted, params, empty, empty.astype(bool), completion, mask, jax.random.key(0), mask_id=MASK)
    # without the shift (here a model that is an apply_fn) an unconditional completion is fine
    got = rl.mean_field_logprobs(neighbour_model, jnp.float32(4.0), empty, empty.astype(bool), completion, mask,
                                 jax.random.key(0), mask_id=MASK)
    np.testing.assert_allclose(np.asarray(got), -np.log(VOCAB), rtol=1e-6)  # both neighbours masked: uniform


# -- VRPO: the ELBO ----------------------------------------------------------------------------------------------

def test_elbo_noise_stratifies_t_and_masks_only_the_completion():
    completion_mask = np.arange(16)[None] < (np.arange(256) % 16 + 1)[:, None]
    noise = jax.jit(rl.elbo_noise, static_argnums=(2, 3, 4))
    masked, p = noise(jax.random.key(0), completion_mask, 8, 1e-3, True)
    masked, p = np.asarray(masked), np.asarray(p, np.float64)
    t = (p - 1e-3) / (1 - 1e-3)
    np.testing.assert_array_equal(np.floor(t * 8 + 1e-6).astype(int), np.broadcast_to(np.arange(8), p.shape))
    assert not np.any(masked & ~completion_mask[:, None, :])
    want = (p[..., None] * completion_mask[:, None, :]).sum()  # expected number of masked tokens
    assert abs(masked.sum() - want) < 4 * math.sqrt(want)
    _, p_iid = noise(jax.random.key(0), completion_mask, 8, 1e-3, False)
    assert np.any(np.diff(np.asarray(p_iid), axis=1) < 0)  # not sorted: independent timesteps


@pytest.mark.parametrize("shift", [False, True], ids=["plain", "shift"])
def test_elbo_draws_equal_a_direct_float64_computation(tiny, shift):
    """Each draw rebuilt by hand from rl.elbo_noise: the clean prompt, the completion with the drawn tokens [MASK],
    sum of the masked tokens' float64 log-probabilities over p."""
    model, shifted, params = tiny
    prompt, prompt_mask, completion, completion_mask = _batch()
    key, n = jax.random.key(4), 4
    got = np.asarray(elbo_draws(shifted if shift else model, params, prompt, prompt_mask, completion, completion_mask,
                                key, mask_id=MASK, n=n))
    masked, p = (np.asarray(a) for a in rl.elbo_noise(key, completion_mask, n))
    want = np.zeros((3, n))
    for k in range(n):
        x = np.concatenate([prompt, np.where(masked[:, k], MASK, completion)], 1)
        key_mask = np.concatenate([prompt_mask, completion_mask], 1)
        lp = _completion_logprobs64(model, params, x, key_mask, completion, shift)
        want[:, k] = np.where(masked[:, k], lp, 0).sum(-1) / p[:, k].astype(np.float64)
    assert masked.any(-1).sum() >= 6  # most draws mask something
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _power_integral(j, a, b):
    return math.log(b / a) if j == -1 else (b ** (j + 1) - a ** (j + 1)) / (j + 1)


class Exact:
    """The exact distribution of one ELBO draw, by enumeration: every subset M of the L completion tokens with S_M,
    the sum of log p(y_i | x, y with M masked) over i in M (one forward pass each). Given p the draw is S_M / p with
    probability p^|M| (1 - p)^(L - |M|); moments given p uniform on [a, b] are integrals of powers of p, done in
    closed form ((1 - p)^r expanded binomially)."""

    def __init__(self, apply_fn, params, prompt, completion, extra_pad=1):
        """prompt, completion: 1-D real tokens; laid out with `extra_pad` pad positions on each side (left of the
        prompt, right of the completion), hidden by the key mask."""
        self.l = l = len(completion)
        self.subsets = np.array(list(itertools.product([False, True], repeat=l)))
        pad = np.zeros(extra_pad, np.int32)
        seq = np.concatenate([pad, prompt, completion, pad])
        key_mask = np.arange(seq.size) >= extra_pad
        key_mask[seq.size - extra_pad:] = False
        pos = extra_pad + len(prompt) + np.arange(l)
        x = np.tile(seq, (len(self.subsets), 1))
        x[:, pos] = np.where(self.subsets, MASK, completion)
        lp = reference.log_softmax(apply_fn(params, jnp.asarray(x), jnp.asarray(np.tile(key_mask, (len(x), 1)))))
        lp = lp[:, pos][:, np.arange(l), completion]  # [subsets, L]: log p(y_i | x, y with the subset masked)
        self.s = np.where(self.subsets, lp, 0).sum(-1)
        self.m = self.subsets.sum(-1)

    def moment(self, k, a, b):
        """E[draw^k] with p uniform on [a, b]."""
        total = 0.0
        for s, m in zip(self.s, self.m):
            if m == 0:
                continue  # the draw is 0
            r = self.l - m
            total += s ** k * sum(math.comb(r, i) * (-1) ** i * _power_integral(m - k + i, a, b) for i in range(r + 1))
        return total / (b - a)

    def mean(self, eps):
        return self.moment(1, eps, 1.0)

    def variance(self, n, eps, stratified):
        """Variance of the mean of n draws: independent timesteps, or one per stratum of t (p's strata)."""
        if not stratified:
            return (self.moment(2, eps, 1.0) - self.mean(eps) ** 2) / n
        edges = eps + (1 - eps) * np.arange(n + 1) / n
        return sum(self.moment(2, a, b) - self.moment(1, a, b) ** 2 for a, b in zip(edges[:-1], edges[1:])) / n ** 2


def _mc(model, params, prompt, completion, rows, key, n, eps, stratified, extra_pad=1):
    """[rows] independent ELBO estimates of one example (each row draws its own noise), in float64."""
    pad = np.zeros(extra_pad, np.int32)
    p, c = np.concatenate([pad, prompt]), np.concatenate([completion, pad])
    tile = lambda a: np.tile(a, (rows, 1))
    out = elbo_logprob(model, params, tile(p), tile(np.arange(p.size) >= extra_pad), tile(c),
                       tile(np.arange(c.size) < completion.size), key, mask_id=MASK, n=n, eps=eps,
                       stratified=stratified)
    return np.asarray(out, np.float64)


def _var_and_se(x):
    """Sample variance and its standard error (from the sample's fourth central moment)."""
    d = x - x.mean()
    var = np.mean(d ** 2)
    return var, math.sqrt(max(np.mean(d ** 4) - var ** 2, 0.0) / x.size)


def neighbour_model(params, tokens, key_mask):
    """A context-dependent denoiser (an apply_fn): each position's logits are c times the one-hot of each visible,
    unmasked neighbour (left and right), c = params. A token is likely when a neighbour shows it, uniform when both
    neighbours are masked, so E[draw | t] falls from about 0 (t -> 0) to about -L log V (t -> 1): the spread across
    timesteps that stratification removes. (An untrained Transformer barely depends on its context: see
    test_elbo_is_unbiased_for_the_transformer.)"""
    seen = lambda t, ok: jax.nn.one_hot(t, VOCAB) * (ok & (t != MASK))[..., None]
    left = seen(jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1], jnp.pad(key_mask, ((0, 0), (1, 0)))[:, :-1])
    right = seen(jnp.pad(tokens, ((0, 0), (0, 1)))[:, 1:], jnp.pad(key_mask, ((0, 0), (0, 1)))[:, 1:])
    return params * (left + right)


@pytest.mark.parametrize("stratified,eps", [(True, 1e-3), (False, 0.2)], ids=["stratified", "iid-eps0.2"])
def test_elbo_is_unbiased_for_the_transformer(tiny, stratified, eps):
    """The mean of 4096 estimates (n = 8 draws each) is within 4 standard errors of the exact expectation, and
    their variance within 4 standard errors of the exact variance (eps = 0.2 checks the floor p = (1 - eps) t + eps:
    p ~ U[eps, 1], weight 1 / p). (This model's E[draw | t] hardly moves with t:
    the exact variances with and without stratification differ by 1e-5 relative; docs/rl.md.)"""
    model, _, params = tiny
    prompt, completion, n = np.array([9, 14, 21], np.int32), np.array([11, 6, 27], np.int32), 8
    exact = Exact(functools.partial(apply, model), params, prompt, completion)
    x = _mc(model, params, prompt, completion, 4096, jax.random.key(11), n, eps, stratified)
    want_var = exact.variance(n, eps, stratified)
    assert abs(x.mean() - exact.mean(eps)) < 4 * math.sqrt(want_var / x.size)
    var, se = _var_and_se(x)
    assert abs(var - want_var) < 4 * se


def test_stratified_timesteps_reduce_the_variance():
    """On a context-dependent denoiser (neighbour_model, L = 6 copies of one token after a prompt ending in it): both
    estimators are unbiased (4 standard errors of the exact mean), their variances match the exact ones, and the
    stratified one's is lower by more than 4 standard errors of the measured ratio."""
    prompt, completion, eps, n, rows = np.array([9, 14, 21], np.int32), np.full(6, 21, np.int32), 1e-3, 8, 8192
    params = jnp.float32(4.0)
    exact = Exact(neighbour_model, params, prompt, completion)
    stats = {}
    for stratified, seed in ((True, 21), (False, 22)):
        x = _mc(neighbour_model, params, prompt, completion, rows, jax.random.key(seed), n, eps, stratified)
        want_var = exact.variance(n, eps, stratified)
        assert abs(x.mean() - exact.mean(eps)) < 4 * math.sqrt(want_var / rows)
        var, se = _var_and_se(x)
        assert abs(var - want_var) < 4 * se
        stats[stratified] = var, se
    (vs, ss), (vi, si) = stats[True], stats[False]
    ratio = vs / vi
    assert ratio + 4 * ratio * math.hypot(ss / vs, si / vi) < 1.0
    assert exact.variance(n, eps, True) / exact.variance(n, eps, False) < 0.7  # 0.648: the case is a real test


def _perturbed(params, scale, seed=9):
    """Every weight plus scale times its tensor's std times standard normal noise."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda w: jnp.asarray(w + scale * np.std(w) * rng.standard_normal(w.shape), jnp.float32),
                        params)


def test_antithetic_sampling_reduces_the_variance_of_the_score_difference(tiny):
    """B_pi - B_ref with pi and ref close (every weight perturbed by 2% of its tensor's std): the same key for both
    (VRPO's antithetic rule) against independent keys, 4096 rows, n = 8. Both are unbiased for the same difference
    (means within 4 standard errors); the shared keys' variance is below 1% of the independent keys'."""
    model, _, params = tiny
    ref = _perturbed(params, 0.02)
    prompt, completion, rows, n = np.array([9, 14, 21], np.int32), np.array([11, 6, 27], np.int32), 4096, 8
    run = lambda p, seed: _mc(model, p, prompt, completion, rows, jax.random.key(seed), n, 1e-3, True)
    pi = run(params, 31)
    shared, independent = pi - run(ref, 31), pi - run(ref, 32)
    v_shared, v_indep = shared.var(), independent.var()
    assert abs(shared.mean() - independent.mean()) < 4 * math.sqrt((v_shared + v_indep) / rows)
    assert v_shared < 0.01 * v_indep


# -- losses ------------------------------------------------------------------------------------------------------

def test_grpo_advantages_of_known_rewards():
    rewards = jnp.array([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 0.0, 0.0, 6.0])
    got = np.asarray(rl.grpo_advantages(rewards, 3))
    # group 1: mean 2, sample std 1; group 2: all equal -> 0; group 3: mean 2, sample std sqrt((4 + 4 + 16) / 2)
    s3 = math.sqrt(12.0) + 1e-4
    want = [-1 / 1.0001, 0, 1 / 1.0001, 0, 0, 0, -2 / s3, -2 / s3, 4 / s3]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(rl.grpo_advantages(rewards, 3, scale=False)), [-1, 0, 1, 0, 0, 0, -2, -2, 4])
    with pytest.raises(rl.RLError, match="at least 2"):
        rl.grpo_advantages(rewards, 1)


def _grads(loss_fn, logp_new):
    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logp_new, jnp.float32))
    return float(loss), {k: float(v) for k, v in metrics.items()}, np.asarray(grad)


def test_grpo_loss_at_the_first_inner_step():
    """logp_new == logp_old: r = 1, the policy term is -mean(A) (sequence) or the token-weighted mean (token), plus
    beta times the mean k3; d loss / d logp_new = w (-A + beta (1 - exp(ref - new))), w the token's weight."""
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    new = np.array([[-1.0, -2.0, -0.5, 0.0], [-3.0, -1.5, 0.0, 0.0]])
    ref = new + np.array([[0.1, -0.2, 0.3, 0.0], [-0.4, 0.5, 0.0, 0.0]])
    adv, beta = np.array([1.0, -0.5]), 0.04
    d = ref - new
    k3 = np.exp(d) - d - 1
    weights = {"sequence": mask / mask.sum(1, keepdims=True) / 2, "token": mask / mask.sum()}
    policy = {"sequence": -(1.0 - 0.5) / 2, "token": -(3 * 1.0 + 2 * -0.5) / 5}
    for normalize, w in weights.items():
        loss, metrics, grad = _grads(lambda x: rl.grpo_loss(x, new, ref, adv, mask, 0.5, beta, normalize), new)
        np.testing.assert_allclose(loss, policy[normalize] + beta * np.sum(w * k3), rtol=1e-6)
        np.testing.assert_allclose(grad, w * (-adv[:, None] + beta * (1 - np.exp(d))), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose([metrics["ratio"], metrics["clip_fraction"], metrics["kl"]],
                                   [1.0, 0.0, k3[mask].mean()], rtol=1e-5)
    loss, _, _ = _grads(lambda x: rl.grpo_loss(x, new, None, adv, mask, 0.5, 0.0), new)
    np.testing.assert_allclose(loss, -0.25, rtol=1e-6)


def test_grpo_loss_when_clipping_is_active():
    """beta = 0, eps = 0.5, token average. Completion 1 (A = 1) has r = 2, 0.25, 1.2; completion 2 (A = -2) has
    r = 2, 0.25. Per token -min(r A, clip(r) A): -1.5 (clipped), -0.25, -1.2, 4, 1 (clipped): loss 2.05 / 5. The
    gradient -r A / 5 except 0 at the two clipped tokens; 2 of 5 tokens clipped; mean ratio 5.7 / 5."""
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    old = np.array([[-1.0, -2.0, -0.5], [-3.0, -1.5, 0.0]])
    r = np.array([[2.0, 0.25, 1.2], [2.0, 0.25, 1.0]])
    new = old + np.log(r)
    adv = np.array([1.0, -2.0])
    loss, metrics, grad = _grads(lambda x: rl.grpo_loss(x, old, None, adv, mask, 0.5, 0.0, "token"), new)
    np.testing.assert_allclose(loss, 2.05 / 5, rtol=1e-6)
    np.testing.assert_allclose(grad, np.array([[0.0, -0.25, -1.2], [4.0, 0.0, 0.0]]) / 5, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([metrics["clip_fraction"], metrics["ratio"]], [2 / 5, 5.7 / 5], rtol=1e-6)


def test_grpo_loss_and_gradient_against_float64():
    rng = np.random.default_rng(0)
    mask = np.arange(6)[None] < np.array([6, 4, 1, 5])[:, None]
    old = -rng.uniform(0.1, 4, (4, 6))
    new = old + rng.normal(0, 0.5, (4, 6))
    ref = old + rng.normal(0, 0.3, (4, 6))
    adv, eps, beta = rng.normal(size=4), 0.3, 0.05
    r = np.exp(new - old)
    unclipped, clipped = r * adv[:, None], np.clip(r, 1 - eps, 1 + eps) * adv[:, None]
    d = ref - new
    per_token = -np.minimum(unclipped, clipped) + beta * (np.exp(d) - d - 1)
    active = unclipped <= clipped  # the unclipped branch is the min: its gradient -r A flows
    grad_token = np.where(active, -r * adv[:, None], 0.0) + beta * (1 - np.exp(d))
    for normalize, w in (("sequence", mask / mask.sum(1, keepdims=True) / 4), ("token", mask / mask.sum())):
        loss, metrics, grad = _grads(lambda x: rl.grpo_loss(x, old, ref, adv, mask, eps, beta, normalize), new)
        np.testing.assert_allclose(loss, np.sum(w * per_token), rtol=1e-5)
        np.testing.assert_allclose(grad, w * grad_token, rtol=1e-4, atol=1e-7)
    assert 0 < metrics["clip_fraction"] < 1
    np.testing.assert_allclose(metrics["clip_fraction"], (~active & (clipped < unclipped))[mask].mean(), rtol=1e-6)


def test_dpo_loss_against_float64():
    rng = np.random.default_rng(1)
    pi_w, ref_w, pi_l, ref_l = (rng.normal(-20, 5, 16) for _ in range(4))
    beta = 0.1
    margin = beta * ((pi_w - ref_w) - (pi_l - ref_l))
    (loss, metrics), grads = jax.value_and_grad(rl.dpo_loss, argnums=(0, 1), has_aux=True)(
        *(jnp.asarray(a, jnp.float32) for a in (pi_w, ref_w, pi_l, ref_l)), beta=beta)
    np.testing.assert_allclose(float(loss), np.mean(np.log1p(np.exp(-margin))), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["reward_margin"]), margin.mean(), rtol=1e-5, atol=1e-6)
    assert float(metrics["accuracy"]) == np.mean(margin > 0)
    np.testing.assert_allclose(float(metrics["chosen_reward"]), beta * np.mean(pi_w - ref_w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads[0]), -beta / (1 + np.exp(margin)) / 16, rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(grads[1]), 0.0)  # the reference is a constant


def test_vrpo_loss_is_dpo_of_antithetic_elbos_and_trains_the_policy_only():
    """vrpo_loss = dpo_loss of elbo_logprob with key split in (k_w, k_l): k_w for the chosen completions of the
    policy and the reference, k_l for the rejected (a context-dependent apply_fn as the model: the composition is
    model-agnostic); the reference gets no gradient, the policy does."""
    prompt, prompt_mask, completion, completion_mask = _batch()
    rejected, rejected_mask = completion[::-1], completion_mask[::-1]
    key = jax.random.key(8)
    fn = jax.jit(jax.value_and_grad(lambda p, q, k: rl.vrpo_loss(
        neighbour_model, p, q, prompt, prompt_mask, completion, completion_mask, rejected, rejected_mask, k,
        mask_id=MASK, n=4, beta=0.5), argnums=(0, 1), has_aux=True))
    pi, ref = jnp.float32(4.0), jnp.float32(3.5)
    (loss, metrics), (g_pi, g_ref) = fn(pi, ref, key)
    k_w, k_l = jax.random.split(key)
    score = lambda p, y, m, k: elbo_logprob(neighbour_model, p, prompt, prompt_mask, y, m, k, mask_id=MASK, n=4)
    want = rl.dpo_loss(score(pi, completion, completion_mask, k_w), score(ref, completion, completion_mask, k_w),
                       score(pi, rejected, rejected_mask, k_l), score(ref, rejected, rejected_mask, k_l), 0.5)
    np.testing.assert_allclose(float(loss), float(want[0]), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["reward_margin"]), float(want[1]["reward_margin"]), rtol=1e-5)
    draws = elbo_draws(neighbour_model, pi, prompt, prompt_mask, completion, completion_mask, k_w, mask_id=MASK, n=4)
    np.testing.assert_allclose(np.asarray(score(pi, completion, completion_mask, k_w)), np.asarray(draws).mean(1),
                               rtol=1e-6)  # elbo_logprob is the mean of the draws
    other = fn(pi, ref, jax.random.key(9))[0][0]
    assert abs(float(other) - float(loss)) > 1e-4  # the key matters (the check above is not vacuous)
    assert float(g_ref) == 0.0 and np.isfinite(float(g_pi)) and float(g_pi) != 0.0


def test_grpo_gradient_through_the_model_is_the_policy_gradient(tiny):
    """At the first inner step with beta = 0 the loss's gradient in the params is that of
    -mean_b A_b mean_i logp_bi (r = 1 and d r = d logp): jit and grad through mean_field_logprobs."""
    model, _, params = tiny
    prompt, prompt_mask, completion, completion_mask = _batch()
    adv, key = jnp.array([1.0, -0.5, 0.25]), jax.random.key(2)
    logp = lambda p: rl.mean_field_logprobs(model, p, prompt, prompt_mask, completion, completion_mask, key,
                                            mask_id=MASK)
    n = completion_mask.sum(1)
    grpo, pg = jax.jit(lambda p: (
        jax.grad(lambda q: rl.grpo_loss(logp(q), logp(p), None, adv, completion_mask, beta=0.0)[0])(p),
        jax.grad(lambda q: -jnp.mean(adv * jnp.sum(logp(q), 1) / n))(p)))(params)
    for a, b in zip(jax.tree.leaves(grpo), jax.tree.leaves(pg)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * float(jnp.abs(b).max()))


# -- sharding ----------------------------------------------------------------------------------------------------

def test_sharded_params_give_the_single_device_numbers(tiny):
    """Params sharded over an 8-device mesh (fsdp 4 x tensor 2, inference.load_run's rules) give the numbers of the
    unsharded model on one device, 1e-5."""
    model, _, params = tiny
    cfg = _cfg()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 4, 2
    sharder = sharding.Sharder(sharding.make_mesh(cfg.mesh, jax.devices()), cfg.sharding.inference_rules)
    sharded_model = model_lib.Model(cfg.model, sharder=sharder)
    sharded = jax.device_put(params, sharder.tree(sharded_model.param_axes()))
    q = sharded["blocks"]["q_proj"]
    assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape == (2, 8, 2, 8)
    batch, key = _batch(), jax.random.key(6)
    for fn, kw in ((mean_field, {}), (elbo_draws, {"n": 4})):
        got = fn(sharded_model, sharded, *batch, key, mask_id=MASK, **kw)
        want = fn(model, params, *batch, key, mask_id=MASK, **kw)  # as every other test: on one device
        assert want.devices() == {jax.devices()[0]}
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
