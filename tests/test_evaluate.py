"""Likelihood evaluation: the stratified mask counts of Algorithm 3, the estimator's mean against the exact
log-likelihood of a context-free model, the ELBO bound, multiple-choice accuracy, and the exact match of the built-in
tasks (batching checked against answers computed here)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import evaluate, inference, likelihood, objectives, sampling
from llada_jax.data import rewards, synthetic, tasks

V, MASK = 12, 2


def context_free(params, tokens, key_mask):
    """Logits depend only on the position: every prediction ignores the context."""
    return jnp.broadcast_to(params["base"][None, :tokens.shape[1]], tokens.shape + (V,))


def _params(seed=0, scale=1.5):
    return {"base": jnp.asarray(np.random.default_rng(seed).normal(size=(40, V)) * scale, jnp.float32)}


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("length,n", [(16, 16), (16, 4), (10, 4), (7, 16), (3, 5)])
def test_mask_counts_are_stratified(length, n):
    seen_offsets = set()
    draws = jax.vmap(lambda k: likelihood.stratified_counts(k, jnp.int32(length), n))(
        jax.random.split(jax.random.key(0), 200))
    for counts in np.asarray(draws):
        assert counts.min() >= 1 and counts.max() <= length
        k = counts[0]
        seen_offsets.add(int(k))
        # evenly spaced from the offset k with spacing L / n, wrapped into {1..L}
        want = (np.round(k + np.arange(n) * (length / n)).astype(int) - 1) % length + 1
        np.testing.assert_array_equal(counts, want)
        if n == length:
            assert sorted(counts) == list(range(1, length + 1))  # a permutation of 1..L
        elif n < length:
            assert len(set(counts)) == n  # distinct strata
    assert seen_offsets == set(range(1, length + 1))  # the offset covers {1..L}


@pytest.mark.slow
def test_answer_masks_have_exact_counts_and_uniform_positions():
    width, length, n = 10, 7, 4000
    counts = jnp.asarray(np.random.default_rng(0).integers(1, length + 1, n), jnp.int32)
    masks = np.asarray(likelihood.answer_masks(jax.random.key(0), jnp.int32(length), counts, width))
    np.testing.assert_array_equal(masks.sum(1), np.asarray(counts))
    assert not masks[:, length:].any()  # padding is never masked
    # each answer position is masked with probability l / L
    want = np.sum(np.asarray(counts) / length) / n
    np.testing.assert_allclose(masks[:, :length].mean(0), want, atol=4 * np.sqrt(0.25 / n))


@pytest.mark.slow
def test_estimator_mean_is_the_exact_log_likelihood():
    params = _params()
    prompt, answer = np.array([5, 6, 7, 4]), np.array([8, 1, 9, 0, 11, 5, 3])
    lp = _log_softmax(params["base"])
    exact = sum(lp[len(prompt) + i, a] for i, a in enumerate(answer))
    est, se = likelihood.log_likelihood(context_free, params, prompt, answer, jax.random.key(0), MASK,
                                      n_samples=256, batch_size=16)
    assert se > 0
    assert abs(est - exact) < 4 * se, (est, exact, se)
    # CFG of a context-free model: conditional = unconditional logits, so guidance changes nothing
    est_cfg, _ = likelihood.log_likelihood(context_free, params, prompt, answer, jax.random.key(0), MASK,
                                         n_samples=256, batch_size=16, cfg_scale=2.0)
    assert est_cfg == pytest.approx(est, rel=1e-6)
    # bucketed: the prompt is left-padded to 8 (this stub is not shift-invariant: the answer now starts at 8), the
    # answer right-padded to 8; the padding is never masked nor scored
    est_b, se_b = likelihood.log_likelihood(context_free, params, prompt, answer, jax.random.key(1), MASK,
                                          n_samples=256, batch_size=16, bucket=8)
    exact_b = sum(lp[8 + i, a] for i, a in enumerate(answer))
    assert abs(est_b - exact_b) < 4 * se_b, (est_b, exact_b, se_b)


def test_estimator_of_a_one_token_answer_is_exact():
    params = _params()
    est, _ = likelihood.log_likelihood(context_free, params, [5, 6], [9], jax.random.key(0), MASK,
                                     n_samples=16, batch_size=8)
    assert est == pytest.approx(_log_softmax(params["base"])[2, 9], rel=1e-5)


def test_elbo_bound_of_a_context_free_model():
    params = _params(1, scale=1.0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, (24, 16))
    lengths = rng.integers(8, 17, 24)
    lp = _log_softmax(params["base"])[:16]
    exact = -sum(lp[np.arange(n), tokens[i, :n]].sum() for i, n in enumerate(lengths)) / lengths.sum()
    out = likelihood.elbo_perplexity(context_free, params, tokens, jax.random.key(0), MASK, lengths=lengths,
                                   n_samples=8, batch_size=16)
    assert out["tokens"] == lengths.sum()
    assert abs(out["nll"] - exact) < 4 * out["stderr"], (out, exact)
    assert out["ppl"] == pytest.approx(np.exp(out["nll"]))


class CausalStub:
    """A tiny causal "model" for ar_perplexity: the logits at position i are base[i] plus a mix of tokens 0..i (so
    each row's values depend on its own context only). Records the shape of every trace (= every compilation)."""

    def __init__(self):
        self.traced = []

    def apply(self, params, tokens, causal=True):
        self.traced.append(tuple(tokens.shape))
        seen = jnp.cumsum(jax.nn.one_hot(tokens, V) @ params["mix"], axis=1)
        return params["base"][None, :tokens.shape[1]] + seen


def _ar_reference(params, rows, lengths):
    """[N] float64: each row's summed -log p(x_i | x_<i) over positions 1..length-1, in numpy."""
    base, mix = (np.asarray(params[k], np.float64) for k in ("base", "mix"))
    out = []
    for row, n in zip(rows, lengths):
        logits = base[:n] + np.cumsum(np.eye(V)[row[:n]] @ mix, axis=0)
        out.append(-sum(_log_softmax(logits[i - 1])[row[i]] for i in range(1, n)))
    return np.array(out)


def test_partial_batches_are_padded_to_the_next_power_of_two_not_to_batch_size():
    """3 rows with batch_size 16 run as 4 (not 16) and score exactly as each row alone and as numpy does; any number
    of rows compiles at most log2(16) + 1 = 5 shapes (1, 2, 4, 8, 16); the ELBO bound's partial batch is its
    unpadded computation (same key, same draws)."""
    assert [likelihood.padded_rows(n, 16) for n in (1, 2, 3, 4, 5, 9, 16)] == [1, 2, 4, 4, 8, 16, 16]
    assert [likelihood.padded_rows(n, 12) for n in (3, 8, 9, 12)] == [4, 8, 12, 12]
    rng = np.random.default_rng(0)
    params = {"base": jnp.asarray(rng.normal(size=(40, V)), jnp.float32),
              "mix": jnp.asarray(rng.normal(size=(V, V)) * 0.5, jnp.float32)}
    tokens, lengths = rng.integers(0, V, (3, 20)), np.array([20, 13, 7])
    model = CausalStub()
    together = likelihood.ar_perplexity(model, params, tokens, lengths=lengths, batch_size=16)
    assert model.traced == [(4, 20)]
    alone = [likelihood.ar_perplexity(model, params, tokens[i:i + 1], lengths=lengths[i:i + 1], batch_size=16)
             for i in range(3)]
    assert model.traced == [(4, 20), (1, 20)]  # the three single rows share one compilation
    sums = np.array([r["nll"] * r["tokens"] for r in alone])
    np.testing.assert_allclose(sums, _ar_reference(params, tokens, lengths), rtol=1e-5)
    assert together["tokens"] == sum(r["tokens"] for r in alone) == 19 + 12 + 6
    np.testing.assert_allclose(together["nll"], sums.sum() / together["tokens"], rtol=1e-6)
    # any number of rows: at most 5 shapes, each batch the rows present rounded up to a power of two
    model = CausalStub()
    for n in range(1, 41):
        likelihood.ar_perplexity(model, params, rng.integers(0, V, (n, 8)), batch_size=16)
    assert sorted(set(model.traced)) == [(1, 8), (2, 8), (4, 8), (8, 8), (16, 8)] and len(model.traced) == 5

    traced = []

    def counting(params, tokens, key_mask):
        traced.append(tuple(tokens.shape))
        return context_free(params, tokens, key_mask)

    key = jax.random.key(4)
    got = likelihood.elbo_perplexity(counting, params, tokens, key, MASK, lengths=lengths, batch_size=16)
    assert traced == [(4, 20)]
    unpadded = likelihood._elbo_jit(counting, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32),
                                    jax.random.fold_in(jax.random.fold_in(key, 0), 0), MASK, 1e-3, None)
    assert traced == [(4, 20), (3, 20)]
    np.testing.assert_allclose(got["nll"] * got["tokens"], float(np.sum(unpadded)), rtol=1e-6)


