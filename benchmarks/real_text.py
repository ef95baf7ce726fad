"""Real text end to end: masked diffusion vs the autoregressive baseline on the Python standard library's source.

    python benchmarks/real_text.py [--out=runs/real_text] [--sizes=s,m] [--budget_steps=400]    # ~90 CPU min
    python benchmarks/real_text.py --quick                                                    # < 10 CPU min
    python benchmarks/real_text.py --blocks=4,16    # then: block diffusion (block sizes 4 and 16) at the same FLOPs

Stages (each resumes or is skipped when its outputs exist in --out):
  1. corpus: `llada data corpus --name=python_stdlib --vocab_size=N` (train / validation / test by file; the
     tokenizer sees the train split only).
  2. pre-training (configs/text_small.py): for every size, the masked-diffusion model (mdm) and the autoregressive
     baseline (arm) at equal training FLOPs: every run gets the FLOPs of the smallest mdm's --budget_steps steps
     (mfu.flops_per_step: the causal arm has half the attention FLOPs, so it trains slightly more steps; a
     larger model trains fewer). Checkpoints at 1/4, 1/2, 3/4 and all of each run's steps. --blocks=4,16: also
     block-diffusion models (objective=block) of the first size with those block sizes, at the same FLOPs (the
     [x_t ; x_0] input doubles a step's work: half the steps); the mdm run is the full-length block.
  3. perplexity on the test split (windows of train.seq_len tokens, never seen in training) at every checkpoint:
     the ELBO bound for mdm (--elbo_samples draws per window; its standard error shown), the block ELBO for block
     runs, and the exact value for arm.
     Table and plot against training FLOPs.
  4. generation from the best mdm (lowest final test perplexity: at equal FLOPs a larger model trains fewer
     steps), unconditional (a one-token EOS prompt: the start of a document; temperature
     1, so that the rows differ) and conditioned on the first 64 tokens of test files (temperature 0, as the paper
     evaluates), with the baseline (one token per step, low confidence), random
     remasking, semi-autoregressive blocks of 32, threshold 0.9 / 0.7 and threshold 0.9 + dual cache (blocks of 32).
     Quality: generative perplexity under the best arm (the judge) and unigram entropy per sample; speed: model
     evaluations per generated token and tokens/s (one timed run after a warm-up that compiles the same program).
     Unconditional samples are --gen_tokens long (256; 64 with --quick); prompted ones min(--gen_tokens,
     train.seq_len - 64), so that prompt + answer is the length the model was trained at. Block runs: blocks left
     to right with the exact cache, one token per step (decoding stops after the block in which every row has an
     EOS: the positions decoded are scored).
  5. multiple choice (`llada data choices`, test files): which of 4 continuations of a function is real, through
     `llada eval --choices=`: mdm by Algorithm 3 (eval.mc_samples), block runs by the block ELBO, arm by exact
     likelihood.
Writes OUT/results.json, OUT/real_text.md (the tables and one sample of each model) and OUT/ppl_vs_flops.png;
prints the tables, and last, `quick: mdm_elbo_ppl=... arm_ppl=... gen_ppl_baseline=... gen_ppl_fast=...
fast_evals_ratio=...` (the best models; "fast" = the threshold setting with the fewest evaluations whose
generative perplexity is within 10% of the baseline's, else threshold 0.9).
"""
import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

from llada_jax import (
    cli,
    config as config_lib,
    diffusion,
    inference,
    likelihood,
    mfu,
    model as model_lib,
    objectives,
    sampling,
    train,
)
from llada_jax.data import corpus, store

PRESETS = {
    "full": dict(max_files=0, vocab_size=8192, sizes="s,m", budget_steps=400, batch=16, ppl_windows=128,
                 elbo_samples=8, prompts=4, gen_tokens=256, mc=200, mc_samples=16, blocks=""),
    "quick": dict(max_files=300, vocab_size=2048, sizes="s", budget_steps=150, batch=8, ppl_windows=32,
                  elbo_samples=4, prompts=4, gen_tokens=64, mc=40, mc_samples=16, blocks=""),
}
PROMPT_TOKENS = 64
BOUND = {"mdm": "ELBO bound", "block": "block ELBO bound", "arm": "exact"}


