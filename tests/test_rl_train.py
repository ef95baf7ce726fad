"""`llada rl` (rl_train.py): prompts, rewards and pairs against hand-worked cases; the reported losses against a
direct computation; exact resume; 8 devices = 1 device for one RL step; the errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import cli, config as config_lib, goodput, loop, rl, rl_train, rundir, settings, train
from llada_jax.data import tasks

QUIET = lambda *a, **k: None  # noqa: E731


@pytest.fixture
def partial_reward(monkeypatch):
    """A non-empty answer scores: a reward that varies within groups for the tests' barely trained model (exact
    match would be 0 everywhere, and every advantage and gradient with it)."""
    monkeypatch.setattr(tasks.Arithmetic, "reward", staticmethod(lambda ex, text: float(len(text) > 0)))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A short supervised addition run (configs/tiny_task.py, a smaller model): the RL runs' init_from."""
    workdir = str(tmp_path_factory.mktemp("rl") / "sft")
    cfg = config_lib.build_config("configs/tiny_task.py", [
        ("model.d_model", "32"), ("model.ffn_dim", "64"), ("model.n_layers", "2"), ("train.steps", "30"),
        ("train.global_batch", "16")])
    train.train(cfg, workdir, log=QUIET, devices=jax.devices()[:1])
    return workdir


def rl_config(base_run, algorithm="grpo", **overrides):
    cfg = rundir.load_config(base_run)
    cfg.rl.algorithm, cfg.checkpoint.init_from = algorithm, base_run
    cfg.rl.prompts_per_step, cfg.rl.group_size = 8, 4
    cfg.rl.temperature = 3.0  # the barely trained model's completions differ (at 1 nearly all are empty)
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 2, 1, 1
    cfg.optim.schedule, cfg.optim.warmup_steps, cfg.optim.peak_lr = "constant", 0, 1e-3
    for k, v in overrides.items():
        config_lib.override(cfg, k.replace("__", "."), str(v))
    return cfg


def params_of(workdir, cfg, devices):
    setup = train.Setup(cfg, devices)
    from llada_jax import checkpoint
    return checkpoint.restore_params(workdir, setup.abstract_state()["params"], log=QUIET)[0]


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# -- host-side pieces -------------------------------------------------------------------------------------------

def test_through_first_eos_marks_what_d1_scores():
    c = np.array([[5, 6, 0, 0], [7, 0, 8, 0], [5, 6, 7, 8]])
    np.testing.assert_array_equal(rl_train.through_first_eos(c, 0),
                                  [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])


def test_preference_pairs_take_a_right_over_a_wrong_completion_of_one_prompt():
    rewards = [0, 1, 1, 0,  1, 1, 1, 1,  0, 0, 0, 1]
    chosen, rejected, weights = rl_train.preference_pairs(rewards, 4)
    np.testing.assert_array_equal(chosen, [1, 0, 11])
    np.testing.assert_array_equal(rejected, [0, 0, 8])
    np.testing.assert_array_equal(weights, [1, 0, 1])


def test_prompts_are_training_prompts_fixed_by_seed_and_step():
    task = tasks.get("arithmetic_small")
    a = rl_train.examples_at(task, 0, 3, 200)
    assert a == rl_train.examples_at(task, 0, 3, 200) and a != rl_train.examples_at(task, 0, 4, 200)
    for e in a:
        x, y = map(int, e.prompt.rstrip("=").split("+"))
        assert not task.held[x, y] and e.answer == str(x + y)


def test_countdown_rl_config_fits_its_prompts_and_answers_and_rewards_any_solution():
    cfg = config_lib.load_config("configs/rl_addition.py:vrpo,countdown")
    assert (cfg.rl.algorithm, cfg.data.synthetic_task, cfg.train.seq_len) == ("vrpo", "countdown", 20)
    assert rl_train.prompt_width(cfg) == len("9,9,9:99=") and cfg.sampling.gen_length == 11
    task = tasks.get("countdown")
    examples = rl_train.examples_at(task, 0, 0, 300)
    assert max(len(e.prompt) for e in examples) <= 9 and max(len(e.answer) for e in examples) < 11
    assert not any(task.held(*task.parse(e.prompt)) for e in examples)
    e = tasks.Example("7,3,5:22=", "5*3+7")  # the document's solution is one of several right ones
    assert [task.reward(e, a) for a in ("3*5+7", "7+5*3", "7*3+5", "7+3+5", "3*5+7+0")] == [1.0, 1.0, 0.0, 0.0, 0.0]