def _task_run(monkeypatch, step, **config):
    """An inference.Run of the default config (the synthetic arithmetic corpus) at checkpoint `step` whose sampler
    (the arm objective's) answers every prompt right: {task: exact match} is 1.0 for every task scored."""
    from conftest import tiny_config
    tok = synthetic.CharTokenizer()

    def right(model, params, prompt, prompt_mask, key, args, ids):
        rows = []
        for p, m in zip(np.asarray(prompt), np.asarray(prompt_mask)):
            a, b = map(int, tok.decode(p[m])[:-1].split("+"))
            rows.append(np.concatenate([p, (tok.encode(str(a + b)) + [ids.eos_id] * 8)[:args.gen_length]]))
        return {"tokens": np.stack(rows)}

    monkeypatch.setattr(sampling, "generate_ar", right)
    cfg = tiny_config()
    cfg.objective, cfg.eval.n_examples, cfg.eval.batch = "arm", 4, 4
    cfg.sampling.gen_length, cfg.sampling.block_length, cfg.sampling.steps = 8, 8, 8
    for k, v in config.items():
        group, name = k.split("__")
        cfg[group][name] = v
    return inference.Run(cfg, None, None, inference.CharCodec(), step=step)


def test_the_tasks_of_llada_eval_are_those_the_run_trained_on(monkeypatch):
    """Without tasks named on the command line, `llada eval` scores the eval.tasks a run trained on: arithmetic for a
    run trained on the synthetic arithmetic corpus, nothing for an imported run (checkpoint step 0, whose data.* are
    the import's defaults) or a run trained on token stores; named (tasks=True), eval.tasks are scored regardless."""
    lines = []
    trained = _task_run(monkeypatch, 5)
    assert evaluate.trained_tasks(trained.cfg, 5) == ["arithmetic"]
    assert evaluate.evaluate_run(trained, jax.random.key(0), perplexity=0, log=lines.append) == {
        "step": 5, "arithmetic/exact_match": 1.0}
    imported = _task_run(monkeypatch, 0)
    assert evaluate.imported(imported) and evaluate.trained_tasks(imported.cfg, 0) == []
    assert evaluate.evaluate_run(imported, jax.random.key(0), perplexity=0, log=lines.append) == {"step": 0}
    assert lines[-1] == ("tasks: arithmetic skipped (an imported run was trained on none of them; --tasks=NAMES "
                         "scores them anyway)")
    assert evaluate.evaluate_run(imported, jax.random.key(0), perplexity=0, tasks=True, log=lines.append) == {
        "step": 0, "arithmetic/exact_match": 1.0}
    assert evaluate.evaluate_run(trained, jax.random.key(0), perplexity=0, tasks=False, log=lines.append) == {
        "step": 5}
    text = _task_run(monkeypatch, 5, data__source="store")
    assert evaluate.trained_tasks(text.cfg, 5) == []
    assert evaluate.evaluate_run(text, jax.random.key(0), perplexity=0, log=lines.append) == {"step": 5}
    assert lines[-1].startswith("tasks: arithmetic skipped (the run was trained on none of them;")
    # the synthetic task of the run, and an RL run's task; eval.tasks lists what may be scored
    both = _task_run(monkeypatch, 5, data__synthetic_task="arithmetic_small", rl__task="arithmetic",
                     eval__tasks="arithmetic,reversal,arithmetic_small")
    assert evaluate.trained_tasks(both.cfg, 5) == ["arithmetic_small", "arithmetic"]
    assert evaluate.chosen_tasks(both, explicit=False) == ["arithmetic", "arithmetic_small"]
    assert evaluate.chosen_tasks(both, explicit=True) == ["arithmetic", "reversal", "arithmetic_small"]


