"""Trained runs for inference: `llada sample / chat / eval`, sharded sampling, the chat-history rule, the
denoising-order picture and the lm-eval adapter; each compared with the library call it should equal."""
import json
import re

import jax
import numpy as np
import pytest
from conftest import tiny_config

from llada_jax import block_sampling, cli, evaluate, inference, likelihood, picture, sampling, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run trained for a few steps on the synthetic corpus (one device)."""
    d = tmp_path_factory.mktemp("run")
    cfg = tiny_config()
    cfg.model.vocab_size = 64  # the synthetic character vocabulary
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 3, 3, 3
    train.train(cfg, str(d), log=lambda *a: None)
    return str(d)


def _direct(run, prompts, args, key):
    tokens, mask = sampling.left_pad([run.codec.encode(p) for p in prompts], run.cfg.tokens.pad_id)
    return jax.device_get(sampling.generate(run.model, run.params, tokens, mask, key, args, run.ids))


@pytest.mark.slow
def test_run_sample_equals_generate_and_sharded_equals_one_device(run_dir):
    overrides = [("sampling.gen_length", "8"), ("sampling.block_length", "4"), ("sampling.steps", "8")]
    one = inference.load_run(run_dir, overrides + [("mesh.fsdp", "1")], devices=jax.devices()[:1])
    prompts = ["12+34=", "7+5="]
    key = jax.random.key(3)
    out = one.sample(prompts, key=key)
    want = _direct(one, prompts, sampling.SamplingArgs.from_config(one.cfg.sampling), key)
    np.testing.assert_array_equal(out["tokens"], want["tokens"])
    np.testing.assert_array_equal(out["order"], want["order"])
    assert out["texts"][0] == one.codec.decode(sampling.answer_ids(want["tokens"][0], 6, one.ids.eos_id))
    # params sharded over fsdp 4 x tensor 2 on 8 devices: the same answers, and the weights really are split
    sharded = inference.load_run(run_dir, overrides + [("mesh.fsdp", "4"), ("mesh.tensor", "2")])
    assert len(sharded.params["blocks"]["ff_proj"].sharding.device_set) == 8
    assert sharded.params["blocks"]["ff_proj"].addressable_shards[0].data.shape[1:] == (32 // 4, 64 // 2)
    out8 = sharded.sample(prompts, key=key)
    np.testing.assert_array_equal(out8["tokens"], out["tokens"])


@pytest.mark.slow
def test_only_sampling_eval_and_layout_keys_change_for_a_trained_run(run_dir):
    with pytest.raises(inference.InferenceError, match="cannot change for a trained run"):
        inference.load_run(run_dir, [("model.d_model", "64")])
    with pytest.raises(inference.InferenceError, match="does not exist"):
        inference.load_run(run_dir + "-missing")


@pytest.mark.slow
def test_chat_keeps_history_without_eos_and_adds_no_second_bos(run_dir):
    run = inference.load_run(run_dir, [("sampling.gen_length", "8"), ("sampling.block_length", "8"),
                                       ("sampling.steps", "8"), ("mesh.fsdp", "1")], devices=jax.devices()[:1])
    t, enc = run.cfg.tokens, run.codec.encode
    header = lambda role: [t.start_header_id] + enc(role) + [t.end_header_id] + enc("\n\n")
    chat = inference.Chat(run)
    first = chat.prompt_ids("1+1")
    assert first == [t.bos_id] + header("user") + enc("1+1") + [t.eot_id] + header("assistant")
    _, out = chat.say("1+1", key=jax.random.key(0))
    row = [int(i) for i in out["tokens"][0]]
    assert chat.history == [i for i in row if i != t.eos_id] and t.eos_id not in chat.history
    second = chat.prompt_ids("2+2")
    assert second == chat.history + header("user") + enc("2+2") + [t.eot_id] + header("assistant")
    assert second.count(t.bos_id) == 1


@pytest.mark.slow
def test_sample_command_writes_the_denoising_order(run_dir, tmp_path, capsys):
    page = tmp_path / "order.html"
    cli.main(["sample", f"--workdir={run_dir}", "--prompt=12+34=", "--gen_length=8", "--block_length=4",
              "--steps=4", f"--order_picture={page}", "--config.mesh.fsdp=1"])
    printed = capsys.readouterr().out
    assert printed.startswith("12+34=") and "4 steps" in printed
    run = inference.load_run(run_dir, [("sampling.gen_length", "8"), ("sampling.block_length", "4"),
                                       ("sampling.steps", "4"), ("mesh.fsdp", "1")])
    out = run.sample(["12+34="], key=jax.random.key(0))
    steps = [int(s) for s in re.findall(r"title='step (-?\d+)'", page.read_text())]
    assert steps == list(out["order"][0])  # one span per generated token, titled with its step
    assert sorted(set(steps)) == [0, 1, 2, 3] or -1 in steps


def test_picture_shades_by_step_and_writes_png(tmp_path):
    rows = [("p", [("a", 0), ("b", 2), ("c", 4), ("d", -1)])]
    picture.write_html(rows, tmp_path / "o.html")
    colors = re.findall(r"background:rgb\((\d+),(\d+),(\d+)\)", (tmp_path / "o.html").read_text())
    brightness = [sum(map(int, c)) for c in colors[:3]]
    assert brightness[0] > brightness[1] > brightness[2]  # later steps are darker
    assert colors[3] == ("216", "216", "216")  # never committed: grey
    picture.write(rows, str(tmp_path / "o.png"))
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=".html or .png"):
        picture.write(rows, str(tmp_path / "o.txt"))


@pytest.mark.slow
def test_eval_command_writes_the_perplexity_bound_and_choices(run_dir, tmp_path):
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"context": "1+1=", "choices": ["2", "7"], "answer": 0}) + "\n")
    out = tmp_path / "eval.json"
    cli.main(["eval", f"--workdir={run_dir}", "--perplexity=8", f"--choices={mc}", "--tasks=none",
              f"--out={out}", "--config.eval.mc_samples=8", "--config.eval.mc_batch=8", "--config.mesh.fsdp=1"])
    got = json.loads(out.read_text())
    run = inference.load_run(run_dir, [("mesh.fsdp", "1")])
    k_ppl, k_mc, _ = jax.random.split(jax.random.key(0), 3)
    want = likelihood.elbo_perplexity(run.model, run.params, evaluate.heldout_tokens(run.cfg, 8), k_ppl,
                                    run.cfg.tokens.mask_id, batch_size=16)
    assert got["elbo/nll"] == pytest.approx(want["nll"], rel=1e-5)
    assert got["elbo/tokens"] == 8 * run.cfg.train.seq_len and got["step"] == 3
    assert got["choices/n"] == 1 and got["choices/accuracy"] in (0.0, 1.0)


@pytest.mark.slow
def test_lm_eval_adapter_answers_loglikelihood_and_generate_until(run_dir):
    from lm_eval.api.instance import Instance  # the `lm_eval` extra; the test command installs it

    from llada_jax import lm_eval_adapter
    lm = lm_eval_adapter.LLaDAEvalLM(run_dir, mc_samples=8, mc_batch=8, gen_length=8, block_length=8, steps=8)
    req = Instance("loglikelihood", {}, ("12+34=", "46"), 0)
    (ll, greedy), = lm.loglikelihood([req])
    run = lm.run
    want, _ = likelihood.log_likelihood(run.model, run.params, run.codec.encode("12+34="), run.codec.encode("46"),
                                      jax.random.fold_in(jax.random.key(0), 1), run.cfg.tokens.mask_id, n_samples=8,
                                      batch_size=8, bucket=16)
    assert ll == pytest.approx(want, rel=1e-5) and ll < 0 and isinstance(greedy, bool)
    gen = Instance("generate_until", {}, ("7+5=", {"until": ["+"]}), 1)
    text, = lm.generate_until([gen])
    full = run.sample(["7+5="], key=jax.random.fold_in(jax.random.key(0), 2))["texts"][0]
    assert text == full.split("+")[0]


@pytest.mark.slow
def test_block_run_through_sample_eval_and_sharded_sampling(tmp_path, capsys):
    """A block-diffusion run (objective=block, blocks of 4): `llada sample` = generate_blocks, sharded = one device,
    and `llada eval` reports the block ELBO bound and the tasks."""
    cfg = tiny_config()
    cfg.model.vocab_size = 64
    cfg.objective, cfg.diffusion.block_size = "block", 4
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 3, 3, 3
    train.train(cfg, str(tmp_path), log=lambda *a: None)
    overrides = [("sampling.gen_length", "8"), ("sampling.steps", "8"), ("eval.n_examples", "4"),
                 ("eval.batch", "4")]
    one = inference.load_run(str(tmp_path), overrides + [("mesh.fsdp", "1")], devices=jax.devices()[:1])
    key = jax.random.key(3)
    out = one.sample(["12+34=", "7+5="], key=key)
    tokens, mask = sampling.left_pad([one.codec.encode(p) for p in ["12+34=", "7+5="]], one.cfg.tokens.pad_id)
    want = jax.device_get(block_sampling.generate(one.model, one.params, tokens, mask, key,
                                                   sampling.SamplingArgs.from_config(one.cfg.sampling), one.ids, 4))
    np.testing.assert_array_equal(out["tokens"], want["tokens"])
    sharded = inference.load_run(str(tmp_path), overrides + [("mesh.fsdp", "4"), ("mesh.tensor", "2")])
    np.testing.assert_array_equal(sharded.sample(["12+34=", "7+5="], key=key)["tokens"], out["tokens"])
    assert cli.main(["sample", f"--workdir={tmp_path}", "--prompt=12+34=", "--gen_length=8", "--steps=8"]) == 0
    assert "blocks until EOS" in capsys.readouterr().out
    metrics = evaluate.evaluate_run(one, jax.random.key(0), perplexity=4, log=lambda *a: None)
    assert 0 < metrics["elbo/nll"] < 10 and metrics["elbo/tokens"] == 4 * 16
    assert "arithmetic/exact_match" in metrics
