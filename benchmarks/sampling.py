"""Fast-dLLM decoding against the official reverse process: model evaluations per token, wall time and quality.

    python benchmarks/sampling.py [--train_steps=300] [--batch=16] [--gen_length=32] [--block_length=8]
                                  [--threshold=0.9] [--repeats=3] [--params_cache=PATH.npz] [--config.a.b=value ...]

Trains the tiny config briefly on the synthetic arithmetic corpus (--train_steps=0: random weights), then samples
answers to left-padded prompts "a+b=" with: the baseline (one token per step, steps = gen_length, semi-autoregressive
blocks, low confidence), threshold decoding, threshold + prefix cache, threshold + dual cache and the dual cache
alone. Reports per method: denoising steps, full-sequence and cached-window model evaluations per generated token,
wall time per batch (compilation excluded, median of --repeats), speed-up over the baseline, the fraction of tokens
equal to the baseline's, and the arithmetic accuracy of the first answer.
"""
import argparse
import dataclasses
import os
import sys
import time

import jax
import numpy as np

from llada_jax import cli, config as config_lib, sampling, train
from llada_jax.data import synthetic


def trained_params(cfg, steps, cache_path=""):
    """The tiny model after `steps` training steps; with cache_path, saved there once and reloaded afterwards."""
    setup = train.Setup(cfg)
    state = setup.init_state()
    if cache_path and os.path.exists(cache_path):
        flat = np.load(cache_path)
        leaves, treedef = jax.tree.flatten(state["params"])
        print(f"params loaded from {cache_path}")
        return setup.model, jax.tree.unflatten(treedef, [flat[f"p{i}"] for i in range(len(leaves))])
    if steps <= 0:
        return setup.model, state["params"]
    data = train.make_data(cfg)
    t0 = time.perf_counter()
    for i in range(steps):
        state, metrics = setup.step_fn(state, setup.put_batch(next(data)))
    print(f"trained {steps} steps in {time.perf_counter() - t0:.0f}s, last loss {float(metrics['loss']):.3f}")
    if cache_path:
        np.savez(cache_path, **{f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state["params"]))})
    return setup.model, state["params"]


def prompts(tok, batch, seed=0):
    """Left-padded "a+b=" prompts (EOS padding, hidden by the key mask) and the right answers."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, 1000, (batch, 2))
    texts = [f"{a}+{b}=" for a, b in pairs]
    width = max(len(t) for t in texts)
    ids = np.full((batch, width), tok.eos_id, np.int32)
    mask = np.zeros((batch, width), bool)
    for i, t in enumerate(texts):
        e = tok.encode(t)
        ids[i, width - len(e):], mask[i, width - len(e):] = e, True
    return ids, mask, [int(a + b) for a, b in pairs]


def accuracy(tok, tokens, prompt_len, answers):
    right = 0
    for row, want in zip(tokens, answers):
        text = tok.decode(sampling.answer_ids(row, prompt_len, tok.eos_id))
        digits = ""
        for ch in text:
            if not ch.isdigit():
                break
            digits += ch
        right += digits == str(want)
    return right / len(answers)


def main(argv=None):
    overrides, rest = cli.split_config_args(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--train_steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--gen_length", type=int, default=32)
    p.add_argument("--block_length", type=int, default=8)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--params_cache", default="", help="an .npz: trained params are saved there and reused")
    args = p.parse_args(rest)
    cfg = config_lib.build_config(args.config, overrides)
    dev = jax.devices()[0]
    print(f"device: {jax.device_count()} x {dev.device_kind} ({dev.platform}); model d_model {cfg.model.d_model}, "
          f"{cfg.model.n_layers} layers, vocab {cfg.model.vocab_size}")
    model, params = trained_params(cfg, args.train_steps, args.params_cache)
    tok = synthetic.CharTokenizer()
    ids = sampling.TokenIds(cfg.tokens.mask_id, cfg.tokens.eos_id, cfg.tokens.eot_id)
    prompt, mask, answers = prompts(tok, args.batch)
    g, bl, tau = args.gen_length, args.block_length, args.threshold
    base = sampling.SamplingArgs(gen_length=g, block_length=bl, steps=g)
    methods = [
        ("baseline (1 token/step)", base),
        (f"threshold {tau}", dataclasses.replace(base, threshold=tau)),
        (f"threshold {tau} + prefix cache", dataclasses.replace(base, threshold=tau, cache="prefix")),
        (f"threshold {tau} + dual cache", dataclasses.replace(base, threshold=tau, cache="dual")),
        ("dual cache (1 token/step)", dataclasses.replace(base, cache="dual")),
    ]
    key = jax.random.key(0)
    print(f"batch {args.batch}, prompt {prompt.shape[1]} (left-padded), gen_length {g}, block_length {bl}")
    print(f"{'method':<34} {'steps':>6} {'full/tok':>9} {'window/tok':>11} {'ms/batch':>9} {'speed-up':>9} "
          f"{'same tok':>9} {'accuracy':>9}")
    ref_time = ref_tokens = None
    for name, a in methods:
        t0 = time.perf_counter()
        out = jax.block_until_ready(sampling.generate(model, params, prompt, mask, key, a, ids))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(sampling.generate(model, params, prompt, mask, key, a, ids))
            times.append(time.perf_counter() - t0)
        out = jax.device_get(out)
        ms = 1e3 * float(np.median(times))
        gen = out["tokens"][:, prompt.shape[1]:]
        if ref_time is None:
            ref_time, ref_tokens = ms, gen
        print(f"{name:<34} {int(out['steps']):>6} {int(out['full_passes']) / g:>9.3f} "
              f"{int(out['window_passes']) / g:>11.3f} {ms:>9.1f} {ref_time / ms:>8.2f}x "
              f"{np.mean(gen == ref_tokens):>9.1%} {accuracy(tok, out['tokens'], prompt.shape[1], answers):>9.1%}"
              f"   (first call {compile_s:.1f}s)")
    print("window: the generated region (prefix cache) or the block (dual cache); evaluations count batch passes.")


if __name__ == "__main__":
    main()
