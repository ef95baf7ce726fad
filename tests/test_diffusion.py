"""Objectives against float64 numpy: forward process, pre-training loss, SFT loss, random length, ARM loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from llada_jax import diffusion, model as model_lib, objectives


def test_forward_process_masks_with_probability_p():
    tokens = jnp.full((64, 4096), 7, jnp.int32)
    x_t, masked, p = diffusion.forward_process(jax.random.key(0), tokens, mask_id=2, eps=1e-3)
    np.testing.assert_array_equal(np.asarray(x_t == 2), np.asarray(masked))
    assert float(p.min()) >= 1e-3 and float(p.max()) < 1.0
    frac = np.asarray(masked).mean(1)
    np.testing.assert_allclose(frac, np.asarray(p), atol=5 * np.sqrt(0.25 / 4096))  # per row binomial


def test_forward_process_never_masks_outside_maskable():
    tokens = jnp.ones((512, 32), jnp.int32)
    maskable = jnp.arange(32)[None] >= jnp.arange(512)[:, None] % 32
    _, masked, _ = diffusion.forward_process(jax.random.key(1), tokens, 2, maskable=maskable)
    assert not np.any(np.asarray(masked) & ~np.asarray(maskable))


def _fixed(seed, b=3, l=8, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, l, v)).astype(np.float32) * 3
    tokens = rng.integers(0, v, (b, l)).astype(np.int32)
    masked = rng.random((b, l)) < 0.5
    p = rng.uniform(0.001, 1.0, b).astype(np.float32)
    return logits, tokens, masked, p


def test_pretrain_loss_equals_numpy():
    logits, tokens, masked, p = _fixed(0)
    valid = np.ones_like(masked)
    got = diffusion.pretrain_loss(logits, tokens, masked, p, valid)
    ce = reference.ce(logits, tokens)
    want = np.sum(np.where(masked, ce / p[:, None].astype(np.float64), 0)) / tokens.size  # / (B * L)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_sft_loss_equals_numpy_and_hand_worked_case():
    logits, tokens, masked, p = _fixed(1)
    prompt_len = np.array([2, 5, 0])
    answer = np.arange(8)[None] >= prompt_len[:, None]
    masked = masked & answer
    got = diffusion.sft_loss(logits, tokens, masked, p, answer)
    ce = reference.ce(logits, tokens)
    per_example = [np.sum(ce[i][masked[i]]) / p[i] / answer[i].sum() for i in range(3)]
    np.testing.assert_allclose(float(got), np.mean(per_example), rtol=1e-6)
    # by hand: uniform logits over V=4 -> CE = log 4 everywhere. Example 0: answer length 3, 2 masked, p = 0.5
    # -> (2 log 4 / 0.5) / 3; example 1: answer length 2, 1 masked, p = 0.25 -> (log 4 / 0.25) / 2.
    logits = np.zeros((2, 4, 4), np.float32)
    tokens = np.zeros((2, 4), np.int32)
    answer = np.array([[0, 1, 1, 1], [0, 0, 1, 1]], bool)
    masked = np.array([[0, 1, 0, 1], [0, 0, 1, 0]], bool)
    got = diffusion.sft_loss(logits, tokens, masked, np.array([0.5, 0.25], np.float32), answer)
    want = ((2 * np.log(4) / 0.5) / 3 + (np.log(4) / 0.25) / 2) / 2
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_sft_prompt_is_never_masked(tiny_cfg):
    tiny_cfg.data.random_length_prob = 0.0
    b, l = 16, 16
    prompt_lengths = jnp.arange(b) % l
    batch = {"tokens": jnp.ones((b, l), jnp.int32), "prompt_lengths": prompt_lengths}
    in_prompt = np.arange(l)[None] < np.asarray(prompt_lengths)[:, None]
    seen = np.zeros((b, l), bool)
    for i in range(200):
        masked = np.asarray(objectives.draw_noise(jax.random.key(i), batch, tiny_cfg)["masked"])
        assert not np.any(masked & in_prompt)
        seen |= masked
    np.testing.assert_array_equal(seen, ~in_prompt)  # every answer position gets masked at some point


def test_random_lengths_fraction_and_range():
    n, l = 400_000, 64
    lengths = np.asarray(diffusion.random_lengths(jax.random.key(0), n, l, 0.01))
    cut = lengths < l
    # a random length equal to l (prob 1/l) is indistinguishable from no cut
    expected = 0.01 * (1 - 1 / l)
    assert abs(cut.mean() - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
    assert lengths.min() >= 1 and lengths.max() == l
    counts = np.bincount(lengths[cut], minlength=l)[1:l]
    assert counts.min() > 0.5 * counts.mean()  # roughly uniform over {1..l-1}


def _loss_fn(cfg, params, model):
    return jax.jit(lambda p, batch, noise: objectives.loss_given_noise(model, p, batch, noise, cfg)[0])


@pytest.mark.slow
def test_random_length_is_one_compilation_and_equals_truncation(tiny_cfg):
    tiny_cfg.data.random_length_prob = 0.0
    model = model_lib.Model(tiny_cfg.model)
    params = model.init(jax.random.key(0))
    b, l = 4, 16
    tokens = jnp.asarray(np.random.default_rng(0).integers(6, 48, (b, l)), jnp.int32)
    noise = objectives.draw_noise(jax.random.key(3), {"tokens": tokens}, tiny_cfg)
    loss = _loss_fn(tiny_cfg, params, model)
    for n in (16, 9, 3, 1):
        full = {"tokens": tokens, "lengths": jnp.full((b,), n, jnp.int32)}
        cut_noise = {**noise, "masked": noise["masked"] & (jnp.arange(l) < n)[None]}
        got = loss(params, full, {**cut_noise, "lengths": full["lengths"]})
        trunc = {"tokens": tokens[:, :n]}
        trunc_noise = {"masked": noise["masked"][:, :n], "p": noise["p"], "lengths": jnp.full((b,), n, jnp.int32)}
        want = objectives.loss_given_noise(model, params, trunc, trunc_noise, tiny_cfg)[0]
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    assert loss._cache_size() == 1  # four lengths, one compilation


def test_random_length_normalises_by_real_positions(tiny_cfg):
    """The official cut: loss normalised by the cut length (B * n), not by B * L."""
    logits, tokens, masked, p = _fixed(2)
    valid = np.arange(8)[None] < np.array([[5], [5], [5]])
    got = diffusion.pretrain_loss(logits, tokens, masked, p, valid)
    ce = reference.ce(logits, tokens)
    want = np.sum(np.where(masked & valid, ce / p[:, None].astype(np.float64), 0)) / 15
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_arm_loss_equals_numpy_next_token_ce():
    logits, tokens, _, _ = _fixed(3)
    valid = np.ones(tokens.shape, bool)
    got = diffusion.arm_loss(logits, tokens, valid)
    want = reference.ce(logits[:, :-1], tokens[:, 1:]).mean()
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


@pytest.mark.slow
def test_arm_objective_is_causal(tiny_cfg):
    tiny_cfg.objective = "arm"
    tiny_cfg.data.random_length_prob = 0.0
    model = model_lib.Model(tiny_cfg.model)
    params = model.init(jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(1).integers(6, 48, (2, 16)), jnp.int32)
    noise = objectives.draw_noise(jax.random.key(0), {"tokens": tokens}, tiny_cfg)
    logits = model.apply(params, tokens, causal=True)
    np.testing.assert_allclose(
        float(objectives.loss_given_noise(model, params, {"tokens": tokens}, noise, tiny_cfg)[0]),
        reference.ce(np.asarray(logits)[:, :-1], np.asarray(tokens)[:, 1:]).mean(), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("sft", [False, True])
def test_losses_through_the_model_equal_numpy(tiny_cfg, sft):
    tiny_cfg.data.random_length_prob = 0.0
    model = model_lib.Model(tiny_cfg.model)
    params = model.init(jax.random.key(5))
    rng = np.random.default_rng(5)
    tokens = rng.integers(6, 48, (3, 10)).astype(np.int32)
    masked = rng.random((3, 10)) < 0.4
    prompt = np.array([3, 0, 6])
    if sft:
        masked &= np.arange(10)[None] >= prompt[:, None]
    p = np.array([0.3, 0.9, 0.05], np.float32)
    batch = {"tokens": jnp.asarray(tokens)}
    if sft:
        batch["prompt_lengths"] = jnp.asarray(prompt)
    noise = {"masked": jnp.asarray(masked), "p": jnp.asarray(p), "lengths": jnp.full((3,), 10, jnp.int32)}
    got = objectives.loss_given_noise(model, params, batch, noise, tiny_cfg)[0]
    x_t = np.where(masked, tiny_cfg.tokens.mask_id, tokens)
    ce = reference.ce(reference.forward(jax.device_get(params), x_t, tiny_cfg.model), tokens) / p[:, None]
    ce = np.where(masked, ce, 0.0)
    if sft:
        want = np.mean(ce.sum(1) / (10 - prompt))
    else:
        want = ce.sum() / tokens.size
    np.testing.assert_allclose(float(got), want, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["pretrain", "sft", "arm"])
@pytest.mark.parametrize("mesh", [None, dict(fsdp=4, tensor=2)])
def test_chunked_loss_equals_unchunked_loss_and_gradients(tiny_cfg, one_device, objective, mesh):
    """model.loss_chunk (output head + loss chunk by chunk, weightless chunks skipped, gradients in the forward
    pass) = the plain [B, T, vocab] loss, to 1e-6 (gradients: 2e-6 of each tensor's largest entry; the two programs
    round float32 sums in different orders, worst 1.1e-6 measured on the mesh), on one device and on an fsdp 4 x
    tensor 2 mesh."""
    from llada_jax import train
    from llada_jax.data import synthetic
    cfg = tiny_cfg
    cfg.data.random_length_prob = 0.5
    if objective == "arm":
        cfg.objective = "arm"
    if mesh:
        cfg.mesh.fsdp, cfg.mesh.tensor = mesh["fsdp"], mesh["tensor"]
    rows = synthetic.SyntheticCorpus(cfg.train.seq_len, 0).batch(0, cfg.train.global_batch)
    if objective == "sft":
        rows["prompt_lengths"] = np.arange(cfg.train.global_batch, dtype=np.int32) % 5 + 2
    results = {}
    for chunk in (0, 8, 48):  # off; 8 tokens (many chunks, some skipped); a chunk that needs padding
        cfg.model.loss_chunk = chunk
        setup = train.Setup(cfg, None if mesh else one_device)
        params = setup.init_state()["params"]
        with jax.default_matmul_precision("highest"):
            loss, _, grads = jax.jit(setup.loss_and_grads)(params, setup.put_batch(rows), jax.random.key(3))
        results[chunk] = (float(loss), jax.device_get(grads))
    for chunk in (8, 48):
        np.testing.assert_allclose(results[chunk][0], results[0][0], rtol=1e-6)
        for g, r in zip(jax.tree.leaves(results[chunk][1]), jax.tree.leaves(results[0][1])):
            np.testing.assert_allclose(g, r, atol=2e-6 * np.abs(r).max())


# -- block diffusion (BD3-LM) -----------------------------------------------------------------------------------

def test_block_forward_process_draws_one_t_per_block():
    tokens = jnp.full((64, 4096), 7, jnp.int32)
    x_t, masked, p = diffusion.block_forward_process(jax.random.key(0), tokens, 2, 1e-3, 1024)
    p = np.asarray(p).reshape(64, 4, 1024)
    np.testing.assert_array_equal(p, np.broadcast_to(p[..., :1], p.shape))  # constant within a block
    assert np.std(p[:, :, 0]) > 0.2  # ... and its own across blocks and rows
    frac = np.asarray(masked).reshape(64, 4, 1024).mean(-1)
    np.testing.assert_allclose(frac, p[..., 0], atol=5 * np.sqrt(0.25 / 1024))
    np.testing.assert_array_equal(np.asarray(x_t == 2), np.asarray(masked))


def _block_cfg(cfg, block_size, chunk):
    cfg.objective, cfg.diffusion.block_size, cfg.model.loss_chunk = "block", block_size, chunk
    cfg.data.random_length_prob = 0.0
    return cfg


def _block_reference(params, tokens, masked, p, valid, answer, m, mask_id, block_size, sft):
    """One float64 forward per block (reference.block_ce); CE / p on the masked positions, normalised."""
    ce = reference.block_ce(params, tokens, np.where(masked, mask_id, tokens), valid, m, block_size)
    terms = np.where(masked, ce / p, 0.0)
    if sft:
        return np.mean(terms.sum(1) / answer.sum(1))
    return terms.sum() / valid.sum()


@pytest.mark.slow
@pytest.mark.parametrize("sft", [False, True])
@pytest.mark.parametrize("chunk", [0, 512])
def test_block_loss_equals_one_forward_per_block(tiny_cfg, sft, chunk):
    """The vectorised [x_t ; x_0] loss = a slow float64 reference with one forward per block, to 1e-5; with
    padding (key mask) and, for SFT, a clean prompt and answer-length normalisation."""
    cfg = _block_cfg(tiny_cfg, 4, chunk)
    model = model_lib.Model(cfg.model)
    params = model.init(jax.random.key(7))
    rng = np.random.default_rng(7)
    tokens = rng.integers(6, 48, (3, 16)).astype(np.int32)
    batch = {"tokens": jnp.asarray(tokens), "lengths": jnp.array([16, 11, 6], jnp.int32)}
    if sft:
        batch["prompt_lengths"] = jnp.array([5, 0, 2], jnp.int32)
    noise = objectives.draw_noise(jax.random.key(1), batch, cfg)
    with jax.default_matmul_precision("highest"):
        got = float(objectives.loss_given_noise(model, params, batch, noise, cfg)[0])
    masked, p = np.asarray(noise["masked"]), np.asarray(noise["p"], np.float64)
    valid = np.arange(16)[None] < np.asarray(batch["lengths"])[:, None]
    answer = valid & (np.arange(16)[None] >= np.asarray(batch.get("prompt_lengths", np.zeros(3, int)))[:, None])
    assert masked.any() and not np.any(masked & ~answer)
    want = _block_reference(jax.device_get(params), tokens, masked, p, valid, answer, cfg.model, cfg.tokens.mask_id,
                            4, sft)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_block_loss_ignores_padding_tokens(tiny_cfg):
    """Random lengths / key mask under objective=block: what stands after a row's length changes nothing."""
    cfg = _block_cfg(tiny_cfg, 4, 512)
    cfg.data.random_length_prob = 1.0  # every row gets a random length (the 1% of pre-training)
    model = model_lib.Model(cfg.model)
    params = model.init(jax.random.key(2))
    tokens = jnp.asarray(np.random.default_rng(2).integers(6, 48, (4, 16)), jnp.int32)
    noise = objectives.draw_noise(jax.random.key(4), {"tokens": tokens}, cfg)
    lengths = np.asarray(noise["lengths"])
    assert lengths.min() < 16  # some rows cut
    other = jnp.where(jnp.arange(16)[None] < noise["lengths"][:, None], tokens, 9)
    loss = lambda t: float(objectives.loss_given_noise(model, params, {"tokens": t}, noise, cfg)[0])
    np.testing.assert_allclose(loss(other), loss(tokens), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("sft", [False, True])
def test_block_size_seq_len_is_the_llada_objective(tiny_cfg, sft):
    """B = L: the same noise draws as objective=mdm and the same loss (the clean copy is invisible to x_t)."""
    tiny_cfg.data.random_length_prob = 0.3
    tiny_cfg.model.loss_chunk = 0
    model = model_lib.Model(tiny_cfg.model)
    params = model.init(jax.random.key(3))
    batch = {"tokens": jnp.asarray(np.random.default_rng(3).integers(6, 48, (8, 16)), jnp.int32)}
    if sft:
        batch["prompt_lengths"] = jnp.arange(8, dtype=jnp.int32) % 4
    results = {}
    for objective in ("mdm", "block"):
        tiny_cfg.objective, tiny_cfg.diffusion.block_size = objective, 16
        noise = objectives.draw_noise(jax.random.key(5), batch, tiny_cfg)
        results[objective] = noise, float(objectives.loss_given_noise(model, params, batch, noise, tiny_cfg)[0])
    (mdm_noise, mdm_loss), (block_noise, block_loss) = results["mdm"], results["block"]
    np.testing.assert_array_equal(np.asarray(block_noise["masked"]), np.asarray(mdm_noise["masked"]))
    np.testing.assert_array_equal(np.asarray(block_noise["p"]),
                                  np.broadcast_to(np.asarray(mdm_noise["p"])[:, None], (8, 16)))
    np.testing.assert_allclose(block_loss, mdm_loss, rtol=1e-6)


def test_block_size_must_divide_seq_len(tiny_cfg):
    from llada_jax import train
    tiny_cfg.objective, tiny_cfg.diffusion.block_size = "block", 5
    with pytest.raises(train.TrainError, match="multiple of diffusion.block_size=5"):
        train.Setup(tiny_cfg)
