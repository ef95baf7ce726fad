"""The reverse process (docs/sampling.md) against a float64 numpy re-implementation, its invariants, the
compilation count, Gumbel sampling frequencies, and Fast-dLLM threshold decoding and KV caches (docs/sampling.md)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from llada_jax import block_sampling, config as config_lib, model as model_lib, objectives, sampling

V, EOS, MASK, EOT = 12, 0, 2, 3
IDS = sampling.TokenIds(mask_id=MASK, eos_id=EOS, eot_id=EOT)
MAX_T = 32


def _stub_params(seed=0, context=0.7, mask_logit=-1.0):
    """Logits = BASE[position] + context vector (the key-masked mean of EMB over the input tokens): a fixed function
    of position and of the input, so CFG, the key mask and the decoded tokens matter."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(MAX_T, V)) * 1.5
    base[:, [EOS, EOT]] += 1.0  # EOS / EoT are often predicted, so the EOS rules matter
    base[:, MASK] += mask_logit
    return {"base": base.astype(np.float32), "emb": (rng.normal(size=(V, V)) * context).astype(np.float32)}


def stub_apply(params, tokens, key_mask):
    km = key_mask.astype(jnp.float32)[..., None]
    ctx = jnp.sum(params["emb"][tokens] * km, 1) / jnp.sum(km, 1)
    return params["base"][None, :tokens.shape[1]] + ctx[:, None, :]


def stub_numpy(params, tokens, key_mask):
    base, emb = np.asarray(params["base"], np.float64), np.asarray(params["emb"], np.float64)
    km = np.asarray(key_mask, np.float64)[..., None]
    ctx = (emb[tokens] * km).sum(1) / km.sum(1)
    return base[None, :tokens.shape[1]] + ctx[:, None, :]


def official_counts(m, s):
    """The official get_num_transfer_tokens, written independently: base m // s, the first m % s steps get one more."""
    out = [m // s] * s
    for i in range(m % s):
        out[i] += 1
    return out


def gumbel_uniform(key, shape):
    """The uniform u behind sampling.gumbel, in float64 from the same 64 bits (high and low halves from the two keys of
    split(key)): the first bit says whether u is below 1/2, the other 63 are the fixed-point digits of
    w = min(u, 1 - u) (plus half a unit of the last place)."""
    return uniform_of_bits(*(sampling.noise_bits(k, shape) for k in jax.random.split(key)))


def half_and_w(hi, lo):
    """(u >= 1/2, w = min(u, 1 - u)) in float64 from the 64 bits of each entry."""
    hi, lo = np.asarray(hi, np.uint64), np.asarray(lo, np.uint64)
    return hi >> 31 == 1, (((hi & 0x7FFFFFFF) << 32) + lo).astype(np.float64) * 2.0 ** -64 + 2.0 ** -65


def uniform_of_bits(hi, lo):
    up, w = half_and_w(hi, lo)
    return np.where(up, w, 1.0 - w)


def reference_generate(params, prompt, prompt_mask, args, key):
    """Section 4 in float64 numpy, following the official generate() line by line (its chained assignment too);
    the noise is recomputed from the same keys as sampling.generate draws it."""
    prompt = np.asarray(prompt)
    b, p = prompt.shape
    g, bl = args.gen_length, args.block_length
    x = np.concatenate([prompt, np.full((b, g), MASK)], 1)
    km = np.concatenate([np.asarray(prompt_mask, bool), np.ones((b, g), bool)], 1)
    nb = g // bl
    s = args.steps // nb
    order = np.full((b, g), -1)
    n = 0
    for blk in range(nb):
        end = p + (blk + 1) * bl
        counts = [official_counts(int(m), s) for m in (x[:, p + blk * bl:end] == MASK).sum(1)]
        for i in range(s):
            mask_index = x == MASK
            if args.cfg_scale > 0:
                un = x.copy()
                un[:, :p] = MASK
                c, u = stub_numpy(params, x, km), stub_numpy(params, un, km)
                logits = u + (args.cfg_scale + 1) * (c - u)
            else:
                logits = stub_numpy(params, x, km)
            if args.logits_eos_inf:
                logits[:, :, EOS] = -np.inf
            k_gumbel, k_random = sampling.step_noise_key(key, n)
            if args.temperature > 0:  # the official float64 form exp(logits) / (-log u)^T, u from the same bits
                noisy = logits.copy()
                e = -np.log(np.stack([gumbel_uniform(jax.random.fold_in(k_gumbel, q), (b, V)) for q in range(g)], 1))
                noisy[:, p:] = np.exp(logits[:, p:]) / e ** args.temperature
            else:
                noisy = logits  # the same array, as in the official code
            x0 = noisy.argmax(-1)
            if args.confidence_eos_eot_inf:
                noisy[:, :, EOS] = logits[:, :, EOT] = -np.inf
            if args.remasking == "low_confidence":
                z = np.exp(logits - logits.max(-1, keepdims=True))
                x0_p = np.take_along_axis(z / z.sum(-1, keepdims=True), x0[..., None], -1)[..., 0]
            else:
                x0_p = np.full((b, p + g), -np.inf)
                x0_p[:, p:] = np.asarray(jax.random.uniform(k_random, (b, g)), np.float64)
            x0_p[:, end:] = -np.inf
            x0 = np.where(mask_index, x0, x)
            conf = np.where(mask_index, x0_p, -np.inf)
            for j in range(b):
                sel = np.argsort(-conf[j], kind="stable")[:counts[j][i]]
                x[j, sel] = x0[j, sel]
                done = sel[x0[j, sel] != MASK]
                order[j, done - p] = n
            n += 1
    return x, order


PROMPT = np.array([[5, 6, 7, 8, 9], [EOS, EOS, 10, 11, 4], [7, 7, 1, 5, 6]])
PROMPT_MASK = np.array([[True] * 5, [False, False, True, True, True], [True] * 5])


@pytest.mark.parametrize("args", [
    sampling.SamplingArgs(gen_length=8, block_length=4, steps=4),
    sampling.SamplingArgs(gen_length=8, block_length=4, steps=6, cfg_scale=1.5, logits_eos_inf=True,
                          confidence_eos_eot_inf=True),
    sampling.SamplingArgs(gen_length=8, block_length=8, steps=3, temperature=0.7, confidence_eos_eot_inf=True),
    sampling.SamplingArgs(gen_length=8, block_length=2, steps=8, temperature=1.0, cfg_scale=0.5,
                          remasking="random", logits_eos_inf=True),
], ids=["argmax", "cfg_eos_rules", "gumbel_eos_rule", "random_remasking_cfg"])
@pytest.mark.slow
def test_generation_equals_float64_reference(args):
    params = _stub_params()
    key = jax.random.key(3)
    out = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, key, args, IDS))
    want_x, want_order = reference_generate(params, PROMPT, PROMPT_MASK, args, key)
    np.testing.assert_array_equal(out["tokens"], want_x)
    np.testing.assert_array_equal(out["order"], want_order)
    assert int(out["steps"]) == args.steps and int(out["full_passes"]) == args.steps
    assert int(out["window_passes"]) == 0


