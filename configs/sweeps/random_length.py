"""Random-length pre-training (docs/objectives.md#random-length: 1% of the data at a random length) at 0, 1% and 10%,
each model evaluated at several answer lengths (sampling.gen_length, one token per step, pure diffusion), so the
total sequence length at evaluation ranges from far below to about the training length (train.seq_len 64).

    llada sweep --sweep=configs/sweeps/random_length.py --workdir=runs/random_length
"""
from llada_jax.sweep import product, sweep, zipit

LENGTHS = [8, 24, 56]


def get_sweep():
    return "configs/tiny_task.py:arithmetic_small,packed", product([
        sweep("data.random_length_prob", [0.0, 0.01, 0.1]),
        zipit([sweep("sampling.gen_length", LENGTHS), sweep("sampling.block_length", LENGTHS),
               sweep("sampling.steps", LENGTHS)]),
    ])