def test_scored_rows_fit_the_model(monkeypatch):
    """eval.text_len=-1 is train.seq_len for a run trained here (64 tokens, although model.max_seq_len is 4096) and
    the model's context, capped at 2048, for an imported run; a text shorter than a row is one row of its length;
    long rows are scored fewer at a time (at most evaluate.SCORE_TOKENS positions per batch)."""
    trained, imported = _task_run(monkeypatch, 5), _task_run(monkeypatch, 0)
    trained.cfg.train.seq_len = 64
    assert trained.cfg.model.max_seq_len == 4096 and evaluate.context_len(trained) == 64
    assert evaluate.context_len(imported) == 2048
    imported.cfg.model.max_seq_len = 256
    assert evaluate.context_len(imported) == 256
    tokens, lengths = evaluate.text_rows(np.arange(10), 2048)
    assert tokens.shape == (1, 10) and lengths.tolist() == [10]
    tokens, lengths = evaluate.text_rows(np.arange(11), 4)
    assert tokens.shape == (3, 4) and lengths.tolist() == [4, 4, 3]
    assert [evaluate.rows_per_batch(16, w) for w in (64, 512, 1024, 1118, 2048, 4096, 20000)] == [16, 16, 8, 4, 4,
                                                                                                 2, 1]


def test_multiple_choice_accuracy(tmp_path):
    base = np.zeros((40, V), np.float32)
    base[:, 7] = 3.0  # the model likes token 7 everywhere
    params = {"base": jnp.asarray(base)}
    encode = lambda text: [ord(c) - ord("a") + 4 for c in text]  # "d" -> 7
    examples = [{"context": "ab", "choices": ["dd", "ae"], "answer": 0},
                {"context": "ca", "choices": ["eb", "dd", "ee"], "answer": "dd"},
                {"context": "ab", "choices": ["dd", "ae"], "answer": 1}]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in examples) + "\n")
    out = evaluate.multiple_choice(context_free, params, str(path), encode, jax.random.key(0), MASK,
                                   n_samples=16, batch_size=8)
    assert out["predictions"] == [0, 1, 0]
    assert out["accuracy"] == pytest.approx(2 / 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "a", "choices": ["b"]}) + "\n")
    with pytest.raises(evaluate.EvalError, match="missing answer"):
        evaluate.load_jsonl(str(bad))