@pytest.mark.parametrize("args", [
    sampling.SamplingArgs(gen_length=8, block_length=4, steps=4, attend_padding=True),
    sampling.SamplingArgs(gen_length=8, block_length=4, steps=8, temperature=0.8, cfg_scale=1.0,
                          attend_padding=True),
], ids=["argmax", "gumbel_cfg"])
@pytest.mark.slow
def test_attend_padding_reproduces_the_release_on_a_left_padded_batch(args):
    """The released modeling code ignores the attention mask: the official generate() on a left-padded batch lets
    every token attend to the pads. attend_padding=True gives exactly its tokens (the float64 reference with an
    all-True key mask); the default hides the pads and changes the padded row only."""
    params = _stub_params()
    key = jax.random.key(4)
    out = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, key, args, IDS))
    want_x, want_order = reference_generate(params, PROMPT, np.ones_like(PROMPT_MASK), args, key)
    np.testing.assert_array_equal(out["tokens"], want_x)
    np.testing.assert_array_equal(out["order"], want_order)
    hidden = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, key,
                                              dataclasses.replace(args, attend_padding=False), IDS))
    np.testing.assert_array_equal(hidden["tokens"][[0, 2]], want_x[[0, 2]])  # rows without pads agree
    assert np.any(hidden["tokens"][1] != want_x[1])
    cfg = config_lib.override(config_lib.default_config(), "sampling.attend_padding", "true")  # `llada sample` etc.
    assert sampling.SamplingArgs.from_config(cfg.sampling).attend_padding


@pytest.mark.parametrize("m,s", [(0, 3), (1, 4), (4, 4), (5, 2), (7, 3), (32, 5), (31, 32), (128, 128)])
def test_commit_counts_follow_the_official_rule(m, s):
    got = [int(sampling.commit_count(jnp.int32(m), s, i)) for i in range(s)]
    assert got == official_counts(m, s)
    assert sum(got) == m


def test_confidence_ties_commit_the_lowest_position_first():
    """confidence_eos_eot_inf at T = 0: a prediction of EOS or EoT gets confidence exactly 0, so most positions tie.
    torch.topk leaves the order of ties undefined; ours commits the lowest positions first. Worked by hand: after a
    one-token prompt, generated position 5 predicts token 7 (confidence > 0), position 2 EoT, all others EOS; 8
    positions in 3 steps commit 3, 3, 2: {5, 0, 1}, then {2, 3, 4}, then {6, 7}."""
    base = np.zeros((MAX_T, V), np.float32)
    base[1:9, EOS] = 4.0
    base[1 + 2], base[1 + 5] = np.eye(V)[EOT] * 4.0, np.eye(V)[7] * 4.0
    params = {"base": base, "emb": np.zeros((V, V), np.float32)}
    args = sampling.SamplingArgs(gen_length=8, block_length=8, steps=3, confidence_eos_eot_inf=True)
    out = jax.device_get(sampling.generate(stub_apply, params, np.array([[5]]), None, jax.random.key(0), args, IDS))
    np.testing.assert_array_equal(out["order"][0], [0, 0, 1, 1, 1, 0, 2, 2])
    np.testing.assert_array_equal(out["tokens"][0, 1:], [EOS, EOS, EOT, EOS, EOS, 7, EOS, EOS])