# -- the loop ----------------------------------------------------------------------------------------------------

def test_rewards_advantages_and_the_grpo_loss_match_a_direct_computation(base_run, one_device):
    cfg = rl_config(base_run, rl__beta="0.0")
    setup = rl_train.RLStep(train.Setup(cfg, one_device))
    state = loop.start_state(setup.setup, cfg, _NoCheckpoints(), QUIET)[0]
    key = jax.random.key(3)
    examples, host, rewards, texts = setup.rollouts(state["params"], 0, key)
    for i, text in enumerate(texts):  # the reward: exact match of the text through the first EOS
        ex = examples[i // 4]
        x, y = map(int, ex.prompt.rstrip("=").split("+"))
        assert rewards[i] == float(text == str(x + y))
        ids = [int(t) for t in host["completion"][i]]
        assert setup.codec.decode(ids[:ids.index(0)] if 0 in ids else ids) == text
    # the step's loss: sequence-normalised -A at ratio 1 (beta 0), float64 advantages with the sample std
    r = rewards.astype(np.float64).reshape(-1, 4)
    adv = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)
    mask = rl_train.through_first_eos(host["completion"], 0)
    batch = setup.put(**host, completion_mask=mask, advantages=adv.astype(np.float32))
    k = jax.random.key(4)
    logp = setup.logps(state["params"], batch, k)
    direct = rl.mean_field_logprobs(setup.model, state["params"], jnp.asarray(host["prompt"]),
                                    jnp.asarray(host["prompt_mask"]), jnp.asarray(host["completion"]),
                                    jnp.asarray(mask), k, mask_id=2, completion_key_mask=jnp.ones(mask.shape, bool))
    np.testing.assert_allclose(logp, direct, rtol=1e-5, atol=1e-6)
    # the gradient (grad_norm) against jax.grad of the direct formula: -mean_i A_i mean_t logp_it at ratio 1
    fixed = (np.arange(32) % 3 == 0).astype(np.float64).reshape(-1, 4)  # rewards that differ in every group
    adv = ((fixed - fixed.mean(1, keepdims=True)) / (fixed.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)
    batch = setup.put(**host, completion_mask=mask, advantages=adv.astype(np.float32))

    def direct_loss(params):
        lp = rl.mean_field_logprobs(setup.model, params, jnp.asarray(host["prompt"]), jnp.asarray(host["prompt_mask"]),
                                    jnp.asarray(host["completion"]), jnp.asarray(mask), k, mask_id=2,
                                    completion_key_mask=jnp.ones(mask.shape, bool))
        return -jnp.mean(jnp.asarray(adv, jnp.float32) * lp.sum(1) / mask.sum(1))
    g = jax.grad(direct_loss)(state["params"])
    norm = float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(g))))
    _, m = setup.grpo_step(state, batch, k)
    assert norm > 1e-3
    np.testing.assert_allclose(float(m["grad_norm"]), norm, rtol=1e-4)
    np.testing.assert_allclose(float(m["loss"]), -adv.mean(), atol=1e-5)  # 0: each group's advantages sum to 0
    assert float(m["clip_fraction"]) == 0.0 and abs(float(m["ratio"]) - 1.0) < 1e-6


class _NoCheckpoints:
    def restore(self, *a, **k):
        return None


def test_vrpo_loss_is_dpo_over_the_real_pairs_only(base_run, one_device):
    cfg = rl_config(base_run, "vrpo")
    setup = rl_train.RLStep(train.Setup(cfg, one_device))
    state = loop.start_state(setup.setup, cfg, _NoCheckpoints(), QUIET)[0]
    _, host, rewards, _ = setup.rollouts(state["params"], 0, jax.random.key(5))
    rewards = np.array([1, 0, 0, 0] * 4 + [1, 1, 1, 1] * 4, np.float32)  # pairs in the first 4 prompts only
    chosen, rejected, weights = rl_train.preference_pairs(rewards, 4)
    first = np.arange(8) * 4
    batch = setup.put(prompt=host["prompt"][first], prompt_mask=host["prompt_mask"][first],
                      chosen=host["completion"][chosen], rejected=host["completion"][rejected], weights=weights)
    ref = jax.tree.map(lambda x: x + 0.01 * jnp.sign(x), state["params"])  # a reference unlike the policy
    key = jax.random.key(6)
    k_w, k_l = jax.random.split(key)
    full = jnp.ones(batch["chosen"].shape, bool)
    elbo = lambda p, y, k: rl.elbo_logprob(setup.model, p, batch["prompt"], batch["prompt_mask"], y, full, k,  # noqa
                                           mask_id=2, n=cfg.rl.elbo_samples)
    scores = [np.asarray(elbo(p, y, k))[:4] for y, k in ((batch["chosen"], k_w), (batch["rejected"], k_l))
              for p in (state["params"], ref)]
    margin = 0.1 * ((scores[0] - scores[1]) - (scores[2] - scores[3]))
    _, m = setup.vrpo_step(state, ref, batch, key)  # donates state: after the direct scores
    np.testing.assert_allclose(float(m["loss"]), np.mean(np.log1p(np.exp(-margin))), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "vrpo"])
