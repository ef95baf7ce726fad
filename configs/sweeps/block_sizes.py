"""Block diffusion's block size (4, and 16: the whole sequence of the task's rows, one block) against LLaDA and the
autoregressive baseline, at equal training FLOPs, on the addition task (configs/tiny_task.py).

Every point gets the FLOPs of LLaDA's (objective=mdm) 2400 steps (a few CPU minutes a point) by
model.flops_per_token: block diffusion runs the model on [x_t ; x_0] (twice the tokens), so it trains for about
half the steps; the ARM's causal attention is half as costly, so it trains a little longer. Evaluated on exact
match (a block model decodes whole blocks: sampling.gen_length is at least the block size).

    llada sweep --sweep=configs/sweeps/block_sizes.py --workdir=runs/block_sizes
    python benchmarks/block_diffusion.py      # this sweep, perplexities, adaptation from the arm run, decoding
"""
from llada_jax import config as config_lib, model as model_lib

BASE = "configs/tiny_task.py"
REFERENCE_STEPS = 2400  # the budget: LLaDA (mdm) on the tiny task trained for this many steps


def flops_per_step(objective):
    c = config_lib.load_config(BASE)
    tokens = c.train.global_batch * c.train.seq_len
    return model_lib.flops_per_token(c.model, c.train.seq_len, objective == "arm", objective == "block") * tokens


def get_sweep():
    budget = REFERENCE_STEPS * flops_per_step("mdm")
    seq_len = config_lib.load_config(BASE).train.seq_len
    points = [{"objective": "mdm"}, {"objective": "arm"}]
    points += [{"objective": "block", "diffusion.block_size": b, "sampling.gen_length": max(8, b),
                "sampling.steps": max(8, b)} for b in (4, seq_len)]
    return BASE, [{**p, "train.steps": round(budget / flops_per_step(p["objective"]))} for p in points]
