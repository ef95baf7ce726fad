"""Sweeps: expansion of axes, sweep-file errors, run sharing, launch commands, one tiny sweep end to end (trained,
evaluated, skipped when rerun, results table and plots), and the same sweep launched as local jobs and collected."""
import contextlib
import csv
import io
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest

from llada_jax import cli, sweep
from llada_jax.sweep import product, zipit

REPO = Path(__file__).resolve().parent.parent


def test_product_and_zipit_expand_to_the_expected_points():
    a = sweep.sweep("objective", ["mdm", "arm"])
    assert a == [{"objective": "mdm"}, {"objective": "arm"}]
    z = zipit([sweep.sweep("model.d_model", [32, 64]), sweep.sweep("model.ffn_dim", [64, 128])])
    assert z == [{"model.d_model": 32, "model.ffn_dim": 64}, {"model.d_model": 64, "model.ffn_dim": 128}]
    p = product([a, z, [{"seed": 1}]])
    assert p == [
        {"objective": "mdm", "model.d_model": 32, "model.ffn_dim": 64, "seed": 1},
        {"objective": "mdm", "model.d_model": 64, "model.ffn_dim": 128, "seed": 1},
        {"objective": "arm", "model.d_model": 32, "model.ffn_dim": 64, "seed": 1},
        {"objective": "arm", "model.d_model": 64, "model.ffn_dim": 128, "seed": 1},
    ]
    assert product([a]) == a and zipit([a]) == a


@pytest.mark.parametrize("build, message", [
    (lambda: zipit([sweep.sweep("a", [1, 2]), sweep.sweep("b", [1])]), r"different lengths \[2, 1\]"),
    (lambda: product([sweep.sweep("a", [1]), sweep.sweep("a", [2])]), r"same key\(s\) \['a'\]"),
    (lambda: product([["objective"]]), "list of {config key: value} dicts"),
    (lambda: sweep.sweep("a", []), "at least one value"),
])
def test_bad_axes_say_what_is_wrong(build, message):
    with pytest.raises(sweep.SweepError, match=message):
        build()


def test_point_names_and_shared_runs():
    points = product([sweep.sweep("objective", ["mdm", "arm"]),
                      sweep.sweep("sampling.remasking", ["random", "low_confidence"])])
    items = sweep.plan(points, "W")
    assert [it["name"] for it in items][:2] == ["objective=mdm,sampling.remasking=random",
                                                "objective=mdm,sampling.remasking=low_confidence"]
    assert [it["run_dir"] for it in items] == [os.path.join("W", "objective=mdm")] * 2 + \
        [os.path.join("W", "objective=arm")] * 2  # eval-only differences share one trained run
    assert items[1]["eval_path"] == os.path.join("W", "objective=mdm", "sampling.remasking=low_confidence",
                                                 "eval.json")
    only_train = sweep.plan(sweep.sweep("data.path", ["a/b", "c"]), "W")
    assert only_train[0]["eval_path"] == os.path.join("W", "data.path=a_b", "eval.json")  # '/' made safe
    assert sweep.plan([{"sampling.steps": 4}], "W")[0]["run_dir"] == os.path.join("W", "base")


def write_sweep(tmp_path, body, name="s.py"):
    path = tmp_path / name
    path.write_text("from llada_jax.sweep import product, sweep, zipit\n\n" + body)
    return str(path)


@pytest.mark.parametrize("body, message", [
    ("X = 1\n", r"defines no get_sweep\(\)"),
    ("def get_sweep():\n    return [{'seed': 1}]\n", r"expected a pair \(base config spec"),
    ("def get_sweep():\n    return 'configs/tiny.py', []\n", "returned no points"),
    ("def get_sweep():\n    return 'configs/tiny.py', [{'seed': 1}, {'seed': 1}]\n", r"points repeat: \['seed=1'\]"),
    ("def get_sweep():\n    return 'configs/tiny.py', ['seed=1']\n", "list of {config key: value} dicts"),
])
def test_bad_sweep_files_say_what_is_wrong(tmp_path, body, message):
    with pytest.raises(sweep.SweepError, match=message):
        sweep.load_sweep(write_sweep(tmp_path, body))