def test_resume_gives_the_uninterrupted_run_bit_for_bit(base_run, tmp_path, one_device, algorithm, partial_reward):
    cfg = rl_config(base_run, algorithm, train__steps=3, rl__inner_steps=2)
    straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
    rl_train.rl_train(cfg, straight, log=QUIET, devices=one_device)
    short = rl_config(base_run, algorithm, train__steps=2, rl__inner_steps=2)
    rl_train.rl_train(short, resumed, log=QUIET, devices=one_device)
    lines = []
    rl_train.rl_train(cfg, resumed, log=lines.append, devices=one_device)
    assert any("resuming from the checkpoint of step" in x for x in lines)
    a, b = params_of(straight, cfg, one_device), params_of(resumed, cfg, one_device)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    assert rows(straight) == [{**r, "seconds_per_step": rows(straight)[i]["seconds_per_step"]}
                              for i, r in enumerate(rows(resumed))]


@pytest.mark.slow
def test_one_rl_step_on_eight_devices_equals_one_device(base_run, tmp_path, partial_reward):
    # optim.adam_eps 1e-4: Adam's eps 1e-8 would turn the reduction-order noise of a near-zero gradient into a move
    # of up to lr (its sign), so the params are compared where the update is proportional to the gradient
    common = dict(train__steps=1, rl__inner_steps=2, optim__adam_eps=1e-4)
    cfg = rl_config(base_run, "grpo", **common)
    one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
    h1 = rl_train.rl_train(cfg, one, log=QUIET, devices=jax.devices()[:1])[1]
    cfg8 = rl_config(base_run, "grpo", mesh__data=2, mesh__fsdp=4, **common)
    h8 = rl_train.rl_train(cfg8, eight, log=QUIET, devices=jax.devices())[1]
    assert h1[0]["reward"] == h8[0]["reward"] and 0 < h1[0]["reward"] < 1 and h1[0]["grad_norm"] > 1e-3
    for k in ("loss", "kl", "clip_fraction", "grad_norm"):
        np.testing.assert_allclose(h8[0][k], h1[0][k], rtol=1e-4, atol=1e-6)
    a, b = params_of(one, cfg, jax.devices()[:1]), params_of(eight, cfg, jax.devices()[:1])
    base = params_of(base_run, cfg, jax.devices()[:1])
    moved = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a),
                                                                                     jax.tree.leaves(base)))
    assert moved > 1e-4  # the updates happened
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6), a, b)


@pytest.mark.slow
def test_lora_rl_trains_only_the_adapters_against_the_base_as_reference(base_run, tmp_path, one_device,
                                                                       partial_reward):
    cfg = rl_config(base_run, "grpo", train__steps=2, train__lora_rank=2, rl__beta=0.04)
    state, hist = rl_train.rl_train(cfg, str(tmp_path / "lora"), log=QUIET, devices=one_device)
    assert hist[0]["kl"] == 0.0 and hist[1]["kl"] > 0  # the reference is the policy until the adapters move
    setup = train.Setup(cfg, one_device)
    trainable, frozen = train.split_trainable(jax.device_get(state["params"]), setup.lora)
    base = params_of(base_run, rl_config(base_run), one_device)
    _, base_frozen = train.split_trainable({**base, "blocks": {**base["blocks"], **trainable["blocks"]}}, setup.lora)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), frozen, base_frozen)
    assert all(k.endswith(("_lora_a", "_lora_b")) or "_lora_" in k for k in trainable["blocks"])
    assert max(float(np.abs(np.asarray(v)).max()) for k, v in trainable["blocks"].items() if k.endswith("b")) > 0


