"""Sweeps: many configs from one base, trained (locally in turn, or as one job per run) and evaluated, then one
results table and plots.

A sweep file (configs/sweeps/NAME.py) is data, in the big_vision style:

    from llada_jax.sweep import product, sweep, zipit

    def get_sweep():
        return "configs/tiny.py", product([sweep("objective", ["mdm", "arm"]),
                                           zipit([sweep("model.d_model", [64, 128]),
                                                  sweep("model.ffn_dim", [192, 384])])])

A point is a dict {dotted config key: value}. `sweep(key, values)` is an axis (one point per value), `product`
the Cartesian product of axes, `zipit` their element-wise union (equal lengths); a plain list of dicts is an axis too.

Each point's run goes to DIR/<its overrides>, e.g. DIR/objective=arm,model.d_model=64. Points that differ only in
`sampling.*` / `eval.*` keys share one trained run and are evaluated into sub-directories of it
(DIR/<train overrides>/<sampling and eval overrides>/eval.json). A run is finished when its newest readable
checkpoint step is at least its train.steps; finished runs are not trained again, unfinished ones resume
(train.train), and an eval.json of the final step is not recomputed.

Three ways to train (`llada sweep` flags):
- none: `run_sweep` trains every distinct run in turn in this process;
- `--launch=local|slurm|tpu`: `launch` starts one job per distinct unfinished run: a local process
  (`python -m llada_jax.cli train ...`, at most `--parallel` at a time, output in DIR/<run>.log, waited for),
  `sbatch launch/gpu_slurm.sbatch ...`, or `launch/tpu_pod.sh ...` on a TPU VM of its own ($TPU_NAME-<run number>,
  started in the background, output in $LOG_DIR/<TPU VM name>.log); `--dry_run` prints the commands instead;
- `--print_commands`: one plain `llada train` command per distinct run, for any other launcher.

Then `evaluate_and_write` (after `run_sweep` and `--launch=local` by themselves; `--collect` otherwise) evaluates the
finished runs, lists the unfinished points (their rows keep the point's settings and sizes, with empty metrics) and
writes DIR/results.csv, DIR/results.md, DIR/loss_curves.png, DIR/exact_match_by_point.png and
DIR/<metric>_vs_<axis>.png (plots of the finished points only).
"""
import csv
import itertools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
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
    settings,
    train,
)
from llada_jax.errors import LladaError

EVAL_ONLY_PREFIXES = ("sampling.", "eval.")  # keys that change evaluation, not training
LAUNCHERS = ("local", "slurm", "tpu")  # llada sweep --launch=...
LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"  # the checkout's launch scripts


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
        settings.check(cfg)
    except LladaError as e:  # a config error, a value settings.check refuses, an unknown task
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


# -- launching --------------------------------------------------------------------------------------------------

def distinct_runs(items):
    """The first plan item of every distinct training run, in plan order."""
    first = {}
    for it in items:
        first.setdefault(it["run_dir"], it)
    return list(first.values())


def train_args(base, common, item):
    """The `llada train` arguments of an item's run: the base config, the common overrides, the point's training
    overrides and its run directory."""
    args = [f"--config={base}"] + [f"--config.{k}={v}" for k, v in common]
    args += [f"--config.{k}={value_text(v)}" for k, v in item["train"].items()]
    return args + [f"--workdir={item['run_dir']}"]


def launch_commands(base, points, workdir, common=()):
    """One `llada train` command per distinct training run of the sweep (for any launcher)."""
    runs = distinct_runs(plan(points, workdir))
    return [shlex.join(["llada", "train", *train_args(base, common, it)]) for it in runs]


def collect_command(sweep_file, config, common, workdir):
    """The `llada sweep ... --collect` command that writes the results of a launched sweep."""
    args = ["llada", "sweep", f"--sweep={sweep_file}"] + ([f"--config={config}"] if config else [])
    args += [f"--config.{k}={v}" for k, v in common] + [f"--workdir={workdir}", "--collect"]
    return shlex.join(args)


