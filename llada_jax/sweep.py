"""Sweeps: many configs from one base, trained and evaluated locally in turn, then one results table and plots.

A sweep file (configs/sweeps/NAME.py) is data, in the big_vision style:

    from llada_jax.sweep import product, sweep, zipit

    def get_sweep():
        return "configs/tiny.py", product([sweep("objective", ["mdm", "arm"]),
                                           zipit([sweep("model.d_model", [64, 128]),
                                                  sweep("model.ffn_dim", [192, 384])])])

A point is a dict {dotted config key: value}. `sweep(key, values)` is an axis (one point per value), `product`
the Cartesian product of axes, `zipit` their element-wise union (equal lengths); a plain list of dicts is an axis too.

`run_sweep` puts each point's run in DIR/<its overrides>, e.g. DIR/objective=arm,model.d_model=64. Points that
differ only in `sampling.*` / `eval.*` keys share one trained run and are evaluated into sub-directories of it
(DIR/<train overrides>/<sampling and eval overrides>/eval.json). Finished runs (last checkpoint step == train.steps)
are not trained again, unfinished ones resume (train.train), and an eval.json of the final step is not recomputed.
Results: DIR/results.csv, DIR/results.md, DIR/loss_curves.png, DIR/exact_match_by_point.png and
DIR/<metric>_vs_<axis>.png.

On a cluster: `llada sweep ... --print_commands` prints one `llada train` command per distinct run; launch them,
then run the same `llada sweep` command locally: it finds the runs finished, evaluates and writes the results.
"""
import csv
import itertools
import json
import math
import os
import shlex
from pathlib import Path

import jax

from llada_jax import (
    checkpoint,
    config as config_lib,
    evaluate,
    inference,
    mfu,
    model as model_lib,
    optim,
    rundir,
    train,
)
from llada_jax.data import tasks
from llada_jax.errors import LladaError

EVAL_ONLY_PREFIXES = ("sampling.", "eval.")  # keys that change evaluation, not training


class SweepError(LladaError):
    """A sweep file or sweep point that cannot work; the message says what was wrong and how to fix it."""


# -- building sweeps --------------------------------------------------------------------------------------------

def sweep(key, values):
    """One axis: a point per value of the config key `key`."""
    if not isinstance(key, str) or not key:
        raise SweepError(f"sweep(key, values): key must be a dotted config key such as 'model.d_model'; got {key!r}.")
    values = list(values)
    if not values:
        raise SweepError(f"sweep({key!r}, []): an axis needs at least one value.")
    return [{key: v} for v in values]


def _axis(a, where):
    a = list(a)
    if not all(isinstance(p, dict) for p in a):
        raise SweepError(f"{where}: every axis must be a list of {{config key: value}} dicts (e.g. from "
                         f"sweep(key, values)); got {a!r:.200}.")
    return a


def _merge(points, where):
    out = {}
    for p in points:
        both = set(out) & set(p)
        if both:
            raise SweepError(f"{where}: axes set the same key(s) {sorted(both)}; each key belongs to one axis.")
        out.update(p)
    return out


def product(axes):
    """The Cartesian product of axes, the last varying fastest."""
    axes = [_axis(a, "product") for a in axes]
    return [_merge(combo, "product") for combo in itertools.product(*axes)]


def zipit(axes):
    """The element-wise union of axes of equal length (they vary together)."""
    axes = [_axis(a, "zipit") for a in axes]
    lengths = [len(a) for a in axes]
    if len(set(lengths)) > 1:
        raise SweepError(f"zipit: axes have different lengths {lengths}; zipped axes must have equal lengths.")
    return [_merge(combo, "zipit") for combo in zip(*axes)]


# -- loading a sweep file ---------------------------------------------------------------------------------------

