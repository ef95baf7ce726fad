"""The objective table (objectives.py), and the lm-eval adapter answering as each objective defines it: every value
checked against a direct computation (numpy float64, a token-by-token loop, or the estimator called by hand)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from llada_jax import diffusion, likelihood, objectives, train

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "llada_jax")


def test_table_records_and_unknown_names(tiny_cfg):
    assert sorted(objectives.TABLE) == ["arm", "block", "mdm"]
    arm, block, mdm = (objectives.TABLE[k] for k in ("arm", "block", "mdm"))
    assert (arm.causal, arm.pair, arm.blockwise, arm.exact, arm.metric) == (True, False, False, True, "ar")
    assert (mdm.causal, mdm.pair, mdm.blockwise, mdm.exact, mdm.metric) == (False, False, False, False, "elbo")
    assert (block.causal, block.pair, block.blockwise, block.exact) == (False, True, True, False)
    tiny_cfg.diffusion.block_size = 4
    assert mdm.block_size(tiny_cfg) is None and arm.block_size(tiny_cfg) is None and block.block_size(tiny_cfg) == 4
    tiny_cfg.objective = "gpt"
    with pytest.raises(objectives.ObjectiveError, match=r"objective='gpt'; expected one of: mdm \(masked diffusion "
                                                        r"\(LLaDA\)\), arm \(autoregressive baseline\), block"):
        train.validate(tiny_cfg, None)


def test_the_noise_of_each_objective(tiny_cfg):
    """mdm and arm draw one t per row; block one per block: the table's draw_noise equals diffusion's by hand."""
    batch = {"tokens": jnp.asarray(np.random.default_rng(0).integers(6, 48, (4, 16)), jnp.int32)}
    key = jax.random.key(7)
    for name, size in (("mdm", None), ("arm", None), ("block", 4)):
        tiny_cfg.objective, tiny_cfg.diffusion.block_size = name, 4
        got = objectives.draw_noise(key, batch, tiny_cfg)
        want = diffusion.draw_noise(key, batch, tiny_cfg, size)
        for k in want:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


# -- lm-eval, for every objective ---------------------------------------------------------------------------------

def _train(tmp_path_factory, objective):
    d = tmp_path_factory.mktemp(objective)
    cfg = tiny_config()
    cfg.model.vocab_size = 64  # the synthetic character vocabulary
    cfg.objective, cfg.diffusion.block_size = objective, 4
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 3, 3, 3
    train.train(cfg, str(d), log=lambda *a: None, devices=jax.devices()[:1])
    return str(d)


@pytest.fixture(scope="module", params=["mdm", "arm", "block"])
def lm(request, tmp_path_factory):
    pytest.importorskip("lm_eval")  # the `lm_eval` extra; the test command installs it
    from llada_jax import lm_eval_adapter
    return lm_eval_adapter.LLaDAEvalLM(_train(tmp_path_factory, request.param), mc_samples=8, mc_batch=8,
                                       gen_length=8, block_length=8, steps=8, batch_size=2)


def _instance(kind, args, i=0):
    from lm_eval.api.instance import Instance
    return Instance(kind, {}, args, i)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.mark.slow
def test_loglikelihood_and_is_greedy(lm):
    run = lm.run
    name, mask_id = run.cfg.objective, run.cfg.tokens.mask_id
    ctx, cont = run.codec.encode("12+34="), run.codec.encode("46")
    key = jax.random.fold_in(jax.random.key(0), lm.calls + 1)  # the key of the adapter's next call
    (ll, greedy), = lm.loglikelihood([_instance("loglikelihood", ("12+34=", "46"))])
    model, params = run.model, run.params
    if name == "arm":  # exact: sum of log softmax of the causal logits (float64)
        logits = model.apply(params, jnp.asarray([ctx + cont]), causal=True)[0]
        logp = _log_softmax(logits)
        want = sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont))
        assert ll == pytest.approx(want, abs=1e-4)
        greedy_want = True  # token by token: greedy decoding from the context reproduces the continuation?
        x = list(ctx)
        for t in cont:
            nxt = int(jnp.argmax(model.apply(params, jnp.asarray([x]), causal=True)[0, -1]))
            greedy_want &= nxt == t
            x.append(t)
        x = list(ctx)  # and a continuation that greedy decoding does produce is greedy, one changed token is not
        for _ in range(3):
            x.append(int(jnp.argmax(model.apply(params, jnp.asarray([x]), causal=True)[0, -1])))
        answer = x[len(ctx):]
        assert likelihood.ar_greedy(model, params, ctx, answer)
        assert not likelihood.ar_greedy(model, params, ctx, answer[:2] + [(answer[2] + 1) % 64])
    elif name == "mdm":
        want = likelihood.log_likelihood(model, params, ctx, cont, key, mask_id, n_samples=8, batch_size=8,
                                         bucket=16)[0]
        assert ll == pytest.approx(want, rel=1e-5)
        logits = model.apply(params, jnp.asarray([ctx + [mask_id] * len(cont)]))[0]
        greedy_want = [int(i) for i in np.argmax(np.asarray(logits)[len(ctx):], -1)] == cont
    else:
        want = likelihood.block_log_likelihood(model, params, ctx, cont, key, mask_id, 4, n_samples=8,
                                               batch_size=8, eps=run.cfg.diffusion.eps)[0]
        assert ll == pytest.approx(want, rel=1e-5)
        greedy_want = likelihood.block_greedy(model, params, ctx, cont, mask_id, 4)
    assert greedy is greedy_want


@pytest.mark.slow
def test_loglikelihood_rolling(lm):
    run = lm.run
    text = "12+34=46"
    got, = lm.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))])
    ids = run.codec.encode(text)
    if run.cfg.objective == "arm":  # exact, the first token conditioned on EOS
        seq = [run.cfg.tokens.eos_id] + ids
        logp = _log_softmax(run.model.apply(run.params, jnp.asarray([seq]), causal=True)[0])
        want = sum(logp[i, t] for i, t in enumerate(seq[1:]))
        assert got == pytest.approx(want, abs=1e-4)
    else:
        r = likelihood.elbo_perplexity(run.model, run.params, np.asarray([ids], np.int32),
                                       jax.random.fold_in(jax.random.key(0), lm.calls), run.cfg.tokens.mask_id,
                                       n_samples=1, batch_size=1, eps=run.cfg.diffusion.eps, block_size=lm.block_size)
        assert got == pytest.approx(-r["nll"] * r["tokens"], rel=1e-5) and got <= 0  # 0: the draw masked nothing


@pytest.mark.slow
def test_generate_until_batches_and_stops(lm, monkeypatch):
    run, calls = lm.run, []
    real = run.sample
    monkeypatch.setattr(run, "sample", lambda prompts, **kw: calls.append(list(prompts)) or real(prompts, **kw))
    prompts = ["7+5=", "12+3=", "40+2="]
    reqs = [_instance("generate_until", (p, {"until": stop}), i)
            for i, (p, stop) in enumerate(zip(prompts, (["+"], ["+"], "=")))]
    first = lm.calls
    got = lm.generate_until(reqs)
    assert calls == [["7+5=", "12+3="], ["40+2="]]  # batch_size 2, grouped by stop strings
    for n, (chunk, stop) in enumerate(((["7+5=", "12+3="], "+"), (["40+2="], "="))):
        texts = real(chunk, key=jax.random.fold_in(jax.random.key(0), first + n + 1))["texts"]
        want = [t.split(stop)[0] for t in texts]
        assert [got[prompts.index(p)] for p in chunk] == want