def _replay(params, prompt, prompt_mask, args, out, rule):
    """Re-runs the stub step by step from the recorded commit order and checks every step's commits against `rule`;
    returns the replayed final sequence."""
    b, p = prompt.shape
    x = np.concatenate([prompt, np.full((b, args.gen_length), MASK)], 1)
    km = np.concatenate([prompt_mask, np.ones((b, args.gen_length), bool)], 1)
    order = out["order"]
    for n in range(int(out["steps"])):
        logits = stub_numpy(params, x, km)[:, p:]
        z = np.exp(logits - logits.max(-1, keepdims=True))
        prob = z / z.sum(-1, keepdims=True)
        x0, conf = prob.argmax(-1), prob.max(-1)
        blk = np.flatnonzero((x[:, p:] == MASK).any(0))[0] // args.block_length  # the first block with masks
        for j in range(b):
            gen = x[j, p:]
            committed = np.flatnonzero(order[j] == n)
            in_block = np.flatnonzero((np.arange(args.gen_length) // args.block_length == blk) & (gen == MASK))
            assert set(committed) <= set(in_block)  # nothing outside the block, only masked positions
            if in_block.size:  # (a row whose block is done waits for the others)
                rule(n, committed, in_block, conf[j])
            gen[committed] = x0[j, committed]
    return x


@pytest.mark.slow
def test_argmax_steps_commit_the_k_most_confident_of_the_block():
    params = _stub_params(mask_logit=-30.0)  # a model that (practically) never predicts [MASK]
    args = sampling.SamplingArgs(gen_length=8, block_length=4, steps=6)  # 3 steps per block: 2, 1, 1
    out = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, jax.random.key(0), args, IDS))

    def top_k(n, committed, in_block, conf):
        k = official_counts(4, 3)[n % 3]
        assert committed.size == k
        best = in_block[np.argsort(-conf[in_block], kind="stable")[:k]]
        assert set(committed) == set(best)

    replayed = _replay(params, PROMPT, PROMPT_MASK, args, out, top_k)
    np.testing.assert_array_equal(out["tokens"], replayed)  # committed tokens never changed afterwards
    assert not np.any(out["tokens"] == MASK)
    assert np.all(out["order"] >= 0)
    assert np.all(out["tokens"][:, :5] == PROMPT)


@pytest.mark.slow
def test_threshold_commits_the_confident_and_at_least_one():
    params = _stub_params(mask_logit=-30.0, context=2.0)
    tau = 0.3
    args = sampling.SamplingArgs(gen_length=8, block_length=4, threshold=tau)
    out = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, jax.random.key(0), args, IDS))

    def rule(n, committed, in_block, conf):
        want = set(in_block[conf[in_block] >= tau]) | {in_block[np.argmax(conf[in_block])]}
        assert set(committed) == want

    replayed = _replay(params, PROMPT, PROMPT_MASK, args, out, rule)
    np.testing.assert_array_equal(out["tokens"], replayed)
    assert not np.any(out["tokens"] == MASK)
    assert 2 <= int(out["steps"]) < args.gen_length  # parallel: fewer steps than tokens
    assert int(out["full_passes"]) == int(out["steps"])


@pytest.mark.slow
def test_threshold_above_one_is_one_token_per_step():
    params = _stub_params()
    base = dict(gen_length=8, block_length=4, temperature=0.9)
    one = sampling.SamplingArgs(**base, steps=8)
    thr = sampling.SamplingArgs(**base, threshold=1.5)
    key = jax.random.key(5)
    a = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, key, one, IDS))
    b = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, key, thr, IDS))
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["order"], b["order"])
    assert int(b["steps"]) == 8


@pytest.mark.slow
def test_cfg_scale_zero_equals_no_cfg():
    params = _stub_params()
    args = sampling.SamplingArgs(gen_length=8, block_length=4, steps=4, temperature=0.8)
    key = jax.random.key(1)
    plain = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, key, args, IDS))
    static, dyn = sampling.split_args(args, IDS)
    forced = sampling.Static(static, use_cfg=True)  # the CFG program (doubled batch) at cfg_scale 0
    cfg = jax.device_get(sampling._generate_jit(stub_apply, params, jnp.asarray(PROMPT, jnp.int32),
                                                jnp.asarray(PROMPT_MASK, bool), key, dyn, forced))
    np.testing.assert_array_equal(plain["tokens"], cfg["tokens"])
    np.testing.assert_array_equal(plain["order"], cfg["order"])
    guided = sampling.SamplingArgs(gen_length=8, block_length=4, steps=4, temperature=0.8, cfg_scale=2.0)
    other = jax.device_get(sampling.generate(stub_apply, params, PROMPT, PROMPT_MASK, key, guided, IDS))
    assert np.any(other["tokens"] != plain["tokens"])  # and guidance does change something