def check_flags(launch=None, parallel=None, dry_run=False, collect=False, print_commands=False):
    """Raises SweepError for `llada sweep` flags that do not go together (parallel: None when not given)."""
    given = [flag for flag, on in (("--launch", launch), ("--parallel", parallel is not None),
                                   ("--dry_run", dry_run)) if on]
    if collect and (given or print_commands):
        raise SweepError(f"--collect trains and starts nothing (it evaluates the finished runs and writes the "
                         f"results); drop {', '.join(given + ['--print_commands'] * print_commands)}, or launch "
                         f"first and run the same command with --collect afterwards.")
    if print_commands and given:
        raise SweepError(f"--print_commands prints plain `llada train` commands and starts nothing; drop "
                         f"{', '.join(given)}, or drop --print_commands and use --launch=local|slurm|tpu --dry_run "
                         f"to see the launcher's own commands.")
    if dry_run and not launch:
        raise SweepError("--dry_run prints the commands that --launch would start; add --launch=local, "
                         "--launch=slurm or --launch=tpu (or use --print_commands for plain `llada train` commands).")
    if parallel is not None and launch != "local":
        raise SweepError(f"--parallel={parallel} sets how many local training processes run at once; it needs "
                         f"--launch=local (got {'--launch=' + launch if launch else 'no --launch'}).")
    if parallel is not None and parallel < 1:
        raise SweepError(f"--parallel must be at least 1 (training processes at a time); got {parallel}.")


def check_launcher(launcher, dry_run=False):
    """Raises SweepError when `launcher` lacks what it needs: TPU_NAME and ZONE for tpu; sbatch (slurm) or gcloud
    (tpu) on PATH, unless only printing the commands."""
    if launcher == "tpu":
        missing = [v for v in ("TPU_NAME", "ZONE") if not os.environ.get(v)]
        if missing:
            raise SweepError(f"--launch=tpu needs {' and '.join(missing)} in the environment: each run gets a TPU "
                             f"VM of its own, $TPU_NAME-<run number>, in $ZONE; e.g. TPU_NAME=llada "
                             f"ZONE=us-east5-a ACCELERATOR=v5p-128 llada sweep ... --launch=tpu (launch/tpu_pod.sh "
                             f"lists its other variables).")
    tool, where = {"slurm": ("sbatch", "a SLURM login node"),
                   "tpu": ("gcloud", "a machine with the Google Cloud CLI")}.get(launcher, (None, None))
    if tool and not dry_run and shutil.which(tool) is None:
        raise SweepError(f"--launch={launcher} needs `{tool}`, which is not on PATH; run llada sweep where it is "
                         f"({where}), or add --dry_run to print the commands.")


def launch_script(name):
    """The path of launch/NAME in this checkout: relative to the working directory when it lies under it."""
    path = LAUNCH_DIR / name
    if not path.exists():
        raise SweepError(f"{path} not found: the launch scripts come with a checkout of llada-jax, not with an "
                         f"installed package; install from a checkout (`pip install -e .` in a git clone) and run "
                         f"llada sweep from it.")
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


# -- training ---------------------------------------------------------------------------------------------------

def finished_step(run_dir, log=print):
    """The newest checkpoint step of a run directory that reads back (checkpoint.read_newest; None without one)."""
    found = checkpoint.read_newest(os.path.join(run_dir, "checkpoints"), lambda s: None, log=log)
    return found[0] if found else None


def finished(run_dir, steps):
    """The run's newest readable checkpoint step when it is at least `steps` (the run is finished), else None."""
    done = finished_step(run_dir)
    return done if done is not None and done >= steps else None


def checked_plan(base, points, workdir, common=()):
    """(plan items, their configs): every point's config is built first, so a bad point stops the sweep before
    anything trains."""
    items = plan(points, workdir)
    return items, [build(base, common, it["point"]) for it in items]


def run_sweep(base, points, workdir, common=(), log=print):
    """Trains (or skips / resumes) every distinct run in turn in this process, then evaluate_and_write.
    Returns the result rows."""
    items, configs = checked_plan(base, points, workdir, common)
    runs = distinct_runs(items)
    for i, it in enumerate(runs):
        log(f"[{i + 1}/{len(runs)}] train {point_name(it['train'])}")
        cfg = build(base, common, it["train"])
        done = finished(it["run_dir"], cfg.train.steps)
        if done is not None:
            log(f"  skip training: {it['run_dir']} is finished (step {done})")
        else:
            train.train(cfg, it["run_dir"], log=lambda s: log("  " + s))
    return evaluate_and_write(items, configs, workdir, log)


def launch(base, points, workdir, common=(), launcher="local", parallel=1, dry_run=False, collect_hint="",
           log=print):
    """One job per distinct unfinished run, started through `launcher` (LAUNCHERS); finished runs are skipped with
    a line. local: waits for the jobs (SweepError if any failed), then evaluate_and_write and returns its rows;
    slurm / tpu: returns once the jobs are started, printing `collect_hint` (the --collect command). dry_run: prints
    the commands, one a line, shell-quoted (other lines as `#` comments), and starts nothing."""
    check_launcher(launcher, dry_run)
    items, configs = checked_plan(base, points, workdir, common)
    if dry_run:
        log = lambda s: print("# " + s)
    jobs = pending_jobs(base, common, items, configs, launcher, log)
    if dry_run:
        for job in jobs:
            print(job_text(job))
        return None
    if not jobs:
        log(f"nothing to launch: all {len(distinct_runs(items))} runs are finished")
    if launcher == "local":
        run_local(jobs, parallel, log)
        return evaluate_and_write(items, configs, workdir, log)
    for job in jobs:
        START[launcher](job, log)
    log(f"when the runs have finished, write the results with:\n  {collect_hint}")
    return None


