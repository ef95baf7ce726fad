"""End to end: `llada train` on the tiny config learns, and writes the run directory of the contract."""
import glob
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_llada_train_tiny_lowers_the_loss(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "train", f"--workdir={tmp_path}",
                          "--config.train.steps=250", "--config.train.log_every=25",
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
