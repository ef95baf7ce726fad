"""Block diffusion's evidence on the addition task: block sizes against LLaDA and the autoregressive baseline at equal
training FLOPs, decoding speed at equal quality, and adaptation from our own autoregressive model.

    python benchmarks/block_diffusion.py [--out=runs/block_diffusion] [--examples=200]

Stages (each skipped when its outputs exist in --out; the budget is the sweep file's REFERENCE_STEPS of LLaDA):
  1. `llada sweep --sweep=configs/sweeps/block_sizes.py`: objective mdm, arm, and block with block sizes 4 and 16
     (16 = the whole row: one block), every run at LLaDA's training FLOPs (mfu.flops_per_step: the [x_t ; x_0]
     input doubles a block model's work, so it trains half the steps); exact match of sampled answers on held-out
     operand pairs.
  2. Adaptation: the arm run exported with `llada convert to-hf --layout=llama`, imported back with `llada convert
     from-hf`, and trained as a block-4 model (`--config.checkpoint.init_from`) for the same steps as the block-4
     run of stage 1, which started from scratch; exact match of both.
  3. Decoding (benchmarks/block_decoding.py): the block-4 model with its exact cache against LLaDA with
     threshold 0.9 + dual cache, exact match and answers/s on the same held-out prompts.
Prints the tables (also OUT/block_diffusion.md) and last `block: ...` with the headline figures.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import block_decoding  # noqa: E402

from llada_jax import cli, mfu, rundir, sweep  # noqa: E402

SWEEP = "configs/sweeps/block_sizes.py"


def llada(*argv):
    print("$ llada " + " ".join(argv), flush=True)
    cli.main(list(argv))


def read_exact_match(path):
    with open(path) as f:
        return next(v for k, v in json.load(f).items() if k.endswith("/exact_match"))


def exact_match(run_dir, out, examples):
    """`llada eval` of a run's exact match into `out` (kept). (No perplexity: the task's held-out rows are
    pre-training documents, which an SFT-trained model never saw, so a bound there says nothing.)"""
    if not os.path.exists(out):
        llada("eval", f"--workdir={run_dir}", "--perplexity=0", f"--out={out}", f"--config.eval.n_examples={examples}")
    return read_exact_match(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/block_diffusion")
    p.add_argument("--examples", type=int, default=200, help="held-out pairs for exact match")
    args = p.parse_args()
    cli._quiet_libraries()
    sweep_dir = os.path.join(args.out, "sweep")

    print("== 1. block sizes vs LLaDA vs the autoregressive baseline at equal FLOPs", flush=True)
    llada("sweep", f"--sweep={SWEEP}", f"--workdir={sweep_dir}", f"--config.eval.n_examples={args.examples}")
    base, points = sweep.load_sweep(SWEEP)
    items = sweep.plan(points, sweep_dir)
    rows = []
    for it in items:
        cfg = sweep.build(base, [], it["point"])
        acc = read_exact_match(it["eval_path"])
        block = it["point"].get("diffusion.block_size")
        rows.append({"run": it["point"]["objective"] + (f" (block {block})" if block else ""), "dir": it["run_dir"],
                     "steps": cfg.train.steps, "flops": cfg.train.steps * mfu.flops_per_step(cfg), "acc": acc,
                     "block": block, "objective": it["point"]["objective"]})

    mdm = next(r for r in rows if r["objective"] == "mdm")
    print("== 2. adaptation: arm -> Llama layout -> block 4", flush=True)
    arm = next(r for r in rows if r["objective"] == "arm")
    scratch = next(r for r in rows if r["block"] == 4)
    hf_dir, imported = os.path.join(args.out, "arm_llama"), os.path.join(args.out, "arm_imported")
    adapted = os.path.join(args.out, "block4_from_arm")
    if not os.path.exists(os.path.join(hf_dir, "config.json")):
        llada("convert", "to-hf", f"--workdir={arm['dir']}", f"--out={hf_dir}", "--layout=llama")
    if not os.path.exists(imported):
        llada("convert", "from-hf", hf_dir, f"--out={imported}", f"--config={base}")
    scratch_cfg = rundir.load_config(scratch["dir"])
    if sweep.finished_step(adapted) != scratch_cfg.train.steps:
        overrides = {"objective": "block", "diffusion.block_size": 4, "train.steps": scratch_cfg.train.steps,
                     "checkpoint.init_from": imported, "sampling.gen_length": scratch_cfg.sampling.gen_length,
                     "sampling.steps": scratch_cfg.sampling.steps}
        llada("train", f"--config={base}", f"--workdir={adapted}",
              *(f"--config.{k}={sweep.value_text(v)}" for k, v in overrides.items()))
    adapt_row = {**scratch, "run": "block (block 4) from the arm run", "dir": adapted,
                 "acc": exact_match(adapted, os.path.join(adapted, "eval.json"), args.examples)}

    lines = [f"Addition (configs/tiny_task.py), every run at the FLOPs of LLaDA's {mdm['steps']} steps "
             f"(`python benchmarks/block_diffusion.py`):", "",
             "| run | steps | training FLOPs | exact match |", "|---|---|---|---|"]
    for r in rows + [adapt_row]:
        lines.append(f"| {r['run']} | {r['steps']} | {r['flops']:.3g} | {r['acc']:.3f} |")
    print("== 3. decoding: block 4 exact cache vs LLaDA threshold 0.9 + dual cache", flush=True)
    decoding, ratio = block_decoding.measure(scratch["dir"], mdm["dir"], args.examples, repeats=3)
    text = "\n".join(lines + ["", decoding])
    print(text)
    with open(os.path.join(args.out, "block_diffusion.md"), "w") as f:
        f.write(text + "\n")
    by = {r["run"]: r for r in rows}
    print("block: " + " ".join(f"{k.replace(' ', '')}_acc={v['acc']:.3f}" for k, v in by.items())
          + f" adapted_acc={adapt_row['acc']:.3f} scratch_acc={scratch['acc']:.3f} block_cache_vs_dual={ratio:.2f}x")


if __name__ == "__main__":
    main()
