"""Masked diffusion vs the autoregressive baseline at three tiny model sizes, at equal training FLOPs.

Every point gets the FLOPs of the tiny pre-training MDM's 600 steps (mfu.flops_per_step: 6 N + head + attention
per token, with half the attention for the causal ARM), so smaller models and the ARM train for proportionally
more steps (at d_model 128 the ARM gets ~4% more steps than the MDM). Evaluated on arithmetic exact match.

    llada sweep --sweep=configs/sweeps/mdm_vs_arm.py --workdir=runs/mdm_vs_arm
"""
from llada_jax import config as config_lib, mfu
from llada_jax.sweep import product, sweep

BASE = "configs/tiny_pretrain.py"
SIZES = [(64, 192), (128, 384), (192, 576)]  # (d_model, ffn_dim); 4 layers, 4 heads, 2 KV heads
REFERENCE_STEPS = 600  # the budget: configs/tiny_pretrain.py's MDM (d_model 128) trained for this many steps


def flops_per_step(objective, d_model, ffn_dim):
    c = config_lib.load_config(BASE)
    c.objective, c.model.d_model, c.model.ffn_dim = objective, d_model, ffn_dim
    return mfu.flops_per_step(c)


def get_sweep():
    budget = REFERENCE_STEPS * flops_per_step("mdm", 128, 384)
    points = []
    for p in product([sweep("objective", ["mdm", "arm"]), sweep("model.d_model", [d for d, _ in SIZES])]):
        ffn = dict(SIZES)[p["model.d_model"]]
        steps = round(budget / flops_per_step(p["objective"], p["model.d_model"], ffn))
        points.append({**p, "model.ffn_dim": ffn, "train.steps": steps})
    return BASE, points
