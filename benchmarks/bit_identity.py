"""Same results as an earlier commit: the tiny pre-training config (packed documents, default_config()) trained for
--steps steps with each objective by the code of --before (a git worktree) and by this checkout, then the logged
losses and the final parameters compared bit for bit; then --rl_steps steps of `llada rl` (grpo and vrpo, from one
short supervised addition run) by both, compared the same way.

    python benchmarks/bit_identity.py --before=d9aef9c [--steps=40] [--rl_steps=20] [--only=mdm,grpo,...]
        [--out=runs/bit_identity]

Both sides train configs/tiny_pretrain.py (named "tiny"); a --before without that file (d9aef9c and older) trained
default_config(), the same config, with no --config. Prints one line
per run and last `bit_identity: mdm=.. arm=.. block=.. grpo=.. vrpo=..`.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np

from llada_jax import checkpoint, cli, model as model_lib, rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES = {"mdm": [], "arm": [], "block": ["--config.diffusion.block_size=16"]}


RL = {"grpo": ["--config.rl.inner_steps=2"], "vrpo": []}


def llada(code, command, *args):
    env = {**os.environ, "PYTHONPATH": code, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    subprocess.run([sys.executable, "-m", "llada_jax.cli", command, *args], cwd=code, env=env, check=True,
                   capture_output=True)


def train(code, config, workdir, objective, steps):
    llada(code, "train", *config, f"--workdir={workdir}", f"--config.objective={objective}",
          f"--config.train.steps={steps}", "--config.train.log_every=1", f"--config.checkpoint.every_steps={steps}",
          *OBJECTIVES[objective])


def rl(code, workdir, algorithm, base, steps):
    llada(code, "rl", f"--config=configs/rl_addition.py:{algorithm}", f"--workdir={workdir}",
          f"--config.checkpoint.init_from={base}", f"--config.train.steps={steps}", "--config.train.log_every=1",
          f"--config.checkpoint.every_steps={steps}", "--config.rl.prompts_per_step=8", "--config.rl.group_size=4",
          *RL[algorithm])


def compare(name, dirs, start=None):
    """One line: the losses and final params of both sides; `start` (a run dir): how far the params moved from it."""
    (l0, p0), (l1, p1) = result(dirs["before"]), result(dirs["now"])
    same = l0 == l1 and len(p0) == len(p1) and all(np.array_equal(a, b) for a, b in zip(p0, p1))
    moved = ""
    if start is not None:
        base = result(start)[1]
        moved = f" (moved up to {max(float(np.abs(a - b).max()) for a, b in zip(p1, base)):.3g} from the base)"
    print(f"{name}: {len(l0)} losses (last {l0[-1][1]!r} before, {l1[-1][1]!r} now), losses "
          f"{'equal' if l0 == l1 else 'differ'}, final params {'bit-identical' if same else 'differ'}{moved}",
          flush=True)
    return "identical" if same else "DIFFERENT"


def result(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]
    cfg = rundir.load_config(workdir, log=lambda *a: None)
    params, _ = checkpoint.restore_params(workdir, model_lib.Model(cfg.model).abstract_params())
    return losses, [np.asarray(x) for x in jax.tree.leaves(params)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the earlier commit")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rl_steps", type=int, default=20)
    p.add_argument("--only", default="", help="comma-separated: the objectives and RL algorithms to compare (all)")
    p.add_argument("--out", default="runs/bit_identity")
    args = p.parse_args()
    cli._quiet_libraries()  # what `llada` does: no absl / libtpu start-up noise
    old = os.path.abspath(os.path.join(args.out, "before_code"))
    if os.path.exists(old):
        subprocess.run(["git", "worktree", "remove", "--force", old], cwd=ROOT)
        shutil.rmtree(old, ignore_errors=True)
    subprocess.run(["git", "worktree", "add", "-q", "--detach", old, args.before], cwd=ROOT, check=True)
    verdict, config = {}, ["--config=configs/tiny_pretrain.py", "--config.name=tiny"]
    try:
        only = set(args.only.split(",")) if args.only else set(OBJECTIVES) | set(RL)
        for objective in [o for o in OBJECTIVES if o in only]:
            dirs = {side: os.path.abspath(os.path.join(args.out, f"{side}_{objective}")) for side in ("before", "now")}
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)
            train(old, config if os.path.exists(os.path.join(old, "configs", "tiny_pretrain.py")) else [],
                  dirs["before"], objective, args.steps)
            train(ROOT, config, dirs["now"], objective, args.steps)
            verdict[objective] = compare(objective, dirs)
        algorithms = [a for a in RL if a in only]
        base = os.path.abspath(os.path.join(args.out, "rl_base"))
        shutil.rmtree(base, ignore_errors=True)
        if algorithms:  # long enough that some answers are right: rewards vary within groups, the updates are real
            llada(ROOT, "train", "--config=configs/tiny_task.py", f"--workdir={base}", "--config.train.steps=800",
                  "--config.checkpoint.every_steps=800")
        for algorithm in algorithms:
            dirs = {side: os.path.abspath(os.path.join(args.out, f"{side}_{algorithm}")) for side in ("before", "now")}
            for d in dirs.values():
                shutil.rmtree(d, ignore_errors=True)
            rl(old, dirs["before"], algorithm, base, args.rl_steps)
            rl(ROOT, dirs["now"], algorithm, base, args.rl_steps)
            verdict[algorithm] = compare(algorithm, dirs, start=base)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", old], cwd=ROOT)
    print("bit_identity: " + " ".join(f"{k}={v}" for k, v in verdict.items()))


if __name__ == "__main__":
    main()