def load_sweep(path):
    """(base config spec, [point dicts]) from a sweep file whose get_sweep() returns them."""
    p = config_lib.find_file(path, "sweeps")
    if p is None:
        builtin = ", ".join(Path(n).stem for n in config_lib.builtin_files("sweeps"))
        raise SweepError(f"sweep file {path!r} not found; pass --sweep=configs/sweeps/NAME.py (built-in: "
                         f"{builtin}) or a path to your own file.")
    module = config_lib.load_module(p, "llada_sweep")
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{p} defines no get_sweep(); a sweep file must define get_sweep() returning "
                         f"(base config spec, points), e.g. ('configs/tiny.py', sweep('objective', ['mdm', 'arm'])).")
    out = module.get_sweep()
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], str)):
        raise SweepError(f"{p}: get_sweep() returned {type(out).__name__}; expected a pair (base config spec such "
                         f"as 'configs/tiny.py', list of point dicts).")
    base, points = out
    points = _axis(points, f"{p}: get_sweep()")
    if not points:
        raise SweepError(f"{p}: get_sweep() returned no points.")
    names = [point_name(q) for q in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SweepError(f"{p}: points repeat: {dup}; every point must differ in some override.")
    return base, points


# -- naming and grouping ----------------------------------------------------------------------------------------

def value_text(v):
    """A value as --config.k=TEXT text (config.override types it after the default)."""
    return v if isinstance(v, str) else repr(v)


def point_name(point):
    """'objective=arm,model.d_model=64' (keys in the point's order; '/' made safe for a directory name)."""
    if not point:
        return "base"
    return ",".join(f"{k}={value_text(v)}".replace("/", "_").replace(" ", "") for k, v in point.items())


def split_point(point):
    """(training overrides, evaluation-only overrides) of a point."""
    train = {k: v for k, v in point.items() if not k.startswith(EVAL_ONLY_PREFIXES)}
    evals = {k: v for k, v in point.items() if k.startswith(EVAL_ONLY_PREFIXES)}
    return train, evals


def plan(points, workdir):
    """[{point, train, evals, run_dir, eval_path, name}] for every point; points with equal training overrides
    share run_dir."""
    eval_axes = any(split_point(p)[1] for p in points)
    out = []
    for p in points:
        train, evals = split_point(p)
        run_dir = os.path.join(workdir, point_name(train))
        point_dir = os.path.join(run_dir, point_name(evals)) if eval_axes else run_dir
        out.append({"point": p, "train": train, "evals": evals, "run_dir": run_dir,
                    "eval_path": os.path.join(point_dir, "eval.json"), "name": point_name(p)})
    return out


def build(base, common, point):
    """The config of a point: base file, then the command line's common overrides, then the point's (the point
    wins over a common override of the same key)."""
    try:
        cfg = config_lib.build_config(base, list(common) + [(k, value_text(v)) for k, v in point.items()])
        tasks.task_names(cfg.eval.tasks)
        if cfg.data.source == "synthetic":
            tasks.get(cfg.data.synthetic_task)
    except (config_lib.ConfigError, tasks.TaskError) as e:
        raise SweepError(f"sweep point {point_name(point)}: {e}") from None
    return cfg


def replaced_overrides(common, points):
    """One warning per command-line override (`common`) whose key a sweep point also sets: the point's value wins."""
    out = []
    for k, v in common:
        values = list(dict.fromkeys(value_text(p[k]) for p in points if k in p))
        if values:
            out.append(f"warning: --config.{k}={v} is replaced by the sweep's own {k} ({', '.join(values)}) in "
                       f"{sum(k in p for p in points)} of {len(points)} points; edit the sweep file to change it.")
    return out


def launch_commands(base, points, workdir, common=()):
    """One `llada train` command per distinct training run of the sweep (for cluster launchers)."""
    lines, seen = [], set()
    for item in plan(points, workdir):
        if item["run_dir"] in seen:
            continue
        seen.add(item["run_dir"])
        args = ["llada", "train", f"--config={base}"]
        args += [f"--config.{k}={v}" for k, v in common]
        args += [f"--config.{k}={value_text(v)}" for k, v in item["train"].items()]
        args.append(f"--workdir={item['run_dir']}")
        lines.append(" ".join(shlex.quote(a) for a in args))
    return lines


# -- running ----------------------------------------------------------------------------------------------------

def finished_step(run_dir, log=print):
    """The newest checkpoint step of a run directory that reads back (checkpoint.read_newest; None without one)."""
    found = checkpoint.read_newest(os.path.join(run_dir, "checkpoints"), lambda s: None, log=log)
    return found[0] if found else None


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def evaluate_point(cfg, run_dir, seed=0):
    """Loads the run for inference with the point's sampling.* and eval.* settings and scores the tasks of
    eval.tasks (evaluate.evaluate_tasks)."""
    overrides = [(f"{group}.{k}", value_text(v)) for group in ("sampling", "eval") for k, v in cfg[group].items()]
    run = inference.load_run(run_dir, overrides)
    return run.step, evaluate.evaluate_tasks(run, jax.random.key(seed))


def run_sweep(base, points, workdir, common=(), log=print):
    """Trains (or skips / resumes) every distinct run, evaluates every point, then writes the results.
    Returns the result rows."""
    items = plan(points, workdir)
    configs = [build(base, common, it["point"]) for it in items]  # every point's config is checked before training
    trained = set()
    for i, (it, cfg) in enumerate(zip(items, configs)):
        log(f"[{i + 1}/{len(items)}] {it['name']}")
        if it["run_dir"] not in trained:
            trained.add(it["run_dir"])
            done = finished_step(it["run_dir"])
            if done is not None and done >= cfg.train.steps:
                log(f"  skip training: {it['run_dir']} is finished (step {done})")
            else:
                train.train(build(base, common, it["train"]), it["run_dir"], log=lambda s: log("  " + s))
        final = finished_step(it["run_dir"])
        if os.path.exists(it["eval_path"]) and _read_json(it["eval_path"]).get("step") == final:
            log(f"  skip evaluation: {it['eval_path']} is of step {final}")
            continue
        if not cfg.eval.tasks.strip():
            continue
        step, metrics = evaluate_point(cfg, it["run_dir"])
        os.makedirs(os.path.dirname(it["eval_path"]), exist_ok=True)
        with open(it["eval_path"], "w") as f:
            json.dump({"step": step, **metrics}, f, indent=1, sort_keys=True)
        log("  " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    rows = collect(items, configs)
    write_results(rows, list(points[0]) if points else [], items, workdir)
    log(f"results: {os.path.join(workdir, 'results.md')} (and results.csv, *.png)")
    return rows


# -- results ----------------------------------------------------------------------------------------------------

def collect(items, configs):
    """One row per point: its overrides, final and best training metrics, training FLOPs and eval metrics."""
    rows = []
    for it, cfg in zip(items, configs):
        hist = rundir.read_metrics(it["run_dir"])
        losses = [h["loss"] for h in hist if h.get("loss") is not None and math.isfinite(h["loss"])]
        tr = cfg.train
        tokens = tr.steps * optim.tokens_per_step(cfg)
        row = {"point": it["name"], **{k: v for k, v in it["point"].items()},
               "steps": hist[-1]["step"] if hist else None,
               "final_loss": hist[-1]["loss"] if hist else None, "best_loss": min(losses) if losses else None,
               "tokens": tokens,
               "train_flops": float(mfu.flops_per_step(cfg) * tr.steps),
               "params": model_lib.count_params(cfg.model)}
        if hist and hist[-1].get("tokens_per_sec"):
            row["final_tokens_per_sec"] = hist[-1]["tokens_per_sec"]
        if os.path.exists(it["eval_path"]):
            row.update({k: v for k, v in _read_json(it["eval_path"]).items() if k != "step"})
        rows.append(row)
    return rows


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_results(rows, axes, items, workdir):
    os.makedirs(workdir, exist_ok=True)
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        for r in rows:
            f.write("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |\n")
    plot(rows, items, workdir)


def axis_keys(rows):
    """Config keys that take more than one value across the rows."""
    keys = []
    for r in rows:
        keys += [k for k in r if "." in k or k in ("objective", "seed", "name") if k not in keys]
    return [k for k in keys if len({value_text(r.get(k)) for r in rows}) > 1]


def plot(rows, items, workdir):
    """loss_curves.png (loss vs step of every run) and <metric>_vs_<axis>.png (one line per setting of the other
    axes) for every eval metric and the final loss."""
    import matplotlib  # lazily: ~1 s to import, and only plots need it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_dir in dict.fromkeys(it["run_dir"] for it in items):
        hist = rundir.read_metrics(run_dir)
        if hist:
            ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=os.path.basename(run_dir))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(workdir, "loss_curves.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    axes = axis_keys(rows)
    metrics = [k for k in rows[0] if k.endswith("/exact_match")] if rows else []
    if metrics:  # every eval metric of every point side by side
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) * len(metrics)), 4.5))
        width = 0.8 / len(metrics)
        for j, metric in enumerate(metrics):
            ax.bar([i + j * width for i in range(len(rows))], [r.get(metric) or 0 for r in rows], width,
                   label=metric)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [r["point"] for r in rows], rotation=20,
                      ha="right", fontsize=7)
        ax.set_ylabel("exact match")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(os.path.join(workdir, "exact_match_by_point.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    for metric in metrics + ["final_loss"]:
        for axis in axes:
            others = [a for a in axes if a != axis]
            xs = list(dict.fromkeys(value_text(r.get(axis)) for r in rows))
            fig, ax = plt.subplots(figsize=(6, 4))
            groups = {}
            for r in rows:
                groups.setdefault(",".join(f"{o}={value_text(r.get(o))}" for o in others), []).append(r)
            for label, rs in groups.items():
                pts = sorted((xs.index(value_text(r.get(axis))), r.get(metric)) for r in rs
                             if r.get(metric) is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label or None)
            ax.set_xticks(range(len(xs)), xs, rotation=20, fontsize=8)
            ax.set_xlabel(axis)
            ax.set_ylabel(metric)
            if len(groups) > 1:
                ax.legend(fontsize=7)
            fig.tight_layout()
            paths.append(os.path.join(workdir, f"{metric.replace('/', '_')}_vs_{axis}.png"))
            fig.savefig(paths[-1], dpi=100)
            plt.close(fig)
    return paths
