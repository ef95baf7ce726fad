"""Reinforcement learning on two-digit addition (docs/rl.md): the model of `configs/tiny_task.py` (train it first),
fine-tuned on its own samples of training prompts with exact match as the reward, held-out pairs for evaluation.
`configs/rl_addition.py:vrpo` picks VRPO instead of diffu-GRPO; `:ALGORITHM,TASK` another task of tiny_task.py
(`:grpo,countdown`: Countdown, success when the expression uses the numbers once each and hits the target).

    llada train --config=configs/tiny_task.py --workdir=runs/add
    llada rl --config=configs/rl_addition.py --workdir=runs/add_grpo --config.checkpoint.init_from=runs/add
    llada eval --workdir=runs/add_grpo --perplexity=0
"""
from llada_jax import config as config_lib


def get_config(arg="grpo"):
    algorithm, _, task = arg.partition(",")
    c = config_lib.load_config(f"configs/tiny_task.py{':' + task if task else ''}")
    c.name = f"rl_{task or 'addition'}_{algorithm}"
    r = c.rl
    r.algorithm = algorithm
    r.prompts_per_step, r.group_size = 16, 8
    c.train.steps, c.train.log_every = 200, 10  # RL steps: 200 x 128 completions
    c.checkpoint.every_steps, c.checkpoint.keep = 25, 10
    o = c.optim
    o.schedule, o.warmup_steps, o.weight_decay = "constant", 0, 0.0
    if algorithm == "grpo":  # BENCHMARKS.md, "Reinforcement learning": with d1's beta 0.04 the k3 KL grows without
        r.beta, o.peak_lr = 0.0, 3e-4  # bound on this small model and gains less; lr 1e-3 collapses
    else:
        o.peak_lr = 5e-5
    return c