def test_gumbel_sampling_frequencies_match_softmax():
    """One step commits all 8 positions: each is an independent draw from softmax(logits / T), [MASK] included."""
    params = _stub_params(context=0.0)
    temp, rows = 0.6, 600
    args = sampling.SamplingArgs(gen_length=8, block_length=8, steps=1, temperature=temp)
    prompt = np.full((rows, 3), 5)
    out = jax.device_get(sampling.generate(stub_apply, params, prompt, None, jax.random.key(7), args, IDS))
    logits = np.asarray(params["base"], np.float64)[3:11] / temp
    prob = np.exp(logits - logits.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    counts = np.stack([np.bincount(out["tokens"][:, 3 + i], minlength=V) for i in range(8)])
    expected = prob * rows
    keep = expected > 5  # pool the rare tokens of each position into one cell
    chi2, dof = 0.0, 0
    for i in range(8):
        obs = np.append(counts[i][keep[i]], counts[i][~keep[i]].sum())
        exp = np.append(expected[i][keep[i]], expected[i][~keep[i]].sum())
        chi2 += np.sum((obs - exp) ** 2 / np.maximum(exp, 1e-9))
        dof += len(obs) - 1
    assert chi2 < stats.chi2.ppf(0.9999, dof), (chi2, dof)
    np.testing.assert_allclose(counts / rows, prob, atol=5 * np.sqrt(0.25 / rows))


FULL_VOCAB = 126464  # the released tokenizer's


def _non_top_probability(gap_over_t):
    """The exact probability that a top token leading each of the other FULL_VOCAB - 1 by gap / T logits is not
    drawn from softmax(logits / T) (float64)."""
    mass = (FULL_VOCAB - 1) * np.exp(-np.asarray(gap_over_t, np.float64))
    return mass / (1 + mass)


def test_noise_is_drawn_per_candidate_position_whatever_the_window():
    """sample_candidates: in a column j where some row has a candidate, x0 = argmax(logits / T + gumbel(fold_in(key,
    offset + j), [B, V])); in the other columns the plain argmax. A window that starts later (the dual cache's
    block) draws the same noise for the same positions, and columns without a candidate in any row draw none
    (turning them on changes nothing else)."""
    b, w, v, temp, offset = 3, 21, 40, 0.7, 5
    k_logits, k_cand, k_gumbel = jax.random.split(jax.random.key(4), 3)
    logits = 3 * jax.random.normal(k_logits, (b, w, v))
    cand = np.array(jax.random.bernoulli(k_cand, 0.4, (b, w)))
    cand[:, 2] = cand[:, 11] = False  # columns with no candidate
    got = np.asarray(sampling.sample_candidates(logits, jnp.asarray(cand), temp, k_gumbel, offset))
    want = np.array(jnp.argmax(logits, -1))
    for j in range(w):
        g = sampling.gumbel(jax.random.fold_in(k_gumbel, offset + j), (b, v))
        if cand[:, j].any():  # every row of a column that some row needs (the draw is per column)
            want[:, j] = np.asarray(jnp.argmax(logits[:, j] / temp + g, -1))
    np.testing.assert_array_equal(got, want)
    later = sampling.sample_candidates(logits[:, 9:], jnp.asarray(cand[:, 9:]), temp, k_gumbel, offset + 9)
    np.testing.assert_array_equal(np.asarray(later), got[:, 9:])
    more = cand.copy()
    more[:, 11] = True
    again = np.asarray(sampling.sample_candidates(logits, jnp.asarray(more), temp, k_gumbel, offset))
    np.testing.assert_array_equal(np.delete(again, 11, 1), np.delete(got, 11, 1))


def test_gumbel_argmax_draws_low_bits_exactly_when_the_winner_is_in_doubt():
    """refined_argmax (the sampler's Gumbel-max) equals argmax(scores + g) with g from all 64 bits in float64, the low
    32 bits included, though it reads them only when the high bits leave the winner in doubt: random bits, an entry
    whose top 31 bits are 0 (unbounded noise), and an entry whose interval straddles the winner's score."""
    n, b, v = 3, 4, 500
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 3, (n, b, v)).astype(np.float32)
    hi = rng.integers(0, 2 ** 32, (n, b, v), dtype=np.uint64).astype(np.uint32)
    lo = rng.integers(0, 2 ** 32, (n, b, v), dtype=np.uint64).astype(np.uint32)

    def got(scores, hi, lo):
        return np.asarray(jax.jit(lambda s, h, l: sampling.refined_argmax(s, h, lambda: l))(scores, hi, lo))

    def want(scores, hi, lo):  # E = -log u from w = min(u, 1 - u) in float64: -log1p(-w) keeps w < 2^-53
        up, w = half_and_w(hi, lo)
        e = np.where(up, -np.log(w), -np.log1p(-w))
        return np.argmax(scores.astype(np.float64) - np.log(e), -1)

    np.testing.assert_array_equal(got(scores, hi, lo), want(scores, hi, lo))
    # [0, 1, 7]: top bit 0 (u = 1 - w) and the other 31 zero: w < 2^-32, g between 22.2 and 45 depending on lo
    hi2, lo2, s2 = hi.copy(), lo.copy(), scores.copy()
    hi2[0, 1, 7] = 0
    s2[0, 1, 7] = s2[0, 1].max() - 30.0
    for low, wins in [(0, True), (2 ** 32 - 1, False)]:  # w = 2^-65 (g = 45.0) or w ~ 2^-32 (g = 22.2)
        lo2[0, 1, 7] = low
        out = got(s2, hi2, lo2)
        np.testing.assert_array_equal(out, want(s2, hi2, lo2))
        assert (out[0, 1] == 7) == wins
    # [2, 3, 11]: top bit 0, h = 5: g in (20.39, 20.57]; its score puts the winner's boundary inside that interval
    hi3, lo3, s3 = hi.copy(), lo.copy(), scores.copy()
    hi3[2, 3, 11] = 5
    others = np.delete(s3[2, 3].astype(np.float64) - np.log(-np.log(uniform_of_bits(hi3[2, 3], lo3[2, 3]))), 11)
    s3[2, 3, 11] = others.max() - 20.48
    for low, wins in [(0, True), (2 ** 32 - 1, False)]:
        lo3[2, 3, 11] = low
        out = got(s3, hi3, lo3)
        np.testing.assert_array_equal(out, want(s3, hi3, lo3))
        assert (out[2, 3] == 11) == wins