def pending_jobs(base, common, items, configs, launcher, log=print):
    """The jobs (make_job) of the distinct runs that are not finished, in plan order; a line for each finished one."""
    steps = {it["run_dir"]: cfg.train.steps for it, cfg in zip(items, configs)}  # equal for a run's points
    jobs = []
    for index, it in enumerate(distinct_runs(items)):
        done = finished(it["run_dir"], steps[it["run_dir"]])
        if done is None:
            jobs.append(make_job(launcher, it, train_args(base, common, it), index))
        else:
            log(f"skip {point_name(it['train'])}: {it['run_dir']} is finished (step {done})")
    return jobs


def make_job(launcher, item, args, index):
    """{name, argv, env (added to the environment), log (its output file; None: the launcher's own)} of the run of
    `item`, the index-th distinct run of the sweep, with `llada train` arguments `args`."""
    name = point_name(item["train"])
    if launcher == "local":
        return {"name": name, "argv": [sys.executable, "-m", "llada_jax.cli", "train", *args], "env": {},
                "log": item["run_dir"] + ".log"}
    if launcher == "slurm":  # the job's output: the script's #SBATCH --output, llada-<job id>.out
        return {"name": name, "argv": ["sbatch", launch_script("gpu_slurm.sbatch"), *args], "env": {}, "log": None}
    tpu = f"{os.environ['TPU_NAME']}-{index}"
    return {"name": name, "argv": [launch_script("tpu_pod.sh"), *args], "env": {"TPU_NAME": tpu},
            "log": os.path.join(os.environ.get("LOG_DIR", "."), tpu + ".log")}


def job_text(job):
    """A job as one shell command line: its environment assignments, then its arguments, shell-quoted."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in job["env"].items()] + [shlex.join(job["argv"])])


def _popen(job, **kwargs):
    """Starts a job's process with its output (stdout and stderr) appended to job["log"]."""
    os.makedirs(os.path.dirname(job["log"]) or ".", exist_ok=True)
    with open(job["log"], "a") as out:
        return subprocess.Popen(job["argv"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **job["env"]}, **kwargs)


def run_local(jobs, parallel, log=print, poll_seconds=0.2):
    """Runs the jobs as processes on this machine, at most `parallel` at a time, and waits for them all; raises
    SweepError naming each failed one (exit code, log). On an interrupt the running ones get SIGTERM (a training
    run saves a checkpoint and can resume)."""
    waiting, running, failed = list(jobs), {}, []
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                job = waiting.pop(0)
                running[_popen(job)] = job
                log(f"started {job['name']} (output in {job['log']})")
            for proc in [p for p in running if p.poll() is not None]:
                job = running.pop(proc)
                log(f"{'finished' if proc.returncode == 0 else 'FAILED'} {job['name']} (exit code {proc.returncode})")
                if proc.returncode:
                    failed.append(f"{job['name']} (exit code {proc.returncode}, log {job['log']})")
            time.sleep(poll_seconds if running else 0)
    finally:
        for proc in running:
            proc.terminate()
        for proc in running:
            proc.wait()
    if failed:
        raise SweepError(f"{len(failed)} of {len(jobs)} training runs failed: {'; '.join(failed)}. Read the logs, "
                         f"fix the cause and run the same command again: finished runs are skipped, the others "
                         f"resume; --collect writes the results of the finished ones meanwhile.")


def submit_slurm(job, log=print):
    """Submits a job with sbatch (which returns at once)."""
    out = subprocess.run(job["argv"], capture_output=True, text=True, env={**os.environ, **job["env"]})
    if out.returncode:
        raise SweepError(f"sbatch failed for {job['name']} (exit code {out.returncode}): "
                         f"{(out.stderr or out.stdout).strip()[-500:]}. Fix the cause and run the same command again "
                         f"(it submits every unfinished run again: cancel the ones already queued first).")
    log(f"{job['name']}: {out.stdout.strip()}")


def start_background(job, log=print):
    """Starts a job's process detached from this one (it goes on when llada sweep exits)."""
    proc = _popen(job, start_new_session=True)
    log(f"{job['name']}: started {' '.join(f'{k}={v}' for k, v in job['env'].items())} {job['argv'][0]} in the "
        f"background (pid {proc.pid}, output in {job['log']})")


