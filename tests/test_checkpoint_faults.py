"""Damaged checkpoints (issue: a torn checkpoint must not stop a run).

The fault matrix: each kind of file in a checkpoint step, emptied, truncated or removed, in the newest step or in an
older one. A run that crashed after saving steps 4, 8 and 12 is damaged, then resumed to step 16: it always reaches
step 16 with the losses of an uninterrupted run, from the newest step that reads back, and a damaged newest step is
set aside (renamed, not deleted) before step 12 is saved again. The readers (`sample`, `eval`, `convert to-hf`) use
the newest step whose params read back. docs/checkpoints.md records the matrix.
"""
import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import Crash, crash_at, losses, tiny_config
from jax.experimental.compilation_cache import compilation_cache

from llada_jax import checkpoint, cli, inference, train
from llada_jax.convert import hf

MODES = ("empty", "truncate", "remove")
# kind -> (files under the step directory, the modes after which the step still reads back: orbax does not need
# the file, or (removed) does without it; every other fault makes the step unreadable).
KINDS = {
    "step metadata": ("_CHECKPOINT_METADATA", MODES),
    "commit marker": ("commit_success.txt", MODES),
    "params tree metadata": ("params/_METADATA", ("remove",)),
    "params sharding metadata": ("params/_sharding", ("remove",)),
    "params array metadata": ("params/array_metadatas/*", ("remove",)),
    "params index": ("params/manifest.ocdbt", ()),
    "params array data": ("params/d/*", ()),
    "optimizer index": ("train/manifest.ocdbt", ()),
    "optimizer array data": ("train/d/*", ()),
    "data-iterator state": ("data/metadata", ()),
    "config copy": ("config/metadata", MODES),
}
STEPS = 16


def damage(step_dir, pattern, mode):
    files = glob.glob(os.path.join(step_dir, pattern))
    assert files, f"no {pattern} in {step_dir}"
    for f in files:
        if mode == "remove":
            os.remove(f)
        else:
            with open(f, "r+b") as fh:
                fh.truncate(0 if mode == "empty" else os.path.getsize(f) // 2)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """Every run here compiles the same step: the persistent compilation cache compiles it once."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    before = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path_factory.mktemp("jax_cache")), 0, 0)):
        jax.config.update(k, v)
    yield
    for k, v in before.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()  # else the cache stays initialised and later modules' compiles are written to it


def make_cfg():
    cfg = tiny_config()
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = STEPS, 1, 4
    cfg.data.random_length_prob = 0.2
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compile_cache):
    """(reference losses, a run that crashed after saving steps 4, 8, 12, the directory to copy runs into)."""
    root = tmp_path_factory.mktemp("faults")
    train.train(make_cfg(), str(root / "ref"), log=lambda m: None, devices=jax.devices()[:1])
    with pytest.raises(Crash):
        train.train(make_cfg(), str(root / "base"), log=crash_at(STEPS - 3), devices=jax.devices()[:1])
    assert checkpoint.saved_steps(str(root / "base" / "checkpoints")) == [4, 8, 12]
    return losses(root / "ref"), str(root / "base"), root


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("where", ["newest", "older"])
def test_fault_matrix_resumes_with_the_uninterrupted_losses(runs, kind, mode, where):
    ref, base, root = runs
    workdir = str(root / f"{where}-{kind.replace(' ', '_')}-{mode}")
    shutil.copytree(base, workdir)
    pattern, still_read = KINDS[kind]
    damaged = 12 if where == "newest" else 8
    damage(os.path.join(workdir, "checkpoints", str(damaged)), pattern, mode)
    messages = []
    train.train(make_cfg(), workdir, log=messages.append, devices=jax.devices()[:1])
    falls_back = where == "newest" and mode not in still_read
    resumed = 8 if falls_back else 12
    assert any(m.startswith(f"resuming from the checkpoint of step {resumed} ") for m in messages), messages
    assert losses(workdir) == ref  # every step 1..16, bit for bit: the fallback step's data state and RNG included
    ckpt_dir = os.path.join(workdir, "checkpoints")
    aside = glob.glob(os.path.join(ckpt_dir, "12.unreadable.*"))
    if falls_back:
        assert any("checkpoint step 12" in m and "cannot be read back" in m for m in messages)
        assert len(aside) == 1 and any(f"set aside the unreadable checkpoint step 12 as {aside[0]}" in m
                                       for m in messages)
        if mode != "remove":  # the damaged files are kept as they were
            assert glob.glob(os.path.join(aside[0], pattern))
    else:
        assert not aside and not any("cannot be read back" in m for m in messages)
    assert checkpoint.saved_steps(ckpt_dir) == [8, 12, 16]


@pytest.mark.slow
def test_readers_use_the_newest_step_whose_params_read_back(runs, tmp_path, capsys):
    _, base, _ = runs
    workdir = str(tmp_path / "run")
    shutil.copytree(base, workdir)
    damage(os.path.join(workdir, "checkpoints", "12"), "params/d/*", "empty")
    want = checkpoint.restore_params(base, inference.load_run(base).model.abstract_params(), step=8)[0]
    run = inference.load_run(workdir)  # sample, chat and eval load runs this way
    assert run.step == 8
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = capsys.readouterr().out
    assert "checkpoint step 12" in out and "cannot be read back" in out and "trying step 8" in out
    assert cli.main(["sample", f"--workdir={workdir}", "--prompt=12+34=", "--gen_length=4", "--steps=4",
                     "--block_length=4"]) == 0
    assert cli.main(["eval", f"--workdir={workdir}", "--perplexity=8", "--tasks=none",
                     f"--out={tmp_path / 'eval.json'}"]) == 0
    assert json.load(open(tmp_path / "eval.json"))["step"] == 8
    got = hf.to_hf(workdir, str(tmp_path / "hf"), log=lambda m: None)
    ref = hf.to_hf(base, str(tmp_path / "hf8"), step=8, log=lambda m: None)
    assert got["step"] == ref["step"] == 8
    for name in got["shards"]:
        assert open(tmp_path / "hf" / name, "rb").read() == open(tmp_path / "hf8" / name, "rb").read()
    assert not glob.glob(os.path.join(workdir, "checkpoints", "*.unreadable.*"))  # readers never move files


@pytest.mark.slow
def test_an_unreadable_requested_step_and_no_readable_step_are_one_line_errors(runs, tmp_path):
    _, base, _ = runs
    workdir = str(tmp_path / "run")
    shutil.copytree(base, workdir)
    damage(os.path.join(workdir, "checkpoints", "12"), "params/manifest.ocdbt", "remove")
    with pytest.raises(SystemExit, match=r"checkpoint step 12 in .* cannot be read back \(params: .*\); omit --step"):
        cli.main(["sample", f"--workdir={workdir}", "--prompt=1+1=", "--step=12"])
    for step in (4, 8):
        damage(os.path.join(workdir, "checkpoints", str(step)), "params/manifest.ocdbt", "remove")
    with pytest.raises(SystemExit, match=r"no checkpoint step in .* can be read back \(tried \[12, 8, 4\]; step 12: "
                                         r"params: .*\)\. Restore the files from a copy, or move .* away"):
        cli.main(["sample", f"--workdir={workdir}", "--prompt=1+1="])
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint step in .* can be read back"):
        # never restarts a run from scratch silently
        train.train(make_cfg(), workdir, log=lambda m: None, devices=jax.devices()[:1])
