"""Sampling at temperature 1 against temperature 0: tokens/s of the same decoder, alternating in one process.

At T > 0 every committed token is a Gumbel-max draw, so each step draws noise for the positions that are still
[MASK] in the block being decoded (docs/sampling.md#temperature-and-gumbel-noise); at T = 0 there is none. The
model is the `s` size of configs/text_small.py (4 layers of 256, an 8192-token vocabulary) with random weights (the
time of a step does not depend on them) and one token per step, so both temperatures run the same number of steps.

    python benchmarks/temperature_speed.py [--batch=4] [--gen_length=256] [--rounds=3]

Prints one line per decoder and last `temperature_speed: worst T1/T0 time ratio=X`.
"""
import argparse
import dataclasses
import time

import jax
import numpy as np

from llada_jax import config as config_lib, model as model_lib, objectives, sampling


def model_config(objective, block):
    c = config_lib.default_config()
    m = c.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = 8192, 256, 4, 4, 4, 704
    m.max_seq_len = 512
    c.objective, c.diffusion.block_size = objective, block
    return c


def decoders(gen_length):
    """(name, objective, SamplingArgs) of the decoders timed: LLaDA's three block layouts and a block model."""
    whole = sampling.SamplingArgs(gen_length=gen_length, block_length=gen_length, steps=gen_length)
    blocks = dataclasses.replace(whole, block_length=32)
    return [("mdm, one block", "mdm", whole), ("mdm, blocks of 32", "mdm", blocks),
            ("mdm, blocks of 32, dual cache", "mdm", dataclasses.replace(blocks, cache="dual")),
            ("block diffusion, block 32 (cached)", "block", blocks)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--gen_length", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="timed generations of each temperature, alternating")
    args = p.parse_args()
    prompt = np.full((args.batch, 1), 2, np.int32)
    worst = 0.0
    for name, objective, sargs in decoders(args.gen_length):
        cfg = model_config(objective, 32)
        model = model_lib.Model(cfg.model)
        params = model.init(jax.random.key(0))
        obj, ids = objectives.get(cfg), sampling.TokenIds.from_config(cfg)
        runs = {t: dataclasses.replace(sargs, temperature=t) for t in (0.0, 1.0)}

        def decode(a):
            out = obj.decode(model, params, prompt, None, jax.random.key(1), a, ids, obj.block_size(cfg))
            return jax.block_until_ready(out["tokens"])

        for a in runs.values():  # compile (one program serves both temperatures) and warm up
            decode(a)
        times = {t: [] for t in runs}
        for _ in range(args.rounds):
            for t, a in runs.items():
                t0 = time.perf_counter()
                decode(a)
                times[t].append(time.perf_counter() - t0)
        rate = {t: args.batch * args.gen_length / np.median(v) for t, v in times.items()}
        ratio = rate[0.0] / rate[1.0]
        worst = max(worst, ratio)
        print(f"{name}: T=0 {rate[0.0]:.1f} tok/s, T=1 {rate[1.0]:.1f} tok/s, time ratio T1/T0 {ratio:.2f}",
              flush=True)
    print(f"temperature_speed: worst T1/T0 time ratio={worst:.2f}")


if __name__ == "__main__":
    main()