@pytest.mark.slow
def test_gumbel_noise_keeps_the_tail_of_the_full_vocabulary():
    """Gaps of 12, 16 and 18 logits: over 10,240 Gumbel-max draws the frequency of non-top tokens is within 4
    standard errors of the exact probability (0.44, 0.014, 0.0019). float32 uniforms cap the noise near 16 and drew
    half the right frequency at gap 16 and none at 18 (docs/sampling.md#temperature-and-gumbel-noise)."""
    rows, chunks = 8, 1280
    gaps = np.array([12.0, 16.0, 18.0])
    logits = jnp.asarray(np.where(np.arange(FULL_VOCAB) == 0, 0.0, -gaps[:, None]), jnp.float32)

    @jax.jit
    def non_top(key):  # the three gaps share the noise; drawn as the sampler draws (gumbel_argmax)
        def body(i, n):
            scores = jnp.broadcast_to(logits[:, None], (len(gaps), rows, FULL_VOCAB))
            x = sampling.gumbel_argmax(scores, jnp.stack([jax.random.fold_in(key, i)] * len(gaps)))
            return n + jnp.sum(x != 0, -1)
        return jax.lax.fori_loop(0, chunks, body, jnp.zeros(len(gaps), jnp.int32))

    draws = rows * chunks
    got, q = np.asarray(non_top(jax.random.key(0))) / draws, _non_top_probability(gaps)
    assert np.all(np.abs(got - q) < 4 * np.sqrt(q * (1 - q) / draws)), (got, q)


def _fixed_logits(params, tokens, key_mask):
    return jnp.broadcast_to(params, tokens.shape + params.shape)


@pytest.mark.slow
@pytest.mark.parametrize("temp, gap", [(0.5, 7.0), (2.0, 30.0)])
def test_temperature_draws_from_the_tempered_softmax_of_the_full_vocabulary(temp, gap):
    """generate() with a model whose logits put token 7 `gap` above the other 126,463 everywhere: one step commits
    all 16 positions of 64 rows, 1,024 draws from softmax(logits / T). The non-top frequency is within 4 standard
    errors of the exact value (gap / T = 14 and 15: 0.095 and 0.037)."""
    logits = jnp.asarray(np.where(np.arange(FULL_VOCAB) == 7, 0.0, -gap), jnp.float32)
    args = sampling.SamplingArgs(gen_length=16, block_length=16, steps=1, temperature=temp)
    prompt = np.full((64, 1), 5)
    out = jax.device_get(sampling.generate(_fixed_logits, logits, prompt, None, jax.random.key(1), args, IDS))
    draws = out["tokens"][:, 1:]
    got, q = np.mean(draws != 7), _non_top_probability(gap / temp)
    assert abs(got - q) < 4 * np.sqrt(q * (1 - q) / draws.size), (got, q)


@pytest.mark.slow
def test_one_compilation_per_shape():
    fn = functools.partial(stub_apply)  # a fresh static argument: its compilations are counted alone
    params = _stub_params()
    before = sampling._generate_jit._cache_size()
    for i, (steps, block, temp, tau) in enumerate([(4, 4, 0.0, None), (8, 2, 0.5, None), (2, 8, 1.0, None)]):
        args = sampling.SamplingArgs(gen_length=8, block_length=block, steps=steps, temperature=temp)
        sampling.generate(fn, params, PROMPT + i, PROMPT_MASK, jax.random.key(i), args, IDS)
    assert sampling._generate_jit._cache_size() - before == 1
    args = sampling.SamplingArgs(gen_length=8, block_length=4, steps=4)
    sampling.generate(fn, params, PROMPT[:, 1:], PROMPT_MASK[:, 1:], jax.random.key(0), args, IDS)  # new shape
    assert sampling._generate_jit._cache_size() - before == 2


def test_argument_errors_say_how_to_fix():
    with pytest.raises(sampling.SamplingError, match="multiple of block_length"):
        sampling.validate(sampling.SamplingArgs(gen_length=10, block_length=4), stub_apply)
    with pytest.raises(sampling.SamplingError, match="multiple of the number of blocks"):
        sampling.validate(sampling.SamplingArgs(gen_length=8, block_length=2, steps=6), stub_apply)
    with pytest.raises(sampling.SamplingError, match="needs the Transformer"):
        sampling.validate(sampling.SamplingArgs(gen_length=8, block_length=4, steps=8, cache="dual"), stub_apply)
    with pytest.raises(sampling.SamplingError, match="remasking"):
        sampling.validate(sampling.SamplingArgs(remasking="topk"), stub_apply)


