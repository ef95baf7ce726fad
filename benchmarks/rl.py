"""Reinforcement learning on a built-in task: held-out exact match (or success) of a supervised model before and
after diffu-GRPO and VRPO (`llada rl`, docs/rl.md), against more supervised steps.

    python benchmarks/rl.py [--quick] [--task=arithmetic_small|countdown] [--out=DIR] [--sft_steps=2400]
                            [--rl_steps=200] [--examples=500]

Stages (each skipped when its outputs exist in --out, so a stopped run resumes where it was):
  1. SFT: `llada train --config=configs/tiny_task.py:TASK` for --sft_steps steps (its WSD schedule decays over the
     last 20% of them). Two-digit addition in the SFT format by default, 10% of the operand pairs held out;
     `countdown`: three numbers and a target, any expression that hits it counts, 10% of the problems held out.
  2. RL from that model: `llada rl --config=configs/rl_addition.py:grpo,TASK` and `:vrpo,TASK` for --rl_steps steps
     each, rollouts on training prompts only, a checkpoint every quarter of the run.
  3. The control: the supervised training continued from the same model for as many steps at VRPO's constant
     learning rate (`sft_more`), so a gain of RL can be told from the effect of more steps at a low rate.
  4. `llada eval` of the SFT model and of every checkpoint: the task's metric on greedy answers (temperature 0,
     one token per step, the generation length the model trained for) for --examples held-out prompts.
Prints the curves (also OUT/rl.md) and last `rl: before=X grpo=Y vrpo=Z sft_more=W` (percent; `rl quick:` with
--quick). BENCHMARKS.md, "Reinforcement learning", has the results and the settings tried.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from block_diffusion import llada  # noqa: E402

from llada_jax import cli, config as config_lib, sweep  # noqa: E402

ALGORITHMS = ("grpo", "vrpo")
ARMS = ALGORITHMS + ("sft_more",)


def score(run_dir, out, examples, step=None):
    """`llada eval` of the run's task metric (percent), kept in `out`."""
    if not os.path.exists(out):
        llada("eval", f"--workdir={run_dir}", *([f"--step={step}"] if step else []), "--perplexity=0",
              f"--out={out}", f"--config.eval.n_examples={examples}")
    with open(out) as f:
        return 100 * next(v for k, v in json.load(f).items() if k.endswith(("/exact_match", "/success")))


def curve(run_dir, out, steps, every, examples):
    """[(step, exact match %)] of the run's checkpoints every `every` steps through `steps`."""
    points = []
    for s in range(every, steps + 1, every):
        points.append((s, score(run_dir, os.path.join(out, f"{os.path.basename(run_dir)}_eval_{s}.json"), examples,
                                s)))
    return points


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="arithmetic_small", help="arithmetic_small (default) or countdown")
    p.add_argument("--out", default=None, help="default runs/rl_TASK (runs/rl_TASK_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="100 RL steps per method (about 15 CPU minutes in all)")
    p.add_argument("--sft_steps", type=int, default=2400, help="steps of the supervised model")
    p.add_argument("--rl_steps", type=int, default=None, help="RL steps per method (default 200, 100 with --quick)")
    p.add_argument("--examples", type=int, default=500, help="held-out operand pairs for exact match")
    args = p.parse_args()
    cli._quiet_libraries()
    out = args.out or f"runs/rl_{args.task}{'_quick' if args.quick else ''}"
    task_config = f"configs/tiny_task.py:{args.task}"
    rl_steps = args.rl_steps or (100 if args.quick else 200)
    every = max(1, rl_steps // 4)
    os.makedirs(out, exist_ok=True)

    print(f"== 1. SFT: {task_config} for {args.sft_steps} steps", flush=True)
    sft = os.path.join(out, "sft")
    if sweep.finished(sft, args.sft_steps) is None:
        llada("train", f"--config={task_config}", f"--workdir={sft}", f"--config.train.steps={args.sft_steps}",
              f"--config.checkpoint.every_steps={args.sft_steps}")
    before = score(sft, os.path.join(out, "sft_eval.json"), args.examples)
    print(f"SFT held-out score: {before:.1f}%", flush=True)

    curves = {}
    for i, alg in enumerate(ALGORITHMS):
        print(f"== {2 + i}. {alg} for {rl_steps} RL steps", flush=True)
        run = os.path.join(out, alg)
        if sweep.finished(run, rl_steps) is None:
            llada("rl", f"--config=configs/rl_addition.py:{alg},{args.task}", f"--workdir={run}",
                  f"--config.checkpoint.init_from={sft}", f"--config.train.steps={rl_steps}",
                  f"--config.checkpoint.every_steps={every}")
        curves[alg] = [(0, before)] + curve(run, out, rl_steps, every, args.examples)

    lr = config_lib.load_config("configs/rl_addition.py:vrpo").optim.peak_lr
    print(f"== 4. control: the SFT continued for {rl_steps} steps at constant lr {lr:g}", flush=True)
    more = os.path.join(out, "sft_more")
    if sweep.finished(more, rl_steps) is None:
        llada("train", f"--config={task_config}", f"--workdir={more}", f"--config.checkpoint.init_from={sft}",
              "--config.optim.schedule=constant", "--config.optim.warmup_steps=0", f"--config.optim.peak_lr={lr}",
              f"--config.train.steps={rl_steps}", f"--config.checkpoint.every_steps={every}",
              "--config.checkpoint.keep=10")
    curves["sft_more"] = [(0, before)] + curve(more, out, rl_steps, every, args.examples)

    flags = f"{' --quick' if args.quick else ''} --task={args.task} --sft_steps={args.sft_steps}"
    lines = [f"Held-out score (%) of {args.task} on {args.examples} prompts, SFT {args.sft_steps} steps, then "
             f"{rl_steps} steps of each arm (`python benchmarks/rl.py{flags}`):", "",
             "| step | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for j, (s, _) in enumerate(curves[ARMS[0]]):
        lines.append(f"| {s} | " + " | ".join(f"{curves[a][j][1]:.1f}" for a in ARMS) + " |")
    rewards = {a: _reward_curve(os.path.join(out, a), every) for a in ALGORITHMS}
    lines += ["", "Mean rollout reward (temperature 1, training prompts) over each quarter of the run: " + "; ".join(
        f"{a} " + ", ".join(f"{r:.2f}" for r in rewards[a]) for a in ALGORITHMS)]
    text = "\n".join(lines)
    with open(os.path.join(out, "rl.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"rl{' quick' if args.quick else ''}: before={before:.1f} " + " ".join(f"{a}={curves[a][-1][1]:.1f}"
                                                                               for a in ARMS))


def _reward_curve(run_dir, every):
    """The mean logged rollout reward over each `every` steps."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    quarters = {}
    for m in rows:
        quarters.setdefault((m["step"] - 1) // every, []).append(m["reward"])
    return [sum(v) / len(v) for _, v in sorted(quarters.items())]


if __name__ == "__main__":
    main()
