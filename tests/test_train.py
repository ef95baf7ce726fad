"""End to end: `llada train` on the tiny pre-training config learns, and writes the run directory of the contract."""
import glob
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_llada_train_tiny_lowers_the_loss(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "train", "--config=configs/tiny_pretrain.py",
                          f"--workdir={tmp_path}", "--config.train.steps=250", "--config.train.log_every=25",
                          "--config.train.profile_steps=5:2"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 250/250" in out.stdout and "tok/s" in out.stdout and "eta" in out.stdout
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(25, 251, 25))
    for r in rows:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu"} <= set(r)
        assert 0 < r["mfu"] < 1 and r["tokens_per_sec"] > 0
    # uniform over 58 characters is ln 58 = 4.06 at the masked positions; the model must do far better
    assert rows[0]["loss"] > 2.5
    assert rows[-1]["loss"] < 0.75 * rows[0]["loss"]
    cfg = json.load(open(tmp_path / "config.json"))
    assert cfg["train"]["steps"] == 250 and cfg["model"]["d_model"] == 128
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    # the profiler switch: a trace of steps 5..6, viewable in TensorBoard (xplane) and Perfetto (trace.json.gz)
    assert "profiler: trace of steps 5..6 written to" in out.stdout
    assert glob.glob(str(tmp_path / "profile/**/*.xplane.pb"), recursive=True)
    assert glob.glob(str(tmp_path / "profile/**/*.trace.json.gz"), recursive=True)


@pytest.mark.slow
def test_block_size_schedule_compiles_once_per_size(tiny_cfg, one_device):
    """diffusion.block_size_schedule: each step runs with its scheduled block size (the loss of a step = that of a
    run with the size fixed), and the step compiles once per distinct size, not once per change."""
    import jax
    import numpy as np

    from llada_jax import diffusion, train
    from llada_jax.data import synthetic
    cfg = tiny_cfg
    cfg.objective, cfg.diffusion.block_size = "block", 8
    cfg.diffusion.block_size_schedule = [(2, 2), (4, 16), (5, 2)]  # then 8: sizes 2, 16, 2, 8
    want = [2, 2, 16, 16, 2, 8, 8]
    assert [diffusion.block_size(cfg, s) for s in range(7)] == want and diffusion.block_sizes(cfg) == [2, 8, 16]
    tokens = cfg.copy_and_resolve_references()  # the same schedule in training tokens (a step's tokens before it)
    tps = cfg.train.global_batch * cfg.train.seq_len
    tokens.diffusion.block_size_schedule_unit = "tokens"
    tokens.diffusion.block_size_schedule = [(2 * tps, 2), (3 * tps + 1, 16), (5 * tps - 1, 2)]
    assert [diffusion.block_size(tokens, s) for s in range(7)] == want and diffusion.block_sizes(tokens) == [2, 8, 16]
    batches = [synthetic.SyntheticCorpus(cfg.train.seq_len, 0).batch(s, cfg.train.global_batch) for s in range(7)]
    setup = train.Setup(cfg, one_device)
    state, losses = setup.init_state(), []
    for s in range(7):
        state, metrics = setup.step(state, setup.put_batch(batches[s]), s)
        losses.append(float(metrics["loss"]))
    assert setup.step_fn._cache_size() == 3
    fixed = cfg.copy_and_resolve_references()
    fixed.diffusion.block_size_schedule, fixed.diffusion.block_size = [], 16
    ref = train.Setup(fixed, one_device)
    params = jax.device_get(state["params"])  # any params: compare the loss of step 2's batch and key
    key = jax.random.fold_in(jax.random.wrap_key_data(ref.init_state()["rng"]), 2)
    loss = lambda s, *size: jax.jit(lambda p, b, k: s.loss_and_grads(p, b, k, *size)[0])(
        params, s.put_batch(batches[2]), key)
    np.testing.assert_allclose(float(loss(ref)), float(loss(setup, 16)), rtol=1e-6)
    assert np.all(np.isfinite(losses))
    cfg.diffusion.block_size_schedule = [(4, 16), (2, 2)]
    with pytest.raises(train.TrainError, match="increasing until"):
        train.Setup(cfg, one_device)
    cfg.diffusion.block_size_schedule = [(4, 5)]
    with pytest.raises(train.TrainError, match="multiple of diffusion.block_size=5"):
        train.Setup(cfg, one_device)
