"""The addition task's held-out accuracy across seeds: how much of a tiny run's exact match is the recipe and how
much its trajectory (the seed draws the initialisation, the data order and the noise).

configs/tiny_task.py at LLaDA's 2400 steps (about 5 CPU minutes a point), seeds 0-3, exact match on 200 held-out
operand pairs:

    llada sweep --sweep=configs/sweeps/seeds.py --workdir=runs/seeds
"""
from llada_jax.sweep import sweep

BASE = "configs/tiny_task.py"


def get_sweep():
    return BASE, [{**p, "train.steps": 2400} for p in sweep("seed", [0, 1, 2, 3])]
