"""Checkpoints: exact resume (in-process and after SIGKILL), preemption, resharding, multi-host, NaN rollback."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Crash, crash_at, losses

from llada_jax import checkpoint, config as config_lib, goodput, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny test model as command-line overrides (for the subprocess tests).
SMALL = ["--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.n_heads=4",
         "--config.model.n_kv_heads=2", "--config.model.ffn_dim=64", "--config.train.seq_len=16",
         "--config.train.global_batch=8", "--config.train.log_every=1", "--config.checkpoint.every_steps=3",
         "--config.data.random_length_prob=0.2"]


@pytest.fixture
def cfg(tiny_cfg):
    tiny_cfg.train.steps, tiny_cfg.train.log_every, tiny_cfg.checkpoint.every_steps = 12, 1, 4
    tiny_cfg.data.random_length_prob = 0.2
    return tiny_cfg


@pytest.mark.slow
def test_resume_after_a_crash_is_bitwise_identical(cfg, tmp_path):
    train.train(cfg, str(tmp_path / "a"), log=lambda m: None)
    with pytest.raises(Crash):
        train.train(cfg, str(tmp_path / "b"), log=crash_at(10))  # crashes after step 10; last save at 8
    assert checkpoint.Checkpointer(str(tmp_path / "b" / "checkpoints"), cfg).latest_step() == 8
    messages = []
    train.train(cfg, str(tmp_path / "b"), log=messages.append)
    assert any("resuming from the checkpoint of step 8" in m for m in messages)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 13))  # logged steps 9 and 10 were dropped and run again, none repeated
    assert a == b  # bit for bit (floats printed with full precision)


@pytest.mark.slow
def test_params_only_restore_for_fine_tuning(cfg, tmp_path):
    state_a, _ = train.train(cfg, str(tmp_path / "a"), log=lambda m: None)
    cfg.checkpoint.init_from = str(tmp_path / "a")
    cfg.train.steps = 0
    state_b, _ = train.train(cfg, str(tmp_path / "b"), log=lambda m: None)
    for x, y in zip(jax.tree.leaves(state_a["params"]), jax.tree.leaves(state_b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(state_b["step"]) == 0
    assert float(jax.tree.leaves(state_b["opt_state"][1][0].mu)[0].sum()) == 0.0  # fresh optimizer


@pytest.mark.slow
def test_restore_across_meshes_8_to_2_to_1(cfg, tmp_path):
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 4, 2
    setup8 = train.Setup(cfg, jax.devices())
    state = setup8.init_state(seed=3)
    ck = checkpoint.Checkpointer(str(tmp_path), cfg)
    ck.save(0, state, {"step": 0}, cfg, force=True)
    ck.wait()
    want = jax.device_get(state)
    for n, mesh in ((2, (1, 2, 1)), (1, (1, 1, 1))):
        cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
        setup = train.Setup(cfg, jax.devices()[:n])
        got, data_state = ck.restore(setup.abstract_state())
        assert data_state == {"step": 0}
        q = got["params"]["blocks"]["q_proj"]
        assert len(q.sharding.device_set) == n
        for x, y in zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(want)):
            np.testing.assert_array_equal(x, y)
    ck.close()


@pytest.mark.slow
def test_corrupt_checkpoint_falls_back_to_the_previous_step(cfg, tmp_path):
    train.train(cfg, str(tmp_path), log=lambda m: None)  # saves 4, 8, 12
    params_dir = tmp_path / "checkpoints" / "12" / "params"
    for root, _, files in os.walk(params_dir):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    messages = []
    setup = train.Setup(cfg)
    state, _ = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), cfg).restore(setup.abstract_state(),
                                                                                   log=messages.append)
    assert int(state["step"]) == 8
    assert any("checkpoint step 12" in m and "cannot be read back" in m for m in messages)


@pytest.mark.slow
def test_shape_mismatch_lists_the_leaves(cfg, tmp_path):
    train.train(cfg, str(tmp_path), log=lambda m: None)
    cfg.model.d_model = 16
    with pytest.raises(checkpoint.CheckpointError, match=r"(?s)does not match.*params/blocks/q_proj: "
                                                         r"checkpoint \(2, 32, 4, 8\) vs config \(2, 16, 4, 4\)"):
        checkpoint.Checkpointer(str(tmp_path / "checkpoints"), cfg).restore(train.Setup(cfg).abstract_state())


class Poisoned:
    """A data source whose batches of `steps` (0-based) carry a `poison` flag, until the first rollback (set_state)."""

    def __init__(self, source, steps):
        self.source, self.steps, self.step = source, steps, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.source)
        flag = self.step in self.steps
        self.step += 1
        return {**batch, "poison": np.full(len(batch["tokens"]), flag, np.float32)}

    def get_state(self):
        return self.source.get_state()

    def set_state(self, state):
        self.source.set_state(state)
        self.steps = ()


@pytest.mark.slow
def test_nan_guard_skips_counts_and_rolls_back(cfg, tmp_path, monkeypatch):
    real_loss = train.objectives.loss_given_noise

    def loss_given_noise(model, params, batch, noise, cfg, *rest):  # non-finite loss and gradients if poisoned
        batch = dict(batch)
        poison = batch.pop("poison")
        loss, aux = real_loss(model, params, batch, noise, cfg, *rest)
        return loss * jnp.where(jnp.max(poison) > 0, jnp.nan, 1.0), aux

    monkeypatch.setattr(train.objectives, "loss_given_noise", loss_given_noise)
    cfg.train.nan_patience, cfg.train.nan_lr_factor = 3, 0.5
    messages = []
    data = Poisoned(train.make_data(cfg), steps=(5, 6, 7))  # steps 6, 7, 8 (1-based) are poisoned
    state, history = train.train(cfg, str(tmp_path), log=messages.append, data=data)
    first = [(h["step"], h["skipped_steps"]) for h in history][:7]  # before the rollback
    assert first == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 1), (7, 1)]  # step 8 triggers the rollback
    assert any("NaN guard: 3 consecutive non-finite steps up to step 8; restored the checkpoint of step 4" in m
               for m in messages)
    assert [h["step"] for h in history][7:] == list(range(5, 13))  # steps 5.. run again, unpoisoned
    assert int(state["rollbacks"]) == 1 and float(state["lr_scale"]) == 0.5
    rows = list(map(json.loads, open(tmp_path / "metrics.jsonl")))
    assert [r["step"] for r in rows] == list(range(1, 13))
    lr = train.optim.schedule(cfg)
    np.testing.assert_allclose(rows[-1]["lr"], 0.5 * float(lr(11)), rtol=1e-6)
    assert all(np.isfinite(r["loss"]) for r in rows)
    g = goodput.summarize(tmp_path)  # steps 5-8 ran again
    assert (g["rollbacks"], g["recomputed_steps"], g["productive_steps"]) == (1, 4, 12)


def _cli(workdir, *extra, env_extra=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **(env_extra or {})}
    return [sys.executable, "-m", "llada_jax.cli", "train", f"--workdir={workdir}", *SMALL, *extra], env


def _run(workdir, *extra):
    cmd, env = _cli(workdir, *extra)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _launcher(log_dir, devices_per_process):
    """The command prefix that runs a command as 2 processes on this machine (launch/local_multiprocess.py)."""
    return [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "--num_processes=2",
            f"--devices_per_process={devices_per_process}", f"--log_dir={log_dir}", "--"]


def _interrupt(workdir, sig, at_rows, *extra, launcher=()):
    """Sends `sig` to `llada train` (under `launcher`: to the launcher and every process it started) once
    metrics.jsonl has `at_rows` rows. Returns (exit code, stdout, stderr)."""
    cmd, env = _cli(workdir, *extra)
    proc = subprocess.Popen([*launcher, *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and sum(1 for _ in open(path)) >= at_rows:
            os.killpg(proc.pid, sig)  # its process group: the processes it started too
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume(tmp_path):
    _run(tmp_path / "ref", "--config.train.steps=24")
    want = losses(tmp_path / "ref")
    for trial, at in enumerate(np.random.default_rng(0).integers(4, 20, size=2)):
        workdir = tmp_path / f"kill{trial}"
        code, _, _ = _interrupt(str(workdir), signal.SIGKILL, int(at), "--config.train.steps=24")
        assert code == -signal.SIGKILL
        _run(workdir, "--config.train.steps=24")
        assert losses(workdir) == want  # no lost or repeated batches, bit for bit


@pytest.mark.slow
def test_sigkill_during_asynchronous_saves_then_resume(tmp_path):
    """A save every step (asynchronous): a kill at a random moment mostly lands inside a save."""
    extra = ("--config.train.steps=24", "--config.checkpoint.every_steps=1")
    _run(tmp_path / "ref", *extra)
    want = losses(tmp_path / "ref")
    rng = np.random.default_rng(1)
    for trial in range(3):
        workdir = tmp_path / f"kill{trial}"
        cmd, env = _cli(workdir, *extra)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # row N is written just before step N's save starts; 12 or more saving steps remain after it
        at_rows, delay = int(rng.integers(1, 13)), float(rng.uniform(0, 0.05))
        path, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if os.path.exists(path) and sum(1 for _ in open(path)) >= at_rows:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        assert proc.wait() == -signal.SIGKILL
        _run(workdir, *extra)
        assert losses(workdir) == want
        names = os.listdir(workdir / "checkpoints")
        assert not [n for n in names if "tmp" in n], names  # interrupted saves' temporary directories are removed


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resumes(tmp_path):
    _run(tmp_path / "ref", "--config.train.steps=16")
    code, out, err = _interrupt(str(tmp_path / "p"), signal.SIGTERM, 5, "--config.train.steps=16")
    assert code != 0 and "preempted (SIGTERM): saved the checkpoint of step" in err
    saved = int(err.split("checkpoint of step ")[1].split()[0])
    assert saved in checkpoint.Checkpointer(str(tmp_path / "p" / "checkpoints"),
                                            config_lib.default_config()).all_steps()
    out = _run(tmp_path / "p", "--config.train.steps=16")
    assert f"resuming from the checkpoint of step {saved}" in out.stdout
    assert losses(tmp_path / "p") == losses(tmp_path / "ref")
    ends = [e["reason"] for e in goodput.read_events(tmp_path / "p") if e["event"] == "end"]
    g = goodput.summarize(tmp_path / "p")  # a preemption saves the step it stops at: nothing runs again
    assert ends == ["preempted", "done"]
    assert (g["processes"], g["recomputed_steps"], g["productive_steps"]) == (2, 0, 16)


@pytest.mark.slow
def test_two_processes_equal_one_process_with_8_devices(tmp_path):
    extra = ["--config.train.steps=6", "--config.checkpoint.every_steps=3"]
    cmd, env = _cli(tmp_path / "one", *extra, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
    launcher = _launcher(tmp_path, 4)
    cmd, env = _cli(tmp_path / "two", *extra)
    out = subprocess.run(launcher + cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "in 2 process(es)" in out.stdout and out.stdout.count("done: run directory") == 1
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    np.testing.assert_allclose([two[s] for s in one], [one[s] for s in one], rtol=1e-6)
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == sorted(os.listdir(tmp_path / "one" / "checkpoints"))
    assert not os.path.exists(tmp_path / "two" / "llada.lock")  # taken by process 0, released at the end


@pytest.mark.slow
def test_two_processes_agree_on_the_fallback_step(tmp_path):
    """Process 0 judges the steps and both hosts follow it: a damaged newest step is skipped and set aside by a
    two-process run, which redoes the steps after the fallback with the losses it logged the first time."""
    extra = ["--config.train.steps=6", "--config.checkpoint.every_steps=3"]
    launcher = _launcher(tmp_path, 2)
    cmd, env = _cli(tmp_path / "run", *extra)
    assert subprocess.run(launcher + cmd, env=env, capture_output=True, timeout=600).returncode == 0
    first = losses(tmp_path / "run")
    os.remove(tmp_path / "run" / "checkpoints" / "6" / "params" / "manifest.ocdbt")
    out = subprocess.run(launcher + cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoint step 6" in out.stdout and "cannot be read back" in out.stdout
    assert "resuming from the checkpoint of step 3" in out.stdout
    names = os.listdir(tmp_path / "run" / "checkpoints")
    assert sorted(n for n in names if n.isdigit()) == ["3", "6"] and any(n.startswith("6.unreadable.") for n in names)
    assert losses(tmp_path / "run") == first
