"""Sweeps: expansion of axes, sweep-file errors, run sharing, launch commands, and one tiny sweep end to end
(trained, evaluated, skipped when rerun, results table and plots)."""
import csv
import json
import os
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