def test_llada_rl_command_runs_and_logs_rewards(base_run, tmp_path, capsys):
    workdir = str(tmp_path / "cli")
    cli.main(["rl", "--config=configs/rl_addition.py", f"--workdir={workdir}",
              f"--config.checkpoint.init_from={base_run}", "--config.model.d_model=32", "--config.model.ffn_dim=64",
              "--config.model.n_layers=2", "--config.rl.prompts_per_step=8", "--config.rl.group_size=2",
              "--config.train.steps=2", "--config.train.log_every=1"])
    out = capsys.readouterr().out
    assert "rl step 2/2 reward" in out and "clip_fraction" in out and f"done: run directory {workdir}" in out
    assert [r["step"] for r in rows(workdir)] == [1, 2]


@pytest.mark.parametrize("key, value, error, message", [
    ("objective", "arm", rl.RLError, "objective=mdm"),
    ("checkpoint.init_from", "", rl.RLError, "init_from is empty"),
    ("rl.prompts_per_step", "3", rl.RLError, "multiple of the batch shards"),
    ("rl.algorithm", "ppo", settings.SettingsError, r"rl.algorithm='ppo'; expected one of grpo, vrpo\."),
    ("rl.group_size", "1", settings.SettingsError, "rl.group_size=1; expected at least 2"),
])
def test_bad_rl_settings_fail_with_what_to_do(base_run, key, value, error, message):
    cfg = rl_config(base_run)
    config_lib.override(cfg, key, value)
    with pytest.raises(error, match=message):
        rl_train.RLStep(train.Setup(cfg, jax.devices()[:2] if key == "rl.prompts_per_step" else jax.devices()[:1]))


def test_rl_rolls_back_after_non_finite_steps_and_records_goodput(base_run, tmp_path, one_device, monkeypatch,
                                                                  capsys):
    """The shared loop: NaN rewards at RL steps 3 and 4 (1-based) make non-finite updates; with nan_patience 2 the
    run restores step 2's checkpoint at a lower LR and runs steps 3.. again; events.jsonl makes `llada goodput` work;
    a hook every 2 steps sees the steps the loop reaches, the re-run ones included."""
    poisoned = {2, 3}  # 0-based RL steps, until the first rollback
    real = rl_train.RLStep.rollouts

    def rollouts(self, params, step, key):
        examples, host, rewards, texts = real(self, params, step, key)
        return examples, host, rewards * (np.nan if step in poisoned else 1.0), texts

    def resume(self, state, data_state, real_resume=rl_train.RLStep.resume):
        if data_state is not None:
            poisoned.clear()
        return real_resume(self, state, data_state)

    monkeypatch.setattr(rl_train.RLStep, "rollouts", rollouts)
    monkeypatch.setattr(rl_train.RLStep, "resume", resume)
    cfg = rl_config(base_run, train__steps=6, checkpoint__every_steps=2, train__nan_patience=2,
                    train__nan_lr_factor=0.5)
    workdir, lines, seen = str(tmp_path / "nan"), [], []
    state, history = rl_train.rl_train(cfg, workdir, log=lines.append, devices=one_device,
                                       hooks=[(lambda s, step: seen.append(step), 2)])
    assert [(h["step"], h["skipped"]) for h in history][:3] == [(1, 0), (2, 0), (3, 1)]
    assert "NaN guard: 2 consecutive non-finite steps up to RL step 4; restored the checkpoint of RL step 2 and set " \
           "the LR multiplier to 0.5" in lines
    assert [h["step"] for h in history][3:] == [3, 4, 5, 6] and not any(h["skipped"] for h in history[3:])
    assert seen == [2, 4, 4, 6]
    assert int(state["rollbacks"]) == 1 and float(state["lr_scale"]) == 0.5
    assert [r["step"] for r in rows(workdir)] == [1, 2, 3, 4, 5, 6]
    assert rows(workdir)[-1]["lr"] == pytest.approx(0.5 * cfg.optim.peak_lr)
    g = goodput.summarize(workdir)
    assert (g["rollbacks"], g["recomputed_steps"], g["productive_steps"]) == (1, 2, 6)
    cli.main(["goodput", f"--workdir={workdir}"])
    assert "6 steps kept, 2 recomputed; 1 process(es), 1 rollback(s)" in capsys.readouterr().out
