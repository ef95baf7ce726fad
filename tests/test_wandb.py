"""logging.wandb: a training run logs its metrics rows, config and checkpoint steps to a Weights & Biases run (offline
here, read back from its transaction log), and a resumed run continues the same W&B run."""
import glob
import json
import os
import struct
import sys

import pytest
from conftest import losses, tiny_config

from llada_jax import loop, settings, train

wandb_internal_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="the `test` extra installs wandb")

BLOCK = 32768


def records(path):
    """The records of a W&B transaction log (`run-ID.wandb`, what `wandb sync` uploads): a 7-byte file header, then
    LevelDB-log blocks of 32 KiB holding chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last), a block's
    tail shorter than a chunk header zero-filled."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    out, record, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        record += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(record))
            record = b""
    return out


def read_run(run_dir):
    """(run id, config {key: value}, history {step: {key: value}}) of an offline run directory."""
    (path,) = glob.glob(os.path.join(run_dir, "*.wandb"))
    run_id, config, history = None, {}, {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id = r.run.run_id
            config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
        elif kind == "history":
            row = {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.history.item}
            history[row.pop("_step")] = row
    return run_id, config, history


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for name, value in [("WANDB_SILENT", "true"), ("WANDB_MODE", "offline")]:
        monkeypatch.setenv(name, value)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written to the home directory
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))


@pytest.mark.slow
def test_an_offline_run_logs_the_metrics_and_resumes_the_same_run(offline, tmp_path, one_device):
    cfg = tiny_config()
    cfg.model.n_layers = 1
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 4, 1, 2
    cfg.logging.wandb = "offline"
    workdir = tmp_path / "run"
    train.train(cfg, str(workdir), log=lambda msg: None, devices=one_device)
    (first,) = glob.glob(str(workdir / "wandb" / "offline-run-*"))
    run_id = (workdir / "wandb_id").read_text()
    assert first.endswith(f"-{run_id}")
    got_id, config, history = read_run(first)
    assert got_id == run_id and config["train"]["steps"] == 4 and config["logging"]["wandb"] == "offline"
    assert {step: row["loss"] for step, row in history.items()} == losses(workdir)  # every metrics.jsonl row
    assert {step for step, row in history.items() if "checkpoint_step" in row} == {2, 4}
    assert all(row["checkpoint_step"] == step for step, row in history.items() if "checkpoint_step" in row)

    cfg.train.steps = 6
    train.train(cfg, str(workdir), log=lambda msg: None, devices=one_device)
    runs = sorted(glob.glob(str(workdir / "wandb" / "offline-run-*")))
    assert len(runs) == 2 and all(r.endswith(f"-{run_id}") for r in runs)
    second = next(r for r in runs if r != first)
    got_id, config, history = read_run(second)
    assert got_id == run_id and config["train"]["steps"] == 6
    assert {step: row["loss"] for step, row in history.items()} == {s: v for s, v in losses(workdir).items() if s > 4}


def test_without_wandb_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    cfg = tiny_config()
    cfg.logging.wandb = "online"
    with pytest.raises(loop.LoopError, match=r"logging.wandb='online' needs the wandb package: pip install wandb"):
        loop.MetricsWriter(str(tmp_path), cfg)


def test_an_unknown_wandb_mode_is_refused(one_device):
    cfg = tiny_config()
    cfg.logging.wandb = "on"
    with pytest.raises(settings.SettingsError, match=r"logging.wandb='on'; expected one of off, online, offline"):
        train.Setup(cfg, one_device)