def test_missing_sweep_file_and_unknown_key_through_the_command(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"sweep file 'nope.py' not found.*built-in: .*mdm_vs_arm"):
        cli.main(["sweep", "--sweep=nope.py", f"--workdir={tmp_path}"])
    bad = write_sweep(tmp_path, "def get_sweep():\n    return 'configs/tiny.py', sweep('model.d_modle', [8])\n")
    with pytest.raises(SystemExit, match=r"sweep point model.d_modle=8: unknown config key --config.model.d_modle"
                                         r".*--config.model.d_model"):
        cli.main(["sweep", f"--sweep={bad}", f"--workdir={tmp_path / 'w'}"])
    assert not (tmp_path / "w").exists()  # every point is checked before anything trains
    bad = write_sweep(tmp_path, "def get_sweep():\n    return 'configs/tiny.py', sweep('eval.tasks', ['reversal', "
                                "'revresal'])\n", name="t.py")
    with pytest.raises(SystemExit, match=r"sweep point eval.tasks=revresal: unknown task 'revresal'; expected one "
                                         r"of arithmetic, arithmetic_small, reversal"):
        cli.main(["sweep", f"--sweep={bad}", f"--workdir={tmp_path / 'w'}"])
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["mdm_vs_arm", "remasking", "random_length", "reversal", "block_sizes", "seeds"])
def test_builtin_sweeps_build_valid_configs(name):
    base, points = sweep.load_sweep(f"configs/sweeps/{name}.py")
    for p in points:
        cfg = sweep.build(base, [], p)
        for k, v in p.items():
            node = cfg
            for part in k.split("."):
                node = node[part]
            assert node == v
    if name == "mdm_vs_arm":  # equal training FLOPs: the ARM (half the attention FLOPs) trains a few more steps
        rows = sweep.collect(sweep.plan(points, "/nonexistent"), [sweep.build(base, [], p) for p in points])
        flops = [r["train_flops"] for r in rows]
        assert max(flops) / min(flops) < 1.002
        steps = {(p["objective"], p["model.d_model"]): p["train.steps"] for p in points}
        assert steps[("mdm", 128)] == 600 and 600 < steps[("arm", 128)] < 640
    if name == "block_sizes":  # equal training FLOPs: block diffusion ([x_t ; x_0]) trains about half the steps
        rows = sweep.collect(sweep.plan(points, "/nonexistent"), [sweep.build(base, [], p) for p in points])
        flops = [r["train_flops"] for r in rows]
        assert max(flops) / min(flops) < 1.002
        assert [p["train.steps"] for p in points] == [2400, 2424, 1218, 1218]
    if name == "remasking":  # one trained model, four evaluations
        assert len({it["run_dir"] for it in sweep.plan(points, "W")}) == 1


def test_print_commands(capsys):
    cli.main(["sweep", "--sweep=configs/sweeps/reversal.py", "--workdir=out", "--config.train.steps=10",
              "--print_commands"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "llada train --config=configs/tiny_task.py:reversal --config.train.steps=10 --config.objective=mdm "
        "--workdir=out/objective=mdm",
        "llada train --config=configs/tiny_task.py:reversal --config.train.steps=10 --config.objective=arm "
        "--workdir=out/objective=arm",
    ]
    # Runs shared by eval-only points are launched once.
    cli.main(["sweep", "--sweep=configs/sweeps/remasking.py", "--workdir=out", "--print_commands"])
    assert capsys.readouterr().out.splitlines() == [
        "llada train --config=configs/tiny_task.py --workdir=out/base"]


def test_an_override_that_a_sweep_axis_replaces_is_warned_about(capsys):
    cli.main(["sweep", "--sweep=configs/sweeps/mdm_vs_arm.py", "--workdir=out", "--config.train.steps=30",
              "--config.seed=3", "--print_commands"])
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        "warning: --config.train.steps=30 is replaced by the sweep's own train.steps (2208, 600, 275, 2374, 624, 282) "
        "in 6 of 6 points; edit the sweep file to change it."]
    assert all("--config.train.steps=30 " in line and "--config.seed=3 " in line for line in out.out.splitlines())


TINY = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.ffn_dim=64",
        "--config.train.seq_len=16", "--config.train.global_batch=8", "--config.train.steps=4",
        "--config.train.log_every=2", "--config.checkpoint.every_steps=4", "--config.eval.n_examples=3",
        "--config.eval.batch=8", "--config.sampling.gen_length=4", "--config.sampling.block_length=4",
        "--config.sampling.steps=4", "--config.mesh.fsdp=1", "--config.mesh.data=-1"]