# -- the real Transformer: padding, the cached forward, prefix and dual caches ---------------------------------------

_MODELS = {}


def _model(tiny_cfg, layers, shift=False):
    """A tiny Transformer that never predicts [MASK] (residual dimension 0 is a constant 1 that no block writes to,
    and the head reads it as -50 for [MASK]); cached per layer count (and model.shift_logits) so compilations are
    shared between tests."""
    if (layers, shift) not in _MODELS:
        tiny_cfg.model.n_layers = layers
        tiny_cfg.model.shift_logits = shift
        tiny_cfg.model.rope_theta = 100.0  # large rotations at short lengths: a wrong RoPE offset shows
        model = model_lib.Model(tiny_cfg.model)
        p = jax.tree.map(np.array, jax.device_get(model.init(jax.random.key(0))))
        p["wte"][:, 0] = 1.0
        p["blocks"]["attn_out"][..., 0] = 0.0
        p["blocks"]["ff_out"][..., 0] = 0.0
        p["lm_head"] *= 4.0  # sharper predictions: confidences far apart
        p["lm_head"][0, MASK] = -50.0
        _MODELS[layers, shift] = model, jax.tree.map(jnp.asarray, p)
    return _MODELS[layers, shift]


def test_left_padded_prompt_generates_as_the_unpadded_prompt(tiny_cfg):
    model, params = _model(tiny_cfg, 2)
    args = sampling.SamplingArgs(gen_length=8, block_length=4, steps=8)
    a, b = np.array([[9, 12, 30, 7, 21]]), np.array([[40, 17, 8]])  # b alone vs b left-padded beside a
    batch = np.concatenate([a, np.concatenate([[[EOS, EOS]], b], 1)])
    mask = np.array([[True] * 5, [False, False, True, True, True]])
    key = jax.random.key(0)
    out = jax.device_get(sampling.generate(model, params, batch, mask, key, args, IDS))
    alone_b = jax.device_get(sampling.generate(model, params, b, None, key, args, IDS))
    np.testing.assert_array_equal(out["tokens"][1, 2:], alone_b["tokens"][0])
    np.testing.assert_array_equal(out["order"][1], alone_b["order"][0])


@pytest.mark.slow
@pytest.mark.parametrize("shift", [False, True])
def test_caches_are_exact_for_a_one_layer_model(tiny_cfg, shift):
    """With one layer, keys and values depend only on a position's own token; inside a block the prefix and the
    suffix (all [MASK]) do not change, so both caches are exact and must reproduce uncached decoding. shift: with
    model.shift_logits (a window then starts one position earlier)."""
    model, params = _model(tiny_cfg, 1, shift)
    prompt = np.array([[9, 12, 30, 7, 21], [EOS, EOS, 40, 17, 8]])
    mask = np.array([[True] * 5, [False, False, True, True, True]])
    key = jax.random.key(2)
    for extra, caches in [(dict(steps=12, temperature=0.8), ["prefix", "dual"]),
                          (dict(threshold=0.2, temperature=0.5), ["dual"])]:
        args = sampling.SamplingArgs(gen_length=12, block_length=4, **extra)
        plain = jax.device_get(sampling.generate(model, params, prompt, mask, key, args, IDS))
        assert not np.any(plain["tokens"] == MASK)
        for cache in caches:
            cached = jax.device_get(sampling.generate(model, params, prompt, mask, key,
                                                      dataclasses.replace(args, cache=cache), IDS))
            np.testing.assert_array_equal(cached["tokens"], plain["tokens"])
            np.testing.assert_array_equal(cached["order"], plain["order"])
            assert int(cached["steps"]) == int(plain["steps"]) == int(plain["full_passes"])
            assert int(cached["full_passes"]) == 3  # one per block
            assert int(cached["window_passes"]) == int(plain["steps"]) - 3


def test_dual_cache_approximates_with_two_layers(tiny_cfg):
    model, params = _model(tiny_cfg, 2)
    args = sampling.SamplingArgs(gen_length=8, block_length=4, steps=8, cache="dual", cfg_scale=1.0)
    prompt = np.array([[9, 12, 30, 7, 21]])
    out = jax.device_get(sampling.generate(model, params, prompt, None, jax.random.key(0), args, IDS))
    assert int(out["full_passes"]) == 2 and int(out["window_passes"]) == 6 and int(out["steps"]) == 8
    assert np.all(np.sort(out["order"][0]) == np.arange(8))  # one token per step, every position once