@pytest.mark.slow
def test_autoregressive_log_likelihood_is_the_sum_of_next_token_log_probs(tiny_cfg):
    """objective=arm: log p(answer | prompt) = sum of log softmax of the causal logits at the answer positions
    (numpy, float64), and multiple choice uses it."""
    from llada_jax import model as model_lib
    model = model_lib.Model(tiny_cfg.model)
    params = model.init(jax.random.key(2))
    prompt, answer = [5, 9, 11], [7, 20]
    seq = np.array(prompt + answer)
    logits = np.asarray(model.apply(params, jnp.asarray(seq[None]), causal=True)[0], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    want = logp[2, 7] + logp[3, 20]
    got = objectives.by_name("arm").log_likelihood(model, params, prompt, answer, None, MASK)
    assert got == pytest.approx(want, abs=1e-4)
    mc = evaluate.multiple_choice(model, params, [{"context": "a", "choices": ["b", "c"], "answer": 0}],
                                  lambda t: {"a": prompt, "b": answer, "c": [7, 21]}[t], jax.random.key(0), MASK,
                                  objective=objectives.by_name("arm"))
    other = likelihood.ar_log_likelihood(model, params, prompt, [7, 21])
    assert mc["scores"][0] == pytest.approx([want, other], abs=1e-4)


@pytest.mark.parametrize("prediction, answer, right", [
    ("127", "127", True), (" 127 ", "127", True), ("abc", "abc", True),
    ("12", "127", False), ("1270", "127", False), ("", "127", False), ("127+1", "127", False), ("ABC", "abc", False),
])
def test_exact_match_on_hand_written_cases(prediction, answer, right):
    assert rewards.exact_match(prediction, answer) is right  # every built-in task scores by exact match


def test_left_pad_with_a_key_mask():
    tok = synthetic.CharTokenizer()
    ids, mask = sampling.left_pad([tok.encode("1+2="), tok.encode("10+20=")], pad_id=0)
    assert ids.tolist() == [[0, 0] + tok.encode("1+2="), tok.encode("10+20=")]
    assert mask.tolist() == [[False, False] + [True] * 4, [True] * 6]


def test_evaluate_batches_and_scores_against_answers_computed_here(tiny_cfg, monkeypatch):
    """A fake sampler answers a+b correctly only when the sum is even (and garbage after an EOS); evaluate must
    report exactly the fraction of even sums, over batches whose last one is partial."""
    tok = synthetic.CharTokenizer()
    calls = []

    def fake_sample(model, params, prompt, prompt_mask, key, args, ids):  # the arm objective's decoder
        calls.append((np.asarray(prompt).shape, args.gen_length))
        rows = []
        for p, m in zip(np.asarray(prompt), np.asarray(prompt_mask)):
            a, b = map(int, tok.decode(p[m])[:-1].split("+"))
            text = str(a + b) if (a + b) % 2 == 0 else str(a + b + 1)
            gen = tok.encode(text) + [ids.eos_id] + tok.encode("9" * 8)
            rows.append(np.concatenate([p, gen[: args.gen_length]]))
        return {"tokens": np.stack(rows)}

    monkeypatch.setattr(sampling, "generate_ar", fake_sample)
    cfg = tiny_cfg
    cfg.eval.tasks, cfg.eval.n_examples, cfg.eval.batch = "arithmetic_small", 45, 16
    cfg.sampling.gen_length, cfg.sampling.block_length, cfg.sampling.steps = 8, 8, 8
    cfg.objective = "arm"
    run = inference.Run(cfg, None, None, inference.CharCodec(), step=0)  # the run's own codec encodes the prompts
    out = evaluate.evaluate_tasks(run, jax.random.key(0))
    examples = tasks.get("arithmetic_small").eval_sets(45)["arithmetic_small"]
    want = np.mean([int(e.answer) % 2 == 0 for e in examples])
    assert 0.2 < want < 0.8
    assert out == {"arithmetic_small/exact_match": pytest.approx(want)}
    assert len(calls) == 3 and len({c[0] for c in calls}) == 1  # 16 + 16 + 13 (padded to 16): one shape
    assert calls[0][1] == 8
    cfg.eval.n_examples, calls[:] = 5, []  # 5 prompts: one batch of 8 (the next power of two), not of 16
    out = evaluate.evaluate_tasks(run, jax.random.key(0))
    examples = tasks.get("arithmetic_small").eval_sets(5)["arithmetic_small"]
    assert out == {"arithmetic_small/exact_match": pytest.approx(np.mean([int(e.answer) % 2 == 0 for e in examples]))}
    assert [c[0][0] for c in calls] == [8]


# -- block diffusion --------------------------------------------------------------------------------------------

def _block_model(zero_blocks=False):
    from conftest import tiny_config

    from llada_jax import model as model_lib
    cfg = tiny_config()
    model = model_lib.Model(cfg.model)
    params = model.init(jax.random.key(0))
    if zero_blocks:  # every block adds nothing: logits = f(token at the position), context-free
        params = {**params, "blocks": jax.tree.map(jnp.zeros_like, params["blocks"])}
    return cfg, model, params


@pytest.mark.slow
def test_block_elbo_equals_one_forward_per_block():
    """elbo_perplexity(block_size=4): the rows' bound = CE / p summed over masked positions of a float64 forward
    per block, with the noise recomputed from the same key; rows padded to whole blocks."""
    import reference

    from llada_jax import diffusion
    cfg, model, params = _block_model()
    tokens = np.random.default_rng(0).integers(6, 48, (2, 14)).astype(np.int32)
    lengths = np.array([14, 9])
    key = jax.random.key(3)
    with jax.default_matmul_precision("highest"):
        got = likelihood.elbo_perplexity(model, params, tokens, key, 2, lengths=lengths, batch_size=2, block_size=4)
    padded = np.pad(tokens, ((0, 0), (0, 2)))
    valid = np.arange(16)[None] < lengths[:, None]
    x_t, masked, p = (np.asarray(a) for a in diffusion.block_forward_process(
        jax.random.fold_in(jax.random.fold_in(key, 0), 0), jnp.asarray(padded), 2, 1e-3, 4, jnp.asarray(valid)))
    ce = reference.block_ce(jax.device_get(params), padded, x_t, valid, cfg.model, 4)
    want = np.sum(np.where(masked, ce / p, 0.0)) / lengths.sum()
    assert masked.any() and not np.any(masked & ~valid)
    np.testing.assert_allclose(got["nll"], want, rtol=1e-5)
    assert got["tokens"] == 23


@pytest.mark.slow
def test_block_log_likelihood_of_a_context_free_model_is_exact():
    """With context-free predictions the block ELBO is exact in expectation: the mean of many draws = the sum of
    log p of the answer tokens (prompt and answer padded to whole blocks, as the sampler lays them out)."""
    cfg, model, params = _block_model(zero_blocks=True)
    prompt, answer = [7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18]
    logits = np.asarray(model.apply(params, jnp.full((1, 1), 2, jnp.int32))[0, 0])  # any masked position's logits
    exact = float(np.sum(_log_softmax(logits)[answer]))
    est, stderr = likelihood.block_log_likelihood(model, params, prompt, answer, jax.random.key(0), 2, 4,
                                                n_samples=256, batch_size=32)
    assert 0 < stderr < 0.1 * abs(exact)
    assert abs(est - exact) < 4 * stderr
    ll = objectives.by_name("block").log_likelihood(model, params, prompt, answer, jax.random.key(0), 2,
                                                    block_size=4, n_samples=256, batch_size=32, bucket=16)
    assert ll == est  # the dispatch runs the same estimate
    best = int(np.argmax(logits))
    assert likelihood.block_greedy(model, params, prompt, [best] * 3, 2, 4)
    assert not likelihood.block_greedy(model, params, prompt, [best, (best + 1) % 48, best], 2, 4)