@pytest.mark.slow
def test_tiny_sweep_end_to_end_and_skipped_when_rerun(tmp_path, capsys):
    """Two points that differ only in sampling share one trained run (one training, two evaluations); a rerun
    trains and evaluates nothing; results.csv / .md have one row per point and the plots exist."""
    path = write_sweep(tmp_path, "def get_sweep():\n    return 'configs/tiny_task.py', "
                                 "sweep('sampling.remasking', ['low_confidence', 'random'])\n")
    out = tmp_path / "out"
    argv = ["sweep", f"--sweep={path}", f"--workdir={out}"] + TINY
    cli.main(argv)
    first = capsys.readouterr().out
    assert first.count("step 4/4") == 1  # trained once for both points
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["base"]
    evals = sorted(out.glob("base/*/eval.json"))
    assert [p.parent.name for p in evals] == ["sampling.remasking=low_confidence", "sampling.remasking=random"]
    record = json.loads(evals[0].read_text())
    assert record["step"] == 4 and set(record) == {"step", "arithmetic_small/exact_match"}
    stamps = {p: p.stat().st_mtime_ns for p in list(out.glob("*/metrics.jsonl")) + evals}
    assert len(stamps) == 3

    cli.main(argv)  # rerun: everything is finished
    second = capsys.readouterr().out
    assert second.count("skip training") == 1 and second.count("skip evaluation") == 2
    assert "step 4/4" not in second
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["point"], r["sampling.remasking"]) for r in rows] == [
        ("sampling.remasking=low_confidence", "low_confidence"), ("sampling.remasking=random", "random")]
    for r in rows:
        assert r["steps"] == "4" and float(r["best_loss"]) <= float(r["final_loss"]) + 1e-9
        assert r["tokens"] == str(4 * 8 * 16)
        assert 0.0 <= float(r["arithmetic_small/exact_match"]) <= 1.0
    assert rows[0]["final_loss"] == rows[1]["final_loss"]  # the same run
    md = (out / "results.md").read_text().splitlines()
    assert md[0].startswith("| point | sampling.remasking | steps | final_loss | best_loss | tokens |")
    assert len(md) == 2 + 2 and md[-1].startswith("| sampling.remasking=random | random | 4 |")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["arithmetic_small_exact_match_vs_sampling.remasking.png", "exact_match_by_point.png",
                    "final_loss_vs_sampling.remasking.png", "loss_curves.png"]
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