@pytest.mark.slow
def test_autoregressive_decoding_equals_a_token_by_token_loop(tiny_cfg):
    """objective=arm: its decoder (a KV cache, one pass per token) equals a Python loop of full causal passes, left
    padding included (pads hidden by the key mask), greedy and sampled (the noise of token i: fold_in(key, i))."""
    model = model_lib.Model(tiny_cfg.model)
    params = model.init(jax.random.key(5))
    prompt = np.array([[EOS, 9, 12, 30], [7, 21, 5, 11]])
    mask = np.array([[False, True, True, True], [True] * 4])
    key = jax.random.key(0)
    for temp in (0.0, 0.8):
        args = sampling.SamplingArgs(gen_length=6, block_length=6, steps=6, temperature=temp)
        out = jax.device_get(objectives.by_name("arm").decode(model, params, prompt, mask, key, args, IDS))
        x, m, done, n = jnp.asarray(prompt), jnp.asarray(mask), np.zeros(2, bool), 0
        for i in range(6):
            logits = model.apply(params, x, m, causal=True)[:, -1]
            noise = sampling.gumbel(jax.random.fold_in(key, i), logits.shape)
            nxt = np.where(done, EOS, np.asarray(jnp.argmax(logits / temp + noise if temp else logits, -1)))
            x, m = jnp.concatenate([x, nxt[:, None]], 1), jnp.concatenate([m, jnp.ones((2, 1), bool)], 1)
            done, n = done | (nxt == EOS), n if done.all() else n + 1  # it stops once every row has an EOS
        np.testing.assert_array_equal(out["tokens"], x)
        assert (int(out["full_passes"]), int(out["window_passes"]), int(out["steps"])) == (1, n, n)
    # a row that draws EOS keeps EOS; the loop stops when all have: a model whose every prediction is EOS
    eos_params = jax.tree.map(jnp.zeros_like, params)
    eos_params["wte"], eos_params["ln_f"] = eos_params["wte"].at[:, 0].set(1.0), jnp.ones_like(eos_params["ln_f"])
    eos_params["lm_head"] = eos_params["lm_head"].at[0, EOS].set(1.0)
    out = objectives.by_name("arm").decode(model, eos_params, prompt, mask, key, args, IDS)
    assert int(out["steps"]) == 1 and np.all(np.asarray(out["tokens"])[:, 4:] == EOS)
    with pytest.raises(objectives.ObjectiveError, match=r"objective='gpt'; expected one of: mdm \(masked diffusion"):
        objectives.by_name("gpt")


# -- block diffusion: blocks left to right with an exact cache ------------------------------------------------------

def _block_model(seed=0, shift=False):
    from conftest import tiny_config
    cfg = tiny_config()
    cfg.model.attention = "xla"
    cfg.model.shift_logits = shift
    model = model_lib.Model(cfg.model)
    return model, model.init(jax.random.key(seed))


def _block_prompt():
    tokens, mask = sampling.left_pad([[7, 8, 9, 10, 11], [12, 13, 14]], 0)
    return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("kw", [dict(), pytest.param(dict(remasking="random", temperature=1.0), marks=pytest.mark.slow),
                                pytest.param(dict(threshold=0.2), marks=pytest.mark.slow),
                                pytest.param(dict(cfg_scale=1.5, temperature=0.5), marks=pytest.mark.slow),
                                dict(shift=True),
                                pytest.param(dict(shift=True, cfg_scale=1.5, threshold=0.2), marks=pytest.mark.slow)])
def test_block_cache_equals_recomputing_everything(kw):
    """Cached (the prompt's and finished blocks' keys and values computed once) = every step recomputing the whole
    sequence, token for token and step for step; the cached run never evaluates the whole sequence. Prompts of 5
    and 3 tokens, both from position 0, blocks of 4: blocks 0..4 hold generated positions of some row. shift: with
    model.shift_logits (a block's first logits come from the finished blocks' last position)."""
    kw = dict(kw)
    model, params = _block_model(shift=kw.pop("shift", False))
    prompt, mask = _block_prompt()
    args = sampling.SamplingArgs(gen_length=12, steps=9, **kw)
    ids = sampling.TokenIds(mask_id=2, eos_id=-1, eot_id=3)  # no EOS stop here
    out = {c: jax.device_get(block_sampling.generate(model, params, prompt, mask, jax.random.key(4), args, ids, 4,
                                                      cached=c)) for c in (True, False)}
    np.testing.assert_array_equal(out[True]["tokens"], out[False]["tokens"])
    np.testing.assert_array_equal(out[True]["order"], out[False]["order"])
    np.testing.assert_array_equal(out[True]["tokens"][:, :5], np.asarray(prompt))
    gen = out[True]["tokens"][:, 5:]
    assert int(out[True]["blocks"]) == 5 and len(np.unique(gen)) > 4  # decoded, and not one repeated token
    assert int(out[True]["full_passes"]) == 0 and int(out[False]["window_passes"]) == 0
    steps = int(out[True]["steps"])
    assert int(out[False]["full_passes"]) == steps
    assert int(out[True]["window_passes"]) == steps + 4  # each step's block, blocks 0..3 done
    if "threshold" not in kw:
        assert steps == 1 + 4 * 3  # 3 per block (9 over 12 / 4 blocks); block 0's single [MASK] takes one


