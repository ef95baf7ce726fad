"""The tiny model on a built-in task (llada_jax/tasks.py) with short answers: trains on 2 CPU cores in about 8
minutes and is scored by exact match (`llada eval`, sweeps). `configs/tiny_task.py:TASK` picks the task (default
arithmetic_small: two-digit addition, evaluated on operand pairs never seen in training; `:reversal` the facts task).

Measured (600 steps, ~8 min on 2 shared CPU cores): arithmetic_small 1.6% exact match (the model writes plausible
sums but has not learnt addition); reversal (MDM) forward 6%, reverse 0% (memorisation of the facts had only begun:
the loss was still falling fast); the ARM baseline (objective=arm, same 600 steps) reaches reversal forward 100%,
reverse 0% (the reversal curse). A diffusion model at >= 95% needs more steps than 10 CPU minutes give here.

    llada train --config=configs/tiny_task.py --workdir=runs/tiny_task
    llada sweep --sweep=configs/sweeps/reversal.py        # configs/tiny_task.py:reversal, MDM vs ARM
"""
from llada_jax.config import default_config


def get_config(task="arithmetic_small"):
    c = default_config()
    c.name = f"tiny_{task}"
    c.data.synthetic_task = task
    c.eval.tasks = task
    c.eval.n_examples = 200
    c.eval.batch = 50
    s = c.sampling  # answers are at most 3 characters plus EOS: pure diffusion over 8 positions, 1 token per step
    s.gen_length, s.block_length, s.steps = 8, 8, 8
    return c