# -- launching as jobs and collecting ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--collect", "--launch=local"], r"--collect trains and starts nothing .*; drop --launch, or launch first"),
    (["--collect", "--print_commands"], r"--collect trains .*; drop --print_commands,"),
    (["--print_commands", "--launch=slurm", "--dry_run"], r"--print_commands prints plain .*; drop --launch, "
                                                          r"--dry_run, or drop --print_commands"),
    (["--dry_run"], r"--dry_run prints the commands that --launch would start; add --launch=local"),
    (["--parallel=2"], r"--parallel=2 sets how many local training processes .* needs --launch=local \(got no "
                       r"--launch\)"),
    (["--parallel=2", "--launch=slurm"], r"needs --launch=local \(got --launch=slurm\)"),
    (["--parallel=0", "--launch=local"], r"--parallel must be at least 1 .*; got 0"),
])
def test_flags_that_do_not_go_together_say_what_to_do(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(["sweep", "--sweep=configs/sweeps/reversal.py", f"--workdir={tmp_path}"] + flags)
    assert not any(tmp_path.iterdir())


def test_launchers_need_their_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.setenv("ZONE", "us-east5-a")
    argv = ["sweep", "--sweep=configs/sweeps/reversal.py", f"--workdir={tmp_path}"]
    with pytest.raises(SystemExit, match=r"--launch=tpu needs TPU_NAME in the environment: each run gets a TPU VM "
                                         r"of its own, \$TPU_NAME-<run number>"):
        cli.main(argv + ["--launch=tpu", "--dry_run"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(SystemExit, match=r"--launch=slurm needs `sbatch`, which is not on PATH; .* add --dry_run"):
        cli.main(argv + ["--launch=slurm"])


def no_process(*args, **kwargs):
    raise AssertionError(f"a process was started: {args}")


def test_dry_run_prints_the_slurm_and_tpu_commands_and_starts_nothing(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sweep.subprocess, "Popen", no_process)
    monkeypatch.setattr(sweep.subprocess, "run", no_process)
    monkeypatch.setenv("TPU_NAME", "llada-v5p")
    monkeypatch.setenv("ZONE", "us-east5-a")
    argv = ["sweep", "--sweep=configs/sweeps/reversal.py", "--workdir=/nonexistent/w", "--config.train.steps=10"]
    cli.main(argv + ["--launch=slurm", "--dry_run"])
    assert capsys.readouterr().out.splitlines() == [
        "sbatch launch/gpu_slurm.sbatch --config=configs/tiny_task.py:reversal --config.train.steps=10 "
        "--config.objective=mdm --workdir=/nonexistent/w/objective=mdm",
        "sbatch launch/gpu_slurm.sbatch --config=configs/tiny_task.py:reversal --config.train.steps=10 "
        "--config.objective=arm --workdir=/nonexistent/w/objective=arm"]
    cli.main(argv + ["--launch=tpu", "--dry_run"])
    assert capsys.readouterr().out.splitlines() == [
        "TPU_NAME=llada-v5p-0 launch/tpu_pod.sh --config=configs/tiny_task.py:reversal --config.train.steps=10 "
        "--config.objective=mdm --workdir=/nonexistent/w/objective=mdm",
        "TPU_NAME=llada-v5p-1 launch/tpu_pod.sh --config=configs/tiny_task.py:reversal --config.train.steps=10 "
        "--config.objective=arm --workdir=/nonexistent/w/objective=arm"]
    cli.main(["sweep", "--sweep=configs/sweeps/remasking.py", "--workdir=w", "--launch=local", "--dry_run"])
    assert capsys.readouterr().out.splitlines() == [  # one run for the four eval-only points; quoted for the shell
        f"{sys.executable} -m llada_jax.cli train --config=configs/tiny_task.py --workdir=w/base"]
    assert not Path("w").exists()


def test_slurm_submits_one_job_per_run_and_says_how_to_collect(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    fake = tmp_path / "bin" / "sbatch"  # records its arguments, answers as sbatch does
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\necho Submitted batch job 7\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    w = tmp_path / "w"
    cli.main(["sweep", "--sweep=configs/sweeps/reversal.py", f"--workdir={w}", "--config.seed=3", "--launch=slurm"])
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"launch/gpu_slurm.sbatch --config=configs/tiny_task.py:reversal --config.seed=3 --config.objective={o} "
        f"--workdir={w}/objective={o}" for o in ("mdm", "arm")]
    assert capsys.readouterr().out.splitlines() == [
        "objective=mdm: Submitted batch job 7", "objective=arm: Submitted batch job 7",
        "when the runs have finished, write the results with:",
        f"  llada sweep --sweep=configs/sweeps/reversal.py --config.seed=3 --workdir={w} --collect"]


def test_local_jobs_run_side_by_side_and_failures_are_reported(tmp_path):
    """With parallel=2 the first job (which waits for the second's file) can finish; the third fails: its exit code
    and log are named, and the others' outcomes are kept."""
    py = [sys.executable, "-c"]
    wait = ("import os, sys, time\nfor _ in range(400):\n    if os.path.exists(sys.argv[1]): print('saw it'); "
            "sys.exit(0)\n    time.sleep(0.05)\nsys.exit(9)")
    jobs = [{"name": "a", "argv": py + [wait, str(tmp_path / "b_ran")], "env": {}, "log": str(tmp_path / "a.log")},
            {"name": "b", "argv": py + ["import sys; open(sys.argv[1], 'w').close()", str(tmp_path / "b_ran")],
             "env": {}, "log": str(tmp_path / "b.log")},
            {"name": "c", "argv": py + ["import sys; print('bad'); sys.exit(3)"], "env": {},
             "log": str(tmp_path / "logs" / "c.log")}]
    lines = []
    with pytest.raises(sweep.SweepError, match=r"^1 of 3 training runs failed: c \(exit code 3, log "
                                               + str(tmp_path / "logs" / "c.log") + r"\)\. Read the logs"):
        sweep.run_local(jobs, 2, lines.append, poll_seconds=0.01)
    assert lines[:2] == [f"started a (output in {tmp_path / 'a.log'})", f"started b (output in {tmp_path / 'b.log'})"]
    assert "finished a (exit code 0)" in lines and "FAILED c (exit code 3)" in lines
    assert (tmp_path / "a.log").read_text() == "saw it\n" and (tmp_path / "logs" / "c.log").read_text() == "bad\n"


def read_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def same_number(a, b):
    return a == b or math.isclose(float(a), float(b), rel_tol=1e-6)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """A two-point sweep (seeds 0 and 1) trained in turn in this process (seq/) and as two local processes side by
    side (jobs/): {"seq", "jobs", "argv", "out"} with the launch's output."""
    tmp = tmp_path_factory.mktemp("launched")
    path = write_sweep(tmp, "def get_sweep():\n    return 'configs/tiny_task.py', sweep('seed', [0, 1])\n")
    argv = ["sweep", f"--sweep={path}"] + TINY
    cli.main(argv + [f"--workdir={tmp / 'seq'}"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(argv + [f"--workdir={tmp / 'jobs'}", "--launch=local", "--parallel=2"])
    return {"seq": tmp / "seq", "jobs": tmp / "jobs", "argv": argv, "out": out.getvalue().splitlines()}


@pytest.mark.slow
def test_two_local_jobs_give_the_sequential_sweeps_results(launched):
    jobs, out = launched["jobs"], launched["out"]
    assert out[:2] == [f"started seed={s} (output in {jobs / f'seed={s}.log'})" for s in (0, 1)]  # side by side
    assert sorted(line for line in out if line.startswith("finished")) == [
        "finished seed=0 (exit code 0)", "finished seed=1 (exit code 0)"]
    assert all("step 4/4" in (jobs / f"seed={s}.log").read_text() for s in (0, 1))
    seq, par = read_rows(launched["seq"] / "results.csv"), read_rows(jobs / "results.csv")
    assert list(seq[0]) == list(par[0]) and [r["point"] for r in par] == ["seed=0", "seed=1"]
    assert list(seq[0])[:9] == ["point", "seed", "steps", "final_loss", "best_loss", "tokens", "train_flops",
                                "params", "final_tokens_per_sec"] and "arithmetic_small/exact_match" in seq[0]
    for s, p in zip(seq, par):
        for column in s:
            if column != "final_tokens_per_sec":  # a speed, not a result
                assert same_number(s[column], p[column]) if column != "point" else s[column] == p[column], column
    assert seq[0]["final_loss"] != seq[1]["final_loss"]  # the seeds differ, so the comparison means something
    assert sorted(p.name for p in jobs.glob("*.png")) == sorted(p.name for p in launched["seq"].glob("*.png"))


@pytest.mark.slow
def test_a_rerun_of_the_launch_skips_the_finished_runs(launched, capsys, monkeypatch):
    jobs = launched["jobs"]
    monkeypatch.setattr(sweep.subprocess, "Popen", no_process)
    cli.main(launched["argv"] + [f"--workdir={jobs}", "--launch=local", "--parallel=2"])
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [f"skip seed=0: {jobs / 'seed=0'} is finished (step 4)",
                       f"skip seed=1: {jobs / 'seed=1'} is finished (step 4)",
                       "nothing to launch: all 2 runs are finished"]
    assert sum(line.startswith("  skip evaluation: ") for line in out) == 2
    cli.main(launched["argv"] + [f"--workdir={jobs}", "--launch=local", "--dry_run"])
    assert capsys.readouterr().out.splitlines() == [f"# skip seed={s}: {jobs / f'seed={s}'} is finished (step 4)"
                                                    for s in (0, 1)]


@pytest.mark.slow
def test_collect_tabulates_the_finished_point_and_names_the_missing_one(launched, tmp_path, capsys):
    """seed=0 finished (copied from the launch, its eval.json removed: collect evaluates it again), seed=1 never
    ran: its row keeps the point's settings and sizes with empty metrics."""
    shutil.copytree(launched["jobs"] / "seed=0", tmp_path / "seed=0")
    (tmp_path / "seed=0" / "eval.json").unlink()
    cli.main(launched["argv"] + [f"--workdir={tmp_path}", "--collect"])
    out = capsys.readouterr().out
    assert "not finished (1 of 2 points; empty metrics in the table): seed=1\n" in out
    assert not (tmp_path / "seed=1").exists()  # nothing trained
    rows, want = read_rows(tmp_path / "results.csv"), read_rows(launched["jobs"] / "results.csv")
    assert [r["point"] for r in rows] == ["seed=0", "seed=1"]
    for column in ("steps", "final_loss", "best_loss", "tokens", "train_flops", "params",
                   "arithmetic_small/exact_match"):
        assert same_number(rows[0][column], want[0][column]), column
    assert json.loads((tmp_path / "seed=0" / "eval.json").read_text())["step"] == 4
    missing = rows[1]
    assert [missing[c] for c in ("steps", "final_loss", "best_loss", "arithmetic_small/exact_match")] == [""] * 4
    assert missing["tokens"] == want[1]["tokens"] and missing["params"] == want[1]["params"]
    md = (tmp_path / "results.md").read_text().splitlines()
    assert len(md) == 4 and md[-1].startswith("| seed=1 | 1 |  |  |  | 512 |")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["exact_match_by_point.png", "loss_curves.png"]