def test_block_decoding_stops_after_the_block_with_eos():
    model, params = _block_model(3)  # a seed whose random model varies its tokens
    prompt, mask = _block_prompt()
    args = sampling.SamplingArgs(gen_length=16, steps=16)
    run = lambda eos: jax.device_get(block_sampling.generate(
        model, params, prompt[:1], mask[:1], jax.random.key(0), args, sampling.TokenIds(2, eos, 3), 4))
    full = run(-1)
    gen = full["tokens"][0, 5:]  # blocks of positions 4..7 (3 generated), 8..11, ...: ends 3, 7, 11, 15
    ends = [3, 7, 11, 15]
    blk, eos = next((k, int(t)) for k in range(1, 4) for t in gen[ends[k - 1]:ends[k]] if t not in gen[:ends[k - 1]])
    out = run(eos)  # a token first produced in block k (k >= 1): decoding stops after that block
    assert int(out["blocks"]) == blk + 2 < 5  # block 0 holds only the prompt
    np.testing.assert_array_equal(out["tokens"][0, 5:5 + ends[blk]], gen[:ends[blk]])
    assert np.all(out["tokens"][0, 5 + ends[blk]:] == 2) and np.all(out["order"][0, ends[blk]:] == -1)


@pytest.mark.slow
def test_the_block_objective_decodes_with_generate_blocks():
    model, params = _block_model()
    prompt, mask = _block_prompt()
    args = sampling.SamplingArgs(gen_length=8, steps=8)
    ids = sampling.TokenIds(2, 0, 3)
    got = objectives.by_name("block").decode(model, params, prompt, mask, jax.random.key(1), args, ids, 4)
    want = block_sampling.generate(model, params, prompt, mask, jax.random.key(1), args, ids, 4)
    np.testing.assert_array_equal(np.asarray(got["tokens"]), np.asarray(want["tokens"]))
    # each prompt starts at position 0 whatever the batch: a row's answer (argmax) = that prompt's answer alone
    for row, width in ((0, 5), (1, 3)):
        alone = block_sampling.generate(model, params, prompt[row:row + 1, 5 - width:], None, jax.random.key(1), args,
                                         ids, 4)
        np.testing.assert_array_equal(np.asarray(alone["tokens"])[0, width:], np.asarray(got["tokens"])[row, 5:])
    block = objectives.by_name("block")  # gen_length 6 in blocks of 4: 2 blocks (rounded up), steps a multiple of 2
    args = sampling.SamplingArgs(gen_length=6, steps=8, cache="prefix")
    assert block.check_sampling(args, model, 4) == sampling.SamplingArgs(gen_length=6, block_length=4, steps=8)
    with pytest.raises(sampling.SamplingError, match=r"steps=7 must be a positive multiple of the number of blocks "
                       r"\(gen_length / the model's diffusion.block_size = 6 / 4, rounded up = 2\): set steps=6 or 8"):
        block.check_sampling(sampling.SamplingArgs(gen_length=6, steps=7), model, 4)


@pytest.mark.parametrize("kw", [dict(), dict(remasking="random", temperature=1.0)], ids=["argmax", "random"])
def test_block_gen_length_rounds_up_to_whole_blocks(kw):
    """The rule for a gen_length that is not a multiple of the block size (docs/sampling.md): gen_length 10 in blocks
    of 4 decodes the first 10 tokens of gen_length 12 (10 rounded up to whole blocks) with the same steps, token for
    token and step for step, at any remasking and temperature (the random draws are laid out as for 12). Prompts of
    5 and 3 tokens from position 0: blocks 0..3 hold the answers of 10, blocks 0..4 those of 12; 9 steps over
    ceil(10 / 4) = 3 blocks is 3 per block."""
    model, params = _block_model(3)
    prompt, mask = _block_prompt()
    ids = sampling.TokenIds(mask_id=2, eos_id=-1, eot_id=3)  # no EOS stop
    run = lambda g: jax.device_get(block_sampling.generate(
        model, params, prompt, mask, jax.random.key(5), sampling.SamplingArgs(gen_length=g, steps=9, **kw), ids, 4))
    short, whole = run(10), run(12)
    assert short["tokens"].shape == (2, 5 + 10) and short["order"].shape == (2, 10)
    np.testing.assert_array_equal(short["tokens"], whole["tokens"][:, :5 + 10])
    np.testing.assert_array_equal(short["order"], whole["order"][:, :10])
    assert (int(short["blocks"]), int(whole["blocks"])) == (4, 5)
    assert int(short["steps"]) == 1 + 3 * 3 and int(whole["steps"]) == 1 + 4 * 3  # block 0: one [MASK], one step
    assert np.all(short["tokens"][:, 5:] != 2) and len(np.unique(short["tokens"][:, 5:])) > 3  # decoded, varied


def test_left_to_right_decoding_checks_only_what_it_uses(tiny_cfg):
    """block_length and steps do not apply to the autoregressive decoder: any gen_length > 0 runs."""
    model, arm = model_lib.Model(tiny_cfg.model), objectives.by_name("arm")
    args = sampling.SamplingArgs(gen_length=3, block_length=8, steps=5)
    assert arm.check_sampling(args, model, None) == args
    with pytest.raises(sampling.SamplingError, match="gen_length=0 must be positive"):
        arm.check_sampling(sampling.SamplingArgs(gen_length=0), model, None)
    with pytest.raises(sampling.SamplingError, match="needs a model_lib.Model"):
        arm.check_sampling(args, stub_apply, None)