def methods(gen_length):
    lc = sampling.SamplingArgs(gen_length=gen_length, block_length=gen_length, steps=gen_length)
    blocks = dataclasses.replace(lc, block_length=32)
    return {
        "baseline (1 token / step, low confidence)": lc,
        "random remasking": dataclasses.replace(lc, remasking="random"),
        "semi-autoregressive, blocks of 32": blocks,
        "threshold 0.9, blocks of 32": dataclasses.replace(blocks, threshold=0.9),
        "threshold 0.9 + dual cache, blocks of 32": dataclasses.replace(blocks, threshold=0.9, cache="dual"),
        "threshold 0.7, blocks of 32": dataclasses.replace(blocks, threshold=0.7),
    }


def run_config(args, objective, size, steps, block=None):
    cfg = config_lib.load_config(f"configs/text_small.py:{args.corpus},{objective},{size}")
    if block:
        cfg.diffusion.block_size = block
    cfg.train.steps, cfg.train.global_batch = steps, args.batch
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = max(1, steps // 4), 8
    cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, steps // 10)
    return cfg


def test_windows(path, seq_len, n):
    """n windows of seq_len tokens of the token store at `path` (a test split), evenly spaced, not overlapping."""
    s = store.TokenStore(path)
    total = s.array.shape[0]
    n = min(n, total // seq_len)
    return np.asarray(s.read_many(np.arange(n) * (total // n), seq_len), np.int32)


def perplexity(run, tokens, elbo_samples, key):
    obj = objectives.get(run.cfg)
    return obj.perplexity(run.model, run.params, tokens, key, run.cfg.tokens.mask_id, n_samples=elbo_samples,
                          eps=run.cfg.diffusion.eps, block_size=obj.block_size(run.cfg))


def unigram_entropy(row):
    _, counts = np.unique(row, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def warm_up_args(sargs, block):
    """The same compiled program (steps and the threshold are traced values) decoding each block (of `block`
    tokens) in one step: the warm-up call compiles without paying for a whole generation."""
    if sargs.use_threshold:  # still on (the same program), and every position passes it
        return dataclasses.replace(sargs, threshold=1e-30)
    return dataclasses.replace(sargs, steps=sargs.gen_length // block)


def generate(run, judge, prompt, sargs):
    """Samples for one method: generative perplexity (judge = the arm run), entropy, evaluations, tokens/s (of the
    positions decoded: a block run stops after the block in which every row has its EOS)."""
    ids, key = sampling.TokenIds.from_config(run.cfg), jax.random.key(0)
    obj = objectives.get(run.cfg)
    block = obj.block_size(run.cfg)  # None: not a block-diffusion run

    def decode(a):
        return jax.device_get(obj.decode(run.model, run.params, prompt, None, key, a, ids, block))

    decode(warm_up_args(sargs, block or sargs.block_length))
    t0 = time.perf_counter()
    out = decode(sargs)
    seconds = time.perf_counter() - t0
    tokens = np.asarray(out["tokens"])
    p = prompt.shape[1]
    committed = np.asarray(out["order"]) >= 0  # never committed: the blocks after a block run's stop
    decoded = sargs.gen_length - np.argmax(committed[:, ::-1], 1)  # up to the last committed position
    r = likelihood.ar_perplexity(judge.model, judge.params, tokens, start=p, lengths=p + decoded)
    passes = float(out["full_passes"]) + float(out["window_passes"])
    return {"gen_ppl": r["ppl"], "gen_nll_stderr": r["stderr"],
            "entropy": float(np.mean([unigram_entropy(row[p:p + d]) for row, d in zip(tokens, decoded)])),
            "evals_per_token": passes / decoded.mean(), "steps": int(out["steps"]),
            "tokens_per_s": decoded.sum() / seconds, "decoded": float(decoded.mean()),
            "sample": run.codec.decode([int(i) for i in tokens[0, p:p + decoded[0]]])}


def final_point(curve, objective, size):
    """The perplexity entry of a run's last checkpoint."""
    return max((c for c in curve.values() if c["objective"] == objective and c["size"] == size),
               key=lambda c: c["step"])


def table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small corpus slice and few hundred steps (< 10 minutes)")
    p.add_argument("--out", default=None, help="default runs/real_text (runs/real_text_quick with --quick)")
    for k, v in PRESETS["full"].items():
        p.add_argument(f"--{k}", type=type(v), default=None, help=f"default {v} ({PRESETS['quick'][k]} with --quick)")
    args = p.parse_args()
    for k, v in PRESETS["quick" if args.quick else "full"].items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    args.out = args.out or ("runs/real_text_quick" if args.quick else "runs/real_text")
    args.corpus = os.path.join(args.out, "corpus")
    cli._quiet_libraries()  # what `llada` does: no absl / libtpu start-up noise
    t_start = time.perf_counter()

    def elapsed():
        return f"{(time.perf_counter() - t_start) / 60:.1f} min in"

    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}

    def save():
        with open(results_path, "w") as f:
            json.dump(results, f, indent=2)

    print(f"== 1. corpus -> {args.corpus}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    corpus.collect(args.corpus, "python_stdlib", max_files=args.max_files)
    corpus.tokenize(args.corpus, args.vocab_size)

    sizes = args.sizes.split(",")
    reference = run_config(args, "mdm", sizes[0], 1)
    budget = args.budget_steps * mfu.flops_per_step(reference)
    plan = [(f"{objective}_{size}", objective, size, None) for size in sizes for objective in ("mdm", "arm")]
    plan += [(f"block{b}_{sizes[0]}", "block", sizes[0], int(b)) for b in args.blocks.split(",") if b]
    seq_len = reference.train.seq_len
    prompted_length = min(args.gen_tokens, seq_len - PROMPT_TOKENS)  # prompt + answer = the training length
    lengths = (args.gen_tokens, prompted_length, PROMPT_TOKENS)
    bad = [block for *_, block in plan if block and any(n % block for n in lengths)]
    if bad:
        raise SystemExit(f"--blocks: {bad} must divide the sequence, prompt and generation lengths {lengths} "
                         f"(train.seq_len {seq_len}, --gen_tokens); e.g. --blocks=4,16.")
    runs = {}  # name -> (workdir, cfg)
    for name, objective, size, block in plan:
        steps = max(4, round(budget / mfu.flops_per_step(run_config(args, objective, size, 1, block))))
        cfg = run_config(args, objective, size, steps, block)
        workdir = os.path.join(args.out, name)
        print(f"== 2. train {name}: {model_lib.count_params(cfg.model) / 1e6:.1f}M params, {steps} steps, "
              f"{budget / 1e12:.2f} TFLOPs -> {workdir} ({elapsed()})", flush=True)
        train.train(cfg, workdir)
        runs[name] = (workdir, cfg)

    print(f"== 3. test-split perplexity at every checkpoint ({elapsed()})", flush=True)
    windows = test_windows(os.path.join(args.corpus, "prepared", "test"), seq_len, args.ppl_windows)
    curve = results.setdefault("perplexity", {})
    for name, objective, size, block in plan:
        workdir, cfg = runs[name]
        steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
        for step in steps:
            key = f"{name}@{step}"
            if key not in curve:
                r = perplexity(inference.load_run(workdir, step=step), windows, args.elbo_samples,
                               jax.random.key(step))
                curve[key] = {"objective": objective, "size": size, "step": step, "block": block,
                              "flops": step * mfu.flops_per_step(cfg), "params": model_lib.count_params(cfg.model), **r}
                save()
            c = curve[key]
            print(f"  {key}: {BOUND[objective]} ppl {c['ppl']:.2f} "
                  f"(nll {c['nll']:.4f} +- {c['stderr']:.4f}) at {c['flops'] / 1e12:.2f} TFLOPs", flush=True)

    best = {o: min(sizes, key=lambda size: final_point(curve, o, size)["ppl"]) for o in ("mdm", "arm")}
    results["best"] = best
    print(f"== 4. generation from mdm_{best['mdm']}, judged by arm_{best['arm']} (the lowest final test perplexity) "
          f"({elapsed()})", flush=True)
    mdm = inference.load_run(runs[f"mdm_{best['mdm']}"][0])
    judge = inference.load_run(runs[f"arm_{best['arm']}"][0])
    block_runs = {name: inference.load_run(runs[name][0]) for name, objective, *_ in plan if objective == "block"}
    eos = mdm.cfg.tokens.eos_id
    docs = corpus.read_jsonl(os.path.join(args.corpus, "test.jsonl"))
    prompts = [ids[:PROMPT_TOKENS] for ids in (mdm.codec.encode(d["text"][:16 * PROMPT_TOKENS]) for d in docs)
               if len(ids) >= PROMPT_TOKENS][:args.prompts]
    gen = results.setdefault("generation", {})
    for kind, prompt, length, temperature in (
            ("unconditional", np.full((args.prompts, 1), eos, np.int32), args.gen_tokens, 1.0),
            ("prompted", np.array(prompts, np.int32), prompted_length, 0.0)):
        todo = [(name, f"mdm_{best['mdm']}", sargs) for name, sargs in methods(length).items()]
        todo += [(f"{name}: block {diffusion.block_size(run.cfg)}, exact cache, 1 token / step", name,
                  sampling.SamplingArgs(gen_length=length, block_length=length, steps=length))
                 for name, run in block_runs.items()]
        for name, run_name, sargs in todo:
            run = block_runs.get(run_name, mdm)
            sargs = dataclasses.replace(sargs, temperature=temperature)
            key = f"{kind}: {name}"
            if gen.get(key, {}).get("run") != run_name:  # new, or made by another mdm (results.json of older runs)
                print(f"  {key} ... ({elapsed()})", flush=True)
                gen[key] = {"kind": kind, "method": name, "run": run_name, "gen_length": length,
                            **generate(run, judge, prompt, sargs)}
                save()

    print(f"== 5. multiple choice through `llada eval --choices=` ({elapsed()})", flush=True)
    mc_path = os.path.join(args.out, "choices.jsonl")
    if not os.path.exists(mc_path):
        cli.main(["data", "choices", f"--corpus={args.corpus}", f"--tokenizer={mdm.cfg.data.tokenizer}",
                  f"--out={mc_path}", f"--n={args.mc}"])
    mc = results.setdefault("choices", {})
    for key, (workdir, _) in runs.items():
        if key not in mc:
            out = os.path.join(workdir, "eval_choices.json")
            cli.main(["eval", f"--workdir={workdir}", f"--choices={mc_path}", "--perplexity=0", "--tasks=none",
                      f"--out={out}", f"--config.eval.mc_samples={args.mc_samples}"])
            mc[key] = json.load(open(out))
            save()

    ar_samples = {}
    for size in sizes:  # one sample of each arm (temperature 1), for the report
        run = inference.load_run(runs[f"arm_{size}"][0])
        out = run.sample(None, jax.random.key(1), sampling.SamplingArgs(gen_length=96, temperature=1.0),
                         prompt_ids=[prompts[0]])
        ar_samples[size] = run.codec.decode([int(i) for i in out["tokens"][0, PROMPT_TOKENS:]])
    report(args, results, plan, ar_samples, mdm.codec.decode(prompts[0]), time.perf_counter() - t_start)


def report(args, results, plan, ar_samples, prompt_text, seconds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, *_ in plan]  # what this invocation ran (results.json may hold more)
    curve = sorted((c for k, c in results["perplexity"].items() if k.split("@")[0] in names),
                   key=lambda c: (c["objective"], c.get("block") or 0, c["size"], c["step"]))
    ppl_rows = [(c["objective"] + (f" {c['block']}" if c.get("block") else ""), c["size"],
                 f"{c['params'] / 1e6:.1f}M", c["step"], f"{c['flops'] / 1e12:.2f}",
                 f"{c['ppl']:.2f}", f"{c['nll']:.4f} +- {c['stderr']:.4f}") for c in curve]
    shown = {f"mdm_{results['best']['mdm']}"} | {name for name, o, *_ in plan if o == "block"}
    gen = {k: g for k, g in results["generation"].items() if g.get("run") in shown}
    gen_rows = [(g["kind"], g["method"], f"{g.get('decoded', g['gen_length']):.0f} / {g['gen_length']}",
                 f"{g['gen_ppl']:.2f}", f"{g['entropy']:.2f}", f"{g['evals_per_token']:.3f}",
                 f"{g['tokens_per_s']:.1f}") for g in gen.values()]
    mc_rows = [(k, f"{v['choices/accuracy']:.3f}", v["choices/n"]) for k, v in results["choices"].items() if k in names]
    best_size = results["best"]
    final = {o: final_point(results["perplexity"], o, best_size[o]) for o in ("mdm", "arm")}
    base = gen["prompted: baseline (1 token / step, low confidence)"]
    fast = [g for k, g in gen.items() if k.startswith("prompted: threshold")]
    within = [g for g in fast if g["gen_ppl"] <= 1.1 * base["gen_ppl"]]
    best = min(within, key=lambda g: g["evals_per_token"]) if within else fast[0]
    flags = (" --quick" if args.quick else "") + (f" --blocks={args.blocks}" if args.blocks else "")
    lines = [
        f"Real text (`python benchmarks/real_text.py{flags}`, this invocation {seconds / 60:.1f} min):",
        "", "Perplexity per token on the test split against training FLOPs (mdm: ELBO upper bound; block: the block "
        "ELBO bound; arm: exact):", "",
        table(["objective", "size", "params", "step", "TFLOPs", "ppl", "nll +- stderr"], ppl_rows), "",
        f"Generation from mdm_{best_size['mdm']} (and the block runs), judged by arm_{best_size['arm']} (the lowest "
        f"final test perplexities):", "",
        table(["samples", "method", "tokens decoded / asked", "gen. ppl", "unigram entropy (nats)", "evals / token",
               "tokens/s"], gen_rows), "",
        "Multiple choice (4 continuations of a function from held-out files):", "",
        table(["run", "accuracy", "examples"], mc_rows), "",
        f"Prompt (first {PROMPT_TOKENS} tokens of a test file):", "", "```", prompt_text, "```", "",
        f"mdm_{best_size['mdm']} (baseline decoding):", "", "```", base["sample"], "```", ""]
    for size, text in ar_samples.items():
        lines += [f"arm_{size} (temperature 1):", "", "```", text, "```", ""]
    text = "\n".join(lines)
    with open(os.path.join(args.out, "real_text.md"), "w") as f:
        f.write(text)
    print(text)
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, o, size, block in plan:
        pts = [c for c in curve if c["objective"] == o and c["size"] == size and c.get("block") == block]
        ax.errorbar([c["flops"] for c in pts], [c["ppl"] for c in pts], yerr=[c["ppl"] * c["stderr"] for c in pts],
                    marker={"mdm": "o", "arm": "s", "block": "^"}[o], label=f"{name} ({BOUND[o]})")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="test perplexity per token")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "ppl_vs_flops.png"), dpi=120)
    print(f"quick: mdm_elbo_ppl={final['mdm']['ppl']:.2f} arm_ppl={final['arm']['ppl']:.2f} "
          f"gen_ppl_baseline={base['gen_ppl']:.2f} gen_ppl_fast={best['gen_ppl']:.2f} "
          f"fast_evals_ratio={base['evals_per_token'] / best['evals_per_token']:.2f}")


if __name__ == "__main__":
    main()