START = {"slurm": submit_slurm, "tpu": start_background}  # launchers that return before the runs finish


# -- evaluating and results ---------------------------------------------------------------------------------------

def _read_json(path):
    with open(path) as f:
        return json.load(f)


def evaluate_point(cfg, run_dir, seed=0):
    """Loads the run for inference with the point's sampling.* and eval.* settings and scores the tasks of
    eval.tasks (evaluate.evaluate_tasks)."""
    overrides = [(f"{group}.{k}", value_text(v)) for group in ("sampling", "eval") for k, v in cfg[group].items()]
    run = inference.load_run(run_dir, overrides)
    return run.step, evaluate.evaluate_tasks(run, jax.random.key(seed))


def evaluate_once(item, cfg, step, log=print):
    """Writes the point's eval.json of its run's final `step`, unless it is there already (nothing without
    eval.tasks)."""
    if os.path.exists(item["eval_path"]) and _read_json(item["eval_path"]).get("step") == step:
        log(f"  skip evaluation: {item['eval_path']} is of step {step}")
        return
    if not cfg.eval.tasks.strip():
        return
    step, metrics = evaluate_point(cfg, item["run_dir"])
    os.makedirs(os.path.dirname(item["eval_path"]), exist_ok=True)
    with open(item["eval_path"], "w") as f:
        json.dump({"step": step, **metrics}, f, indent=1, sort_keys=True)
    log("  " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


def finished_runs(items, configs):
    """{run directory: final step} of the finished runs among the items'."""
    steps = {}
    for it, cfg in zip(items, configs):
        if it["run_dir"] not in steps:
            steps[it["run_dir"]] = finished(it["run_dir"], cfg.train.steps)
    return {run_dir: step for run_dir, step in steps.items() if step is not None}


def evaluate_and_write(items, configs, workdir, log=print):
    """Evaluates every point of a finished run (evaluate_once), lists the points whose run is not finished, then
    writes results.csv / results.md (those points with empty metrics) and the plots of the finished points.
    Returns the result rows."""
    done = finished_runs(items, configs)
    for i, (it, cfg) in enumerate(zip(items, configs)):
        if it["run_dir"] in done:
            log(f"[{i + 1}/{len(items)}] evaluate {it['name']}")
            evaluate_once(it, cfg, done[it["run_dir"]], log)
    missing = [it["name"] for it in items if it["run_dir"] not in done]
    if missing:
        log(f"not finished ({len(missing)} of {len(items)} points; empty metrics in the table): "
            f"{', '.join(missing)}")
    rows = collect(items, configs, done)
    write_tables(rows, workdir)
    kept = [i for i, it in enumerate(items) if it["run_dir"] in done]
    plot([rows[i] for i in kept], [items[i] for i in kept], workdir)
    log(f"results: {os.path.join(workdir, 'results.md')} (and results.csv, *.png)")
    return rows


def collect_results(base, points, workdir, common=(), log=print):
    """`llada sweep --collect`: trains nothing; evaluate_and_write on whatever has finished."""
    return evaluate_and_write(*checked_plan(base, points, workdir, common), workdir, log)


def collect(items, configs, finished_dirs=None):
    """One row per point: its overrides, final and best training metrics, training FLOPs and eval metrics. Points
    whose run is not among `finished_dirs` (run directories; default all) keep their overrides and sizes only."""
    rows = []
    for it, cfg in zip(items, configs):
        done = finished_dirs is None or it["run_dir"] in finished_dirs
        hist = rundir.read_metrics(it["run_dir"]) if done else []
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
        if done and os.path.exists(it["eval_path"]):
            row.update({k: v for k, v in _read_json(it["eval_path"]).items() if k != "step"})
        rows.append(row)
    return rows


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_tables(rows, workdir):
    """results.csv and results.md: one row per point, the union of the rows' keys as columns."""
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
    if ax.lines:  # no finished run: an empty plot
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(workdir, "loss_curves.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    axes = axis_keys(rows)
    metrics = [k for k in rows[0] if k.endswith(("/exact_match", "/success"))] if rows else []
    if metrics:  # every eval metric of every point side by side
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) * len(metrics)), 4.5))
        width = 0.8 / len(metrics)
        for j, metric in enumerate(metrics):
            ax.bar([i + j * width for i in range(len(rows))], [r.get(metric) or 0 for r in rows], width,
                   label=metric)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [r["point"] for r in rows], rotation=20,
                      ha="right", fontsize=7)
        ax.set_ylabel("exact match (Countdown: success)")
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
