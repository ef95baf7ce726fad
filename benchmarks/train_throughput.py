"""Tokens/s and MFU of the training loop, against the device's peak (a measured matmul peak on the CPU).

    python benchmarks/train_throughput.py --configs=tiny,small [--steps=10] [--config.a.b=value ...]

MFU = model FLOPs (6 N_non-embedding + output head + full bidirectional attention, per token) x tokens/s over the
peak FLOP/s of all devices. On the CPU the peak is a large float32 matmul measured in the same run.
"""
import argparse
import sys
import tempfile

import jax

from llada_jax import cli, config as config_lib, mfu, model as model_lib, optim, train


def measure(cfg, steps):
    """(tokens/s, achieved FLOP/s, peak FLOP/s) of the training loop (train.train): the second of two logging windows
    of `steps` steps each (the first one compiles), in a fresh temporary run directory."""
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = 2 * steps, steps, 2 * steps
    with tempfile.TemporaryDirectory() as workdir:
        _, history = train.train(cfg, workdir, log=lambda *_: None)
    tps = history[-1]["tokens_per_sec"]
    return tps, tps / optim.tokens_per_step(cfg) * mfu.flops_per_step(cfg), mfu.device_peak_flops() * jax.device_count()


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
