"""The CPU default: the tiny model (~0.8M parameters) learns two-digit addition from the built-in synthetic task,
in a few minutes on 2 CPU cores, and `llada sample --prompt="12+34="` answers it.

It is configs/tiny_task.py's default (`arithmetic_small` in the SFT format: one "a+b=" prompt and its answer per
row, the prompt never masked) with fewer steps; the base of every config, llada_jax.config.default_config(), is the
same tiny model on packed pre-training documents instead (`configs/tiny_task.py:arithmetic,packed` trains that).
"""
from llada_jax import config as config_lib


def get_config():
    c = config_lib.load_config("configs/tiny_task.py")
    c.name = "tiny"
    c.train.steps = 2400
    return c
