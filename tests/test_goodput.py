"""Goodput accounting (llada_jax/goodput.py): the summary of hand-written events, worked out by hand, and the events of
a real run that crashes and resumes."""
import glob
import json
import os
import struct

import pytest
from conftest import Crash, crash_at, tiny_config

from llada_jax import cli, goodput, train

# Two processes. The first compiles, runs steps 1-15, saves step 10 and crashes mid-write; the second resumes from
# step 10 (steps 11-15 run again), runs 11-20, rolls back to step 16 (17-20 run again), runs 17-20 and finishes.
EVENTS = [
    {"time": 1000, "event": "start", "step": 0},
    {"time": 1010, "event": "compile", "seconds": 10, "step": 1, "block_size": None},
    {"time": 1020, "event": "steps", "first_step": 1, "last_step": 10, "seconds": 8},
    {"time": 1020, "event": "data_wait", "seconds": 1},
    {"time": 1021, "event": "checkpoint_save", "seconds": 1, "step": 10},
    {"time": 1030, "event": "steps", "first_step": 11, "last_step": 15, "seconds": 5},
    {"time": 1030, "event": "data_wait", "seconds": 0.5},
    {"time": 2000, "event": "start", "step": 10},
    {"time": 2003, "event": "checkpoint_restore", "seconds": 2, "step": 10},
    {"time": 2010, "event": "compile", "seconds": 6, "step": 11, "block_size": None},
    {"time": 2020, "event": "steps", "first_step": 11, "last_step": 20, "seconds": 8},
    {"time": 2020, "event": "data_wait", "seconds": 0.5},
    {"time": 2022, "event": "rollback", "from_step": 20, "to_step": 16, "seconds": 1},
    {"time": 2030, "event": "steps", "first_step": 17, "last_step": 20, "seconds": 4},
    {"time": 2030, "event": "data_wait", "seconds": 0.5},
    {"time": 2032, "event": "checkpoint_save", "seconds": 2, "step": 20},
    {"time": 2032, "event": "end", "step": 20, "reason": "done"},
]


def test_summary_of_known_events(tmp_path, capsys):
    lines = [json.dumps(e) for e in EVENTS]
    lines.insert(7, '{"time": 1031, "event": "ste')  # the first process's torn last line, then the next start
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    s = goodput.summarize(tmp_path)
    # Wall time: 1030 - 1000 + 2032 - 2000. Run again: steps 11-15 (5 s) and, of the span 11-20 (8 s for 10 steps),
    # steps 17-20 (3.2 s). Kept: 1-10 (8 s), 11-16 (4.8 s), 17-20 (4 s).
    assert s["total_seconds"] == 62 and s["processes"] == 2 and s["rollbacks"] == 1
    assert s["recomputed_steps"] == 9 and s["productive_steps"] == 20
    assert s["productive_seconds"] == pytest.approx(16.8)
    assert s["goodput"] == pytest.approx(16.8 / 62)
    want = {"compile": 16, "data_wait": 2.5, "checkpoint_save": 3, "checkpoint_save_local": 0, "checkpoint_restore": 3,
            "recomputed_steps": 8.2}
    want["other"] = 62 - 16.8 - sum(want.values())  # 12.5: start-up, logging, the steps lost with the crash
    assert s["badput"] == pytest.approx(want) and list(s["badput"]) == list(goodput.CAUSES)
    assert cli.main(["goodput", f"--workdir={tmp_path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("goodput: 27.1% (16.8 s of productive steps in 62.0 s of wall time; 20 steps kept, "
                             "9 recomputed")
    assert [line.split()[0] for line in out[1:]] == list(goodput.CAUSES)
    assert out[1].split()[1:] == ["16.0", "s", "25.8%"]  # compile: 16 s of 62 s


def test_a_new_process_starts_on_a_line_of_its_own(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"time": 1, "event": "start", "step": 0}\n{"time": 5, "ev')
    goodput.EventLog(tmp_path).emit("start", at=10, step=0)
    goodput.EventLog(tmp_path).emit("end", at=12, step=0, reason="done")
    assert goodput.summarize(tmp_path)["total_seconds"] == 2 and goodput.summarize(tmp_path)["processes"] == 2


def test_no_events_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="llada goodput: .*events.jsonl not found: no training events"):
        cli.main(["goodput", f"--workdir={tmp_path}"])


@pytest.mark.slow
def test_a_crash_and_resume_recompute_the_steps_after_the_last_checkpoint(tmp_path, one_device):
    """Crashed after logging step 5 (last checkpoint: step 4), then resumed to step 6: step 5 ran twice."""
    cfg = tiny_config()
    cfg.model.n_layers = 1
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 6, 1, 2
    with pytest.raises(Crash):
        train.train(cfg, str(tmp_path), log=crash_at(5), devices=one_device)
    train.train(cfg, str(tmp_path), log=lambda msg: None, devices=one_device)
    events = goodput.read_events(tmp_path)
    kinds = [e["event"] for e in events]
    assert [e["step"] for e in events if e["event"] == "start"] == [0, 4]
    assert [e["step"] for e in events if e["event"] == "checkpoint_restore"] == [4]
    assert [e["step"] for e in events if e["event"] == "compile"] == [1, 5]  # once per process
    assert [(e["first_step"], e["last_step"]) for e in events if e["event"] == "steps"] == [
        (s, s) for s in [1, 2, 3, 4, 5, 5, 6]]
    assert [e["step"] for e in events if e["event"] == "checkpoint_save"] == [2, 4, 6, 6]  # 6: the save, the wait
    assert kinds.count("end") == 1 and events[-1]["reason"] == "done"
    s = goodput.summarize(tmp_path)
    assert s["recomputed_steps"] == 1 and s["productive_steps"] == 6 and s["processes"] == 2
    assert 0 < s["goodput"] <= 1 and s["badput"]["compile"] > 0 and s["badput"]["checkpoint_restore"] > 0
    assert sum(s["badput"].values()) + s["productive_seconds"] == pytest.approx(s["total_seconds"])
    series = tensorboard_scalars(tmp_path)  # written at each persistent save and at the end
    assert [step for step, _ in series["goodput/goodput"]] == [2, 4, 6, 6]
    assert series["goodput/goodput"][-1][1] == pytest.approx(s["goodput"], rel=1e-6)
    assert series["goodput/badput_compile"][-1][1] == pytest.approx(s["badput"]["compile"] / s["total_seconds"],
                                                                     rel=1e-6)


def tensorboard_scalars(workdir):
    """{tag: [(step, value)]} of the scalars in a directory's TensorBoard event files, in file and write order
    (TFRecord framing: length u64, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        data, at = open(path, "rb").read(), 0
        while at < len(data):
            (n,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
            at += 16 + n
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out
