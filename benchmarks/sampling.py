"""Fast-dLLM decoding against the official reverse process on a trained tiny model: model evaluations per token,
tokens/s and exact-match accuracy, at generation length 256.

    python benchmarks/sampling.py [--config=configs/tiny_task.py] [--train_steps=N | --init_from=RUN]
                                  [--finetune_steps=300] [--finetune_lr=3e-4]
                                  [--examples=32] [--gen_length=256] [--block_length=32] [--thresholds=0.9,0.7]
                                  [--workdir=DIR] [--config.a.b=value ...]

The model is trained on the config's task in the SFT format (data.synthetic_format=sft: one "a+b=" prompt and its
answer per row, EOS-padded, the prompt never masked) at the config's short train.seq_len, then fine-tuned briefly
at prompt + gen_length (--finetune_seq_len) so that it knows those positions and ends its answers in EOS padding,
as an instruct model does.
Then held-out prompts (pairs never seen in training) are answered with: the baseline (the official generate():
one token per step, steps = gen_length, semi-autoregressive blocks, low confidence), threshold decoding, the
prefix and dual caches alone (one token per step) and threshold decoding with each cache. Per method: denoising
steps, full-sequence and cached-window model evaluations per generated token, their total against the baseline's,
tokens/s (compilation excluded) and the speed-up over the baseline, exact match, and agreement with the baseline.
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

import jax
import numpy as np

from llada_jax import cli, config as config_lib, inference, sampling, train
from llada_jax.data import rewards, tasks


def trained_run(cfg, args):
    """The run after both stages (inference.load_run), each a `train.train` run under --workdir (a rerun resumes
    or reuses them); --init_from replaces the first stage with a finished `llada train --config=...` run."""
    t0 = time.perf_counter()
    first = args.init_from
    if not first:
        first = os.path.join(args.workdir, "train")
        first_cfg = config_lib.from_json(config_lib.to_json(cfg))
        first_cfg.train.steps = args.train_steps if args.train_steps >= 0 else cfg.train.steps
        train.train(first_cfg, first)
    if args.finetune_steps == 0:
        return inference.load_run(first)
    ft = config_lib.from_json(config_lib.to_json(cfg))
    ft.train.seq_len, ft.train.global_batch = args.finetune_seq_len, args.finetune_batch
    ft.optim.peak_lr, ft.optim.final_lr, ft.optim.warmup_steps = args.finetune_lr, args.finetune_lr / 10, 20
    ft.train.steps, ft.checkpoint.init_from = args.finetune_steps, first
    train.train(ft, os.path.join(args.workdir, "finetune"))
    print(f"trained in {time.perf_counter() - t0:.0f}s")
    return inference.load_run(os.path.join(args.workdir, "finetune"))


def main(argv=None):
    overrides, rest = cli.split_config_args(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny_task.py")
    p.add_argument("--train_steps", type=int, default=-1, help="-1: the config's train.steps")
    p.add_argument("--init_from", default="", help="a run directory trained with --config: skip the first stage")
    p.add_argument("--finetune_steps", type=int, default=300, help="0: no second stage (sample within train.seq_len)")
    p.add_argument("--finetune_batch", type=int, default=16)
    p.add_argument("--finetune_lr", type=float, default=3e-4)
    p.add_argument("--finetune_seq_len", type=int, default=264, help="at least prompt + gen_length")
    p.add_argument("--examples", type=int, default=32, help="held-out prompts, one batch")
    p.add_argument("--gen_length", type=int, default=256)
    p.add_argument("--block_length", type=int, default=32)
    p.add_argument("--thresholds", default="0.9", help="comma-separated; caches are combined with the first")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--workdir", default="", help="where the training runs go (default: a new temporary directory); "
                                                 "a rerun with the same --workdir reuses its finished runs")
    args = p.parse_args(rest)
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_sampling_")
    cfg = config_lib.build_config(args.config, overrides)
    dev = jax.devices()[0]
    print(f"device: {jax.device_count()} x {dev.device_kind} ({dev.platform}); model d_model {cfg.model.d_model}, "
          f"{cfg.model.n_layers} layers; task {cfg.data.synthetic_task}")
    run = trained_run(cfg, args)
    model, params, codec = run.model, run.params, run.codec
    print(f"sampling the run of {run.step} steps")
    task = tasks.get(cfg.data.synthetic_task)
    (set_name, examples), = list(task.eval_sets(args.examples).items())[:1]
    prompt, mask = sampling.left_pad([codec.encode(e.prompt) for e in examples], cfg.tokens.pad_id)
    trained_len = args.finetune_seq_len if args.finetune_steps > 0 else cfg.train.seq_len
    if prompt.shape[1] + args.gen_length > trained_len:
        raise SystemExit(f"prompt {prompt.shape[1]} + gen_length {args.gen_length} exceeds {trained_len}, the longest "
                         f"sequence the model was trained on (--finetune_seq_len, or train.seq_len without it).")
    ids = sampling.TokenIds.from_config(cfg)
    g, bl = args.gen_length, args.block_length
    taus = [float(t) for t in args.thresholds.split(",")]
    tau = taus[0]
    base = sampling.SamplingArgs(gen_length=g, block_length=bl, steps=g)
    methods = [
        ("baseline (1 token/step)", base),
        *[(f"threshold {t}", dataclasses.replace(base, threshold=t)) for t in taus],
        ("prefix cache (1 token/step)", dataclasses.replace(base, cache="prefix")),
        ("dual cache (1 token/step)", dataclasses.replace(base, cache="dual")),
        (f"threshold {tau} + prefix cache", dataclasses.replace(base, threshold=tau, cache="prefix")),
        (f"threshold {tau} + dual cache", dataclasses.replace(base, threshold=tau, cache="dual")),
    ]
    key = jax.random.key(0)
    print(f"{len(examples)} held-out prompts ({set_name}), prompt {prompt.shape[1]} (left-padded), gen_length {g}, "
          f"block_length {bl}")
    print(f"{'method':<32} {'steps':>6} {'full/tok':>9} {'window/tok':>11} {'evals vs base':>14} {'tok/s':>8} "
          f"{'speed-up':>9} {'same tok':>9} {'exact match':>12}")
    ref = None
    for name, a in methods:
        jax.block_until_ready(sampling.generate(model, params, prompt, mask, key, a, ids))  # compile
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(sampling.generate(model, params, prompt, mask, key, a, ids))
            times.append(time.perf_counter() - t0)
        out = jax.device_get(out)
        seconds = float(np.median(times))
        gen = out["tokens"][:, prompt.shape[1]:]
        evals = int(out["full_passes"]) + int(out["window_passes"])
        answers = [codec.decode(sampling.answer_ids(r, prompt.shape[1], ids.eos_id)) for r in out["tokens"]]
        acc = np.mean([rewards.exact_match(p, e.answer) for p, e in zip(answers, examples)])
        if ref is None:
            ref = {"seconds": seconds, "gen": gen, "evals": evals}
        print(f"{name:<32} {int(out['steps']):>6} {int(out['full_passes']) / g:>9.3f} "
              f"{int(out['window_passes']) / g:>11.3f} {ref['evals'] / evals:>13.1f}x "
              f"{gen.size / seconds:>8.0f} {ref['seconds'] / seconds:>8.2f}x {np.mean(gen == ref['gen']):>9.1%} "
              f"{acc:>12.1%}", flush=True)
    print("full/tok, window/tok: model evaluations of the whole sequence / of the generated region (prefix cache) or "
          "the block (dual cache) per generated token, each over the whole batch; 'evals vs base': the baseline's "
          "evaluations divided by this method's (all kinds counted alike).")


if __name__ == "__main__":
    main()
