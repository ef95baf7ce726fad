"""Tokens/s and MFU of the jitted train step, against the device's peak (a measured matmul peak on the CPU).

    python benchmarks/train_throughput.py --configs=tiny,small [--steps=10] [--config.a.b=value ...]

MFU = model FLOPs (6 N_non-embedding + output head + full bidirectional attention, per token) x tokens/s over the
peak FLOP/s of all devices. On the CPU the peak is a large float32 matmul measured in the same run.
"""
import argparse
import sys
import time

import jax
import numpy as np

from llada_jax import cli, config as config_lib, mfu, model as model_lib, train
from llada_jax.data import synthetic


def measure(cfg, steps):
    setup = train.Setup(cfg)
    state = setup.init_state()
    corpus = synthetic.SyntheticCorpus(cfg.train.seq_len, 0)
    batches = [setup.put_batch(corpus.batch(i, cfg.train.global_batch)) for i in range(2)]
    state, m = setup.step_fn(state, batches[0])  # compile
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(steps):
        state, m = setup.step_fn(state, batches[i % 2])
    jax.block_until_ready((state, m))
    elapsed = time.perf_counter() - t0
    tokens = steps * cfg.train.global_batch * cfg.train.seq_len
    flops = model_lib.flops_per_token(cfg.model, cfg.train.seq_len) * tokens
    peak = mfu.device_peak_flops() * jax.device_count()
    return tokens / elapsed, flops / elapsed, peak


def main(argv=None):
    overrides, rest = cli.split_config_args(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,small")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(rest)
    dev = jax.devices()[0]
    print(f"device: {jax.device_count()} x {dev.device_kind} ({dev.platform})")
    print(f"{'config':<10} {'params':>9} {'batch x len':>12} {'tokens/s':>11} {'TFLOP/s':>9} {'peak TFLOP/s':>13} "
          f"{'MFU':>6}")
    for name in args.configs.split(","):
        cfg = config_lib.build_config(f"configs/{name}.py", overrides)
        tps, achieved, peak = measure(cfg, args.steps)
        print(f"{name:<10} {model_lib.count_params(cfg.model) / 1e6:>8.1f}M "
              f"{cfg.train.global_batch:>5} x {cfg.train.seq_len:<5} {tps:>11,.0f} {achieved / 1e12:>9.4f} "
              f"{peak / 1e12:>13.4f} {achieved / peak:>6.1%}")


if __name__ == "__main__":
    main()
