"""The tiny model on a built-in task (llada_jax/data/tasks.py) with short answers, scored by exact match (`llada eval`,
sweeps). `configs/tiny_task.py:TASK[,FORMAT]` picks the task and the data format:

- default `arithmetic_small,sft`: two-digit addition in the SFT format (one "a+b=" prompt and its answer per row,
  EOS-padded; the prompt is never masked), evaluated on operand pairs never seen in training. Sampling runs at the
  length the model trains on: train.seq_len minus the longest prompt, one token per step (BENCHMARKS.md, "Training
  works end to end", has the held-out exact match by steps and seeds).
- `countdown,sft` (sft by default): three numbers and a target, "3,7,5:22=", answered by an expression that uses
  each number once (any right expression scores: `llada eval` reports the success rate), rows of 20 tokens.
- `reversal` (packed by default): the facts task as pre-training documents joined by EOS, so the diffusion model
  sees both sides of every fact masked (the reversal experiment needs that).

    llada train --config=configs/tiny_task.py --workdir=runs/add
    llada train --config=configs/tiny_task.py:reversal --workdir=runs/facts
"""
from llada_jax.config import default_config

DEFAULT_FORMAT = {"arithmetic_small": "sft", "arithmetic": "sft", "reversal": "packed", "countdown": "sft"}
LONGEST_PROMPT = {"arithmetic_small": len("99+99="), "arithmetic": len("999+999="), "reversal": len("abc<"),
                  "countdown": len("9,9,9:99=")}
SEQ_LEN = {"countdown": 20}  # SFT rows: the longest prompt and answer ("(9+9)*9") plus EOS; others 16


def get_config(arg="arithmetic_small"):
    task, _, fmt = arg.partition(",")
    c = default_config()
    c.name = f"tiny_{task}"
    c.data.synthetic_task = task
    c.data.synthetic_format = fmt or DEFAULT_FORMAT.get(task, "packed")
    c.eval.tasks = task
    c.eval.n_examples = 200
    c.eval.batch = 50
    gen_length = 8  # answers are at most 3 characters plus EOS (packed: no answer region; this leaves a margin)
    if c.data.synthetic_format == "sft":  # short rows, many of them; random lengths would cut answers
        c.train.seq_len, c.train.global_batch, c.train.steps = SEQ_LEN.get(task, 16), 64, 5000
        c.train.log_every, c.checkpoint.every_steps = 200, 800
        c.data.random_length_prob = 0.0
        gen_length = c.train.seq_len - LONGEST_PROMPT.get(task, 0)  # the answer region of the longest prompt
    s = c.sampling  # pure diffusion, one token per step
    s.gen_length, s.block_length, s.steps = gen_length, gen_length, gen_length
    return c
