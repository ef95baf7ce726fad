"""The reversal experiment (paper section 4, Table 4) in miniature: masked diffusion vs the autoregressive baseline
on the `reversal` task (llada_jax/data/tasks.py). Half of 64 random facts A -> B are trained both ways ("A>B",
"B<A"), the other half only forward; both are then queried forward ("A>" -> B) and reversed ("B<" -> A):
results columns reversal_forward/exact_match and reversal_reverse/exact_match.

    llada sweep --sweep=configs/sweeps/reversal.py --workdir=runs/reversal
"""
from llada_jax.sweep import sweep


def get_sweep():
    return "configs/tiny_task.py:reversal", sweep("objective", ["mdm", "arm"])
