"""The run directory's own files: one writer at a time (the lock), damaged config.json / metrics.jsonl / tokenizer."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from llada_jax import checkpoint, cli, rundir, train
from llada_jax.data import tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.model.d_model=32", "--config.model.n_layers=2", "--config.model.n_heads=4",
         "--config.model.n_kv_heads=2", "--config.model.ffn_dim=64", "--config.train.seq_len=16",
         "--config.train.global_batch=8", "--config.train.log_every=1", "--config.checkpoint.every_steps=3"]


def _write_lock(run_dir, **fields):
    os.makedirs(run_dir, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
              "process_start": rundir._process_start(os.getpid()), "command": "llada train (test)", "token": "x",
              **fields}
    with open(os.path.join(run_dir, rundir.LOCK_NAME), "w") as f:
        json.dump(holder, f)
    return holder


def _dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- the lock ----------------------------------------------------------------------------------------------------

def test_lock_is_taken_released_and_refuses_a_live_holder(tmp_path):
    lock = rundir.RunLock(str(tmp_path)).acquire()
    holder = json.load(open(tmp_path / rundir.LOCK_NAME))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(rundir.RunDirError, match=rf"is in use by another `llada train` \(host {socket.gethostname()}, "
                                                 rf"pid {os.getpid()}, started .*If that process is gone"):
        rundir.RunLock(str(tmp_path)).acquire()
    lock.release()
    assert not os.path.exists(tmp_path / rundir.LOCK_NAME)
    rundir.RunLock(str(tmp_path)).acquire().release()  # free again


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, monkeypatch):
    pid = _dead_pid()
    _write_lock(str(tmp_path / "dead"), pid=pid, process_start=None)
    messages = []
    with rundir.RunLock(str(tmp_path / "dead"), log=messages.append):
        assert json.load(open(tmp_path / "dead" / rundir.LOCK_NAME))["pid"] == os.getpid()
    assert len(messages) == 1 and "took over the stale lock" in messages[0] and f"process {pid} is gone" in messages[0]
    # a reused pid: alive, but not the process that took the lock (another start time)
    _write_lock(str(tmp_path / "reused"), process_start=-5)
    rundir.RunLock(str(tmp_path / "reused"), log=messages.append).acquire().release()
    assert f"process {os.getpid()} is gone" in messages[-1]
    # another host: judged by the heartbeat's age
    _write_lock(str(tmp_path / "remote"), host="node-7", pid=1)
    with pytest.raises(rundir.RunDirError, match="host node-7, pid 1"):
        rundir.RunLock(str(tmp_path / "remote")).acquire()
    old = time.time() - rundir.STALE_S - 10
    os.utime(tmp_path / "remote" / rundir.LOCK_NAME, (old, old))
    rundir.RunLock(str(tmp_path / "remote"), log=messages.append).acquire().release()
    assert "its heartbeat stopped" in messages[-1] and "host node-7" in messages[-1]
    # a torn lock file (a crash between creating and writing it), old enough
    with open(tmp_path / "remote" / rundir.LOCK_NAME, "w") as f:
        f.write('{"host": "no')
    os.utime(tmp_path / "remote" / rundir.LOCK_NAME, (old, old))
    rundir.RunLock(str(tmp_path / "remote"), log=messages.append).acquire().release()
    assert "it does not parse" in messages[-1]


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.05)
    lock = rundir.RunLock(str(tmp_path)).acquire()
    path = tmp_path / rundir.LOCK_NAME
    os.utime(path, (0, 0))
    deadline = time.time() + 10
    while os.path.getmtime(path) == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert time.time() - os.path.getmtime(path) < 5
    lock.release()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = rundir.RunLock(str(tmp_path)).acquire()
    other = _write_lock(str(tmp_path), token="someone-else")  # taken over meanwhile
    lock.release()
    assert json.load(open(tmp_path / rundir.LOCK_NAME)) == other


def _train_cmd(workdir, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return [sys.executable, "-m", "llada_jax.cli", "train", f"--workdir={workdir}", *SMALL, *extra], env


@pytest.mark.slow
def test_two_trains_on_one_directory_refuse_the_second_then_a_dead_holder_is_taken_over(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    cmd, env = _train_cmd(workdir, "--config.train.steps=100000")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not checkpoint.saved_steps(os.path.join(workdir, "checkpoints")) and time.time() < deadline:
            assert first.poll() is None
            time.sleep(0.2)
        host = socket.gethostname()
        with pytest.raises(SystemExit, match=rf"^llada train: {workdir} is in use by another `llada train` \(host "
                                             rf"{host}, pid {first.pid}, started .*, command: .*--config.train."
                                             rf"steps=100000\)\. Stop that run first"):
            cli.main(["train", f"--workdir={workdir}", *SMALL, "--config.train.steps=100000"])
        rows = len(open(os.path.join(workdir, "metrics.jsonl")).readlines())
        deadline = time.time() + 120
        while len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == rows and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None and len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) > rows
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert os.path.exists(os.path.join(workdir, rundir.LOCK_NAME))  # SIGKILL: nobody released it
    capsys.readouterr()
    assert cli.main(["train", f"--workdir={workdir}", *SMALL, "--config.train.steps=1"]) == 0
    out = capsys.readouterr().out
    assert f"warning: took over the stale lock {workdir}/{rundir.LOCK_NAME} (its process {first.pid} is gone" in out
    assert "resuming from the checkpoint of step" in out
    assert not os.path.exists(os.path.join(workdir, rundir.LOCK_NAME))


@pytest.mark.slow
def test_multihost_train_takes_the_lock_once_and_every_host_respects_it(tmp_path):
    launcher = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "--num_processes=2",
                "--devices_per_process=2", f"--log_dir={tmp_path}", "--"]
    holder = _write_lock(str(tmp_path / "held"))  # this test's own (live) process holds it
    cmd, env = _train_cmd(tmp_path / "held", "--config.train.steps=2")
    out = subprocess.run(launcher + cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert f"is in use by another `llada train` (host {holder['host']}, pid {os.getpid()}" in out.stderr
    other = open(tmp_path / "local_multiprocess.1.log").read()
    assert "process 0 could not take the run directory's lock; see its message." in other
    assert json.load(open(tmp_path / "held" / rundir.LOCK_NAME)) == holder  # untouched
    assert not os.path.exists(tmp_path / "held" / "checkpoints")


# -- damaged run files ---------------------------------------------------------------------------------------------

@pytest.fixture
def trained(tiny_cfg, tmp_path):
    tiny_cfg.train.steps, tiny_cfg.train.log_every, tiny_cfg.checkpoint.every_steps = 8, 1, 4
    workdir = str(tmp_path / "run")
    train.train(tiny_cfg, workdir, log=lambda m: None, devices=jax.devices()[:1])
    return tiny_cfg, workdir


@pytest.mark.slow
def test_a_damaged_config_json_is_read_from_the_checkpoint_copy(trained, capsys):
    cfg, workdir = trained
    path = os.path.join(workdir, "config.json")
    want = rundir.load_config(workdir).to_dict()
    with open(path, "r+") as f:
        f.truncate(os.path.getsize(path) // 2)
    messages = []
    assert rundir.load_config(workdir, log=messages.append).to_dict() == want
    assert len(messages) == 1 and messages[0].startswith(f"warning: {path} is damaged (JSONDecodeError: ")
    copy = f"{workdir}/checkpoints/8/config/metadata"
    assert f"checkpoint step 8 ({copy}). To repair the run directory: cp {copy} {path}" in messages[0]
    assert cli.main(["sample", f"--workdir={workdir}", "--prompt=1+1=", "--gen_length=4", "--steps=4",
                     "--block_length=4"]) == 0
    for step in (4, 8):
        os.remove(os.path.join(workdir, "checkpoints", str(step), "config", "metadata"))
    with pytest.raises(SystemExit, match=r"^llada sample: .*config.json is damaged \(JSONDecodeError: .*\) and no "
                                         r"checkpoint step keeps a readable copy; write the config"):
        cli.main(["sample", f"--workdir={workdir}", "--prompt=1+1="])


@pytest.mark.slow
def test_a_torn_metrics_line_is_dropped_on_resume(trained):
    cfg, workdir = trained
    path = os.path.join(workdir, "metrics.jsonl")
    rows = open(path).read().splitlines()
    with open(path, "w") as f:  # a crash mid-write of row 8 (after the save of step 8)
        f.write("\n".join(rows[:7]) + "\n" + rows[7][:10])
    messages = []
    assert [r["step"] for r in rundir.read_metrics(workdir, messages.append)] == list(range(1, 8))
    assert messages == [f"warning: dropped 1 line(s) of {path} that do not parse (line 8): torn by a crash "
                        f"mid-write."]
    cfg.train.steps = 10
    train.train(cfg, workdir, log=lambda m: None, devices=jax.devices()[:1])
    got = [json.loads(line) for line in open(path)]
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6, 7, 9, 10]  # 8 was torn and is not rerun
    assert [json.dumps(r) for r in got[:7]] == rows[:7]  # the rows kept are unchanged


@pytest.mark.slow
def test_fresh_start_drops_rows_of_a_run_that_never_saved(tiny_cfg, tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    tiny_cfg.train.steps, tiny_cfg.train.log_every = 2, 1
    train.train(tiny_cfg, str(tmp_path), log=lambda m: None, devices=jax.devices()[:1])
    rows = rundir.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] != 9.0


def test_a_damaged_tokenizer_is_one_line(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x0a\x05garbage, not a sentencepiece model")
    with pytest.raises(tokenizer.TokenizerError, match=rf"^tokenizer {path} cannot be read \(.*\): the file is "
                                                       r"damaged or not a sentencepiece model\. Restore it"):
        tokenizer.Tokenizer.load(str(path))


def test_a_damaged_hf_tokenizer_directory_is_one_line(tmp_path):
    from llada_jax import inference
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab"')
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(inference.InferenceError, match=rf"^tokenizer directory {tmp_path} cannot be read \(.*\): it "
                                                       r"is damaged or not a Hugging Face tokenizer\. Restore it"):
        inference.HFCodec(str(tmp_path))


def test_a_missing_config_json_is_not_a_run_directory(tmp_path):
    os.makedirs(tmp_path / "x")
    with pytest.raises(SystemExit, match=r"^llada sample: .*x/config.json not found: .* is not a llada run "
                                         r"directory"):
        cli.main(["sample", f"--workdir={tmp_path / 'x'}", "--prompt=1+1="])
