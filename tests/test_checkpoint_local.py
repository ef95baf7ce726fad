"""The local checkpoint tier (checkpoint.local_dir): the newest step of either tier resumes, bit for bit; a damaged
local step falls back to the persistent tier; a local directory belongs to one run; on two processes each keeps its
own shards and they fall back together (docs/checkpoints.md)."""
import os
import shutil
import signal
import subprocess

import pytest
from conftest import Crash, crash_at, losses
from test_checkpoint import _cli, _interrupt, _launcher, _run

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


# -- two processes (hosts): each keeps its own shards in local_dir/process_N (checkpoint.HostCheckpointer) ------------

def _two(workdir, *extra, ok=True):
    """`llada train` on 2 processes of 2 CPU devices each (asserts success when `ok`); the completed process."""
    cmd, env = _cli(workdir, *extra)
    out = subprocess.run(_launcher(f"{workdir}.logs", 2) + cmd, env=env, capture_output=True, text=True, timeout=600)
    assert (out.returncode == 0) == ok, out.stdout[-2000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_process_losses(tmp_path_factory):
    """The losses of an uninterrupted 2-process run without a local tier."""
    workdir = tmp_path_factory.mktemp("two") / "ref"
    _two(workdir, *TIERS)
    return losses(workdir)


def _saved(local, process):
    return checkpoint.saved_steps(str(local / f"process_{process}"))


@pytest.mark.slow
def test_two_processes_sigkilled_between_a_local_and_a_persistent_save_resume_from_the_local_step(
        two_process_losses, tmp_path):
    local, workdir = tmp_path / "shm", tmp_path / "run"
    tiers = (*TIERS, f"--config.checkpoint.local_dir={local}")
    code, _, _ = _interrupt(str(workdir), signal.SIGKILL, 13, *tiers, launcher=_launcher(tmp_path, 2))
    assert code == -signal.SIGKILL  # the launcher and both processes, at once
    assert checkpoint.saved_steps(str(workdir / "checkpoints")) == [8]
    common = max(set(_saved(local, 0)) & set(_saved(local, 1)))  # a save SIGKILL tore on one process only: older
    assert common >= 10
    out = _two(workdir, *tiers)
    assert f"resuming from the checkpoint of step {common} in {local / 'process_0'} (local tier)" in out.stdout
    assert losses(workdir) == two_process_losses  # bit for bit
    events = goodput.read_events(workdir)
    assert {e["step"] for e in events if e["event"] == "checkpoint_save_local"} >= {2, 4, 6, 10}
    assert {e["step"] for e in events if e["event"] == "checkpoint_save"} >= {8, 16}


@pytest.mark.slow
def test_two_processes_fall_back_together_when_one_lacks_the_newest_local_step(two_process_losses, tmp_path):
    """Process 1's newest local step damaged: both resume from the older step they both have; process 1's local
    directory lost (a replaced host): both resume from the persistent tier. Losses bit for bit each time. Last,
    another mesh is refused: a local step restores only onto the layout it was saved with."""
    local, workdir = tmp_path / "shm", tmp_path / "run"
    tiers = (*TIERS, f"--config.checkpoint.local_dir={local}")
    _two(workdir, *tiers)
    assert _saved(local, 0) == _saved(local, 1) == [12, 14]
    shutil.rmtree(workdir / "checkpoints" / "16")  # as if the run had died before its final save
    shutil.rmtree(local / "process_1" / "14" / "params" / "ocdbt.process_1" / "d")
    out = _two(workdir, *tiers)
    assert (f"local checkpoint step 14 in {local} is not complete on every process (missing or unreadable on "
            f"process(es) [1]); trying step 12.") in out.stdout
    assert f"resuming from the checkpoint of step 12 in {local / 'process_0'} (local tier)" in out.stdout
    assert losses(workdir) == two_process_losses
    for process in (0, 1):  # both set their step 14 aside (process 0's is intact, but alone) and saved it again
        names = os.listdir(local / f"process_{process}")
        assert "14" in names and any(n.startswith("14.unreadable.") for n in names)

    shutil.rmtree(workdir / "checkpoints" / "16")
    shutil.rmtree(local / "process_1")
    out = _two(workdir, *tiers)
    assert "local checkpoint step 12" in out.stdout and "using the persistent tier" in out.stdout
    assert f"resuming from the checkpoint of step 8 in {workdir / 'checkpoints'} (persistent tier)" in out.stdout
    assert losses(workdir) == two_process_losses

    shutil.rmtree(workdir / "checkpoints" / "16")
    assert _saved(local, 0) == _saved(local, 1) == [12, 14]
    out = _two(workdir, *tiers, "--config.mesh.data=2", ok=False)  # fsdp 4 -> 2: each process holds other slices
    assert "local checkpoint step 14 in" in out.stderr and "was saved with another layout of the state" in out.stderr
