"""Decoding speed at equal quality: a block-diffusion model with its exact cache against LLaDA with the dual cache.

    python benchmarks/block_decoding.py --block=runs/block_sizes/<block run> --mdm=runs/block_sizes/<mdm run>
                                        [--examples=200] [--repeats=3]

Both runs are trained on a built-in task (e.g. by `llada sweep --sweep=configs/sweeps/block_sizes.py`); their
held-out prompts (the task's eval set) are answered in one batch with each method:
  block run: blocks decoded left to right with the exact cache (finished blocks' keys and values computed once),
             and without it (every step recomputes the whole sequence: the reference; the tokens must be the same);
  mdm run:   the baseline (one token per step, low confidence, steps = gen_length), and threshold 0.9 with the dual
             cache (Fast-dLLM; blocks of sampling.block_length of the run, or half the generation).
Per method: exact match, denoising steps, model evaluations (whole sequence / cached window) per generated position,
and answers per second (each method compiled by a first call, then timed --repeats times in
alternation, best kept). Prints one row per method and last `block_cache_vs_dual: X.XXx` (answers/s of the block
model's exact cache over LLaDA's threshold + dual cache).
"""
import argparse
import dataclasses
import time

import jax
import numpy as np

from llada_jax import block_sampling, cli, diffusion, inference, objectives, sampling
from llada_jax.data import rewards, tasks


def methods(block_run, mdm_run):
    """{name: (run, SamplingArgs, block_sampling.generate's cached or None)}."""
    b = sampling.SamplingArgs.from_config(block_run.cfg.sampling)
    m = sampling.SamplingArgs.from_config(mdm_run.cfg.sampling)
    m = dataclasses.replace(m, steps=m.gen_length, threshold=0.0, cache="none")
    half = m.block_length if m.block_length < m.gen_length else max(1, m.gen_length // 2)
    return {
        f"block {diffusion.block_size(block_run.cfg)}, exact cache": (block_run, b, True),
        f"block {diffusion.block_size(block_run.cfg)}, no cache (reference)": (block_run, b, False),
        "LLaDA baseline (1 token / step, low confidence)": (mdm_run, m, None),
        f"LLaDA threshold 0.9 + dual cache, blocks of {half}": (
            mdm_run, dataclasses.replace(m, block_length=half, threshold=0.9, cache="dual"), None),
    }


def decode(run, args, cached, tokens, mask):
    if cached is None:
        obj = objectives.get(run.cfg)
        out = obj.decode(run.model, run.params, tokens, mask, jax.random.key(0), args, run.ids, obj.block_size(run.cfg))
    else:
        out = block_sampling.generate(run.model, run.params, tokens, mask, jax.random.key(0), args, run.ids,
                                       diffusion.block_size(run.cfg), cached=cached)
    return jax.device_get(out)


def measure(block_dir, mdm_dir, n_examples=200, repeats=3):
    """(the table as markdown, answers/s of the block model's exact cache over LLaDA's threshold + dual cache)."""
    block_run, mdm_run = inference.load_run(block_dir), inference.load_run(mdm_dir)
    if block_run.cfg.objective != "block" or mdm_run.cfg.objective != "mdm":
        raise SystemExit(f"--block must be an objective=block run and --mdm an objective=mdm run; got "
                         f"{block_run.cfg.objective} and {mdm_run.cfg.objective}.")
    task = tasks.get(block_run.cfg.data.synthetic_task)
    examples = next(iter(task.eval_sets(n_examples).values()))
    tokens, mask = sampling.left_pad([block_run.codec.encode(e.prompt) for e in examples], block_run.cfg.tokens.pad_id)
    table = methods(block_run, mdm_run)
    results = {name: decode(run, sargs, cached, tokens, mask) for name, (run, sargs, cached) in table.items()}
    best = {name: float("inf") for name in table}  # the calls above compiled every method
    for _ in range(repeats):
        for name, (run, sargs, cached) in table.items():
            t0 = time.perf_counter()
            decode(run, sargs, cached, tokens, mask)
            best[name] = min(best[name], time.perf_counter() - t0)
    lines = [f"{len(examples)} held-out prompts of {block_run.cfg.data.synthetic_task} in one batch, "
             f"{jax.devices()[0].device_kind}, best of {repeats} alternating repeats:", "",
             "| method | exact match | steps | evals / position (full + window) | answers/s |", "|---|---|---|---|---|"]
    speed = {}
    for name, (run, sargs, cached) in table.items():
        out = results[name]
        texts = [run.codec.decode(sampling.answer_ids(r, tokens.shape[1], run.ids.eos_id)) for r in out["tokens"]]
        acc = np.mean([rewards.exact_match(t, e.answer) for t, e in zip(texts, examples)])
        full, window = (float(out[k]) / sargs.gen_length for k in ("full_passes", "window_passes"))
        speed[name] = len(examples) / best[name]
        lines.append(f"| {name} | {acc:.3f} | {int(out['steps'])} | {full:.3f} + {window:.3f} = {full + window:.3f} | "
                     f"{speed[name]:,.0f} |")
    names = list(table)
    same = np.array_equal(results[names[0]]["tokens"], results[names[1]]["tokens"])
    lines += ["", f"exact cache = no cache, token for token: {same}"]
    return "\n".join(lines), speed[names[0]] / speed[names[3]]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", required=True, help="run directory of an objective=block run")
    p.add_argument("--mdm", required=True, help="run directory of an objective=mdm run on the same task")
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cli._quiet_libraries()
    text, ratio = measure(args.block, args.mdm, args.examples, args.repeats)
    print(text)
    print(f"block_cache_vs_dual: {ratio:.2f}x")


if __name__ == "__main__":
    main()
