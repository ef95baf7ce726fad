"""The local checkpoint tier (checkpoint.local_dir): the newest step of either tier resumes, bit for bit; a damaged
local step falls back to the persistent tier; a local directory belongs to one run (docs/checkpoints.md)."""
import os
import shutil
import signal

import pytest
from conftest import Crash, crash_at, losses
from test_checkpoint import _interrupt, _run

from llada_jax import checkpoint, goodput, train

TIERS = ("--config.train.steps=16", "--config.checkpoint.every_steps=8", "--config.checkpoint.local_every_steps=2")


@pytest.fixture
def cfg(tiny_cfg, tmp_path):
    tiny_cfg.train.steps, tiny_cfg.train.log_every = 12, 1
    tiny_cfg.checkpoint.every_steps, tiny_cfg.checkpoint.local_every_steps = 4, 2
    tiny_cfg.checkpoint.local_dir = str(tmp_path / "local")
    return tiny_cfg


@pytest.mark.slow
def test_sigkill_between_a_local_and_a_persistent_save_resumes_from_the_local_step(tmp_path):
    _run(tmp_path / "ref", *TIERS)  # no local tier: the losses of an uninterrupted run
    local, workdir = tmp_path / "shm", tmp_path / "run"
    tiers = (*TIERS, f"--config.checkpoint.local_dir={local}")
    code, _, _ = _interrupt(str(workdir), signal.SIGKILL, 13, *tiers)  # persistent: 8; local: 10 (and maybe 12)
    assert code == -signal.SIGKILL
    assert checkpoint.saved_steps(str(workdir / "checkpoints")) == [8]
    local_steps = checkpoint.saved_steps(str(local))
    assert local_steps[-1] >= 10 and 8 not in local_steps  # a step due in both tiers goes to the persistent one
    out = _run(workdir, *tiers)
    assert f"resuming from the checkpoint of step {local_steps[-1]} in {local} (local tier)" in out.stdout
    assert losses(workdir) == losses(tmp_path / "ref")  # bit for bit
    events = goodput.read_events(workdir)
    assert {e["step"] for e in events if e["event"] == "checkpoint_save_local"} >= {2, 4, 6, 10}
    assert {e["step"] for e in events if e["event"] == "checkpoint_save"} == {8, 16}
    assert goodput.summarize(workdir)["badput"]["checkpoint_save_local"] > 0


@pytest.mark.slow
def test_a_damaged_or_torn_local_step_falls_back_to_the_persistent_tier(cfg, tmp_path):
    reference = cfg.copy_and_resolve_references()
    reference.checkpoint.local_dir = ""
    train.train(reference, str(tmp_path / "ref"), log=lambda m: None)
    with pytest.raises(Crash):
        train.train(cfg, str(tmp_path / "run"), log=crash_at(11))  # persistent: 4, 8; local: 2, 6, 10
    local = cfg.checkpoint.local_dir
    assert checkpoint.saved_steps(local) == [6, 10]
    shutil.rmtree(os.path.join(local, "10", "params", "d"))  # damage the newest local step's array data
    os.makedirs(os.path.join(local, "12.orbax-checkpoint-tmp-1234"))  # a save a crash tore
    messages = []
    train.train(cfg, str(tmp_path / "run"), log=messages.append)
    text = "\n".join(messages)
    assert "checkpoint step 10 in" in text and "cannot be read back" in text
    assert f"resuming from the checkpoint of step 8 in {tmp_path / 'run' / 'checkpoints'} (persistent tier)" in text
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    names = os.listdir(local)
    assert any(n.startswith("10.unreadable.") for n in names)  # set aside, not deleted
    assert not [n for n in names if "tmp" in n], names  # the torn save's temporary directory is removed


def test_a_local_directory_belongs_to_one_run(cfg, tmp_path):
    checkpoint.Tiers(str(tmp_path / "a"), cfg).close()
    with pytest.raises(checkpoint.CheckpointError, match="holds the local checkpoints of the run .*a; give each run"):
        checkpoint.Tiers(str(tmp_path / "b"), cfg)
    cfg.checkpoint.local_every_steps = 0
    with pytest.raises(checkpoint.CheckpointError, match="local_every_steps=0"):
        checkpoint.Tiers(str(tmp_path / "a"), cfg)
