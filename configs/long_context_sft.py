"""LLaDA 8B supervised fine-tuning at 32k tokens with context parallelism, for a v5p-256 pod slice (128 chips):
the sequence is split over 8 chips (mesh.context) and the weights over the other 16 (fsdp, with context).

    launch/tpu_pod.sh --config=configs/long_context_sft.py --workdir=gs://BUCKET/runs/sft32k \\
        --config.data.path=gs://BUCKET/chat.jsonl --config.data.tokenizer=gs://BUCKET/llada-8b-tokenizer \\
        --config.checkpoint.init_from=gs://BUCKET/runs/llada-8b

Compiled ahead of time for v5p-256 (BENCHMARKS.md, "Context parallelism"): 16.05 GiB per chip of 95 GiB with 64
sequences of 32768 tokens per step (2.1M tokens), remat full. The SFT recipe of configs/sft.py (the prompt never
masked, LR 2.5e-5 with warm-up and a final linear decay); positions beyond the released model's 4096 are new to it,
so expect a few hundred steps of adaptation before the loss settles (RoPE is used as is, no scaling).
"""
from llada_jax.config import default_config, paper_recipe, set_model_size


def get_config():
    c = set_model_size(paper_recipe(default_config()), "8b")
    c.name = "long_context_sft"
    c.model.max_seq_len = c.train.seq_len = 32768
    c.mesh.context, c.mesh.fsdp = 8, -1
    c.data.source = "sft"
    c.data.random_length_prob = 0.0  # SFT pads answers with EOS instead
    c.data.sft_overlong = "drop"
    c.train.global_batch, c.train.steps, c.train.log_every = 64, 2000, 10
    o = c.optim
    o.peak_lr, o.warmup_steps, o.weight_decay = 2.5e-5, 50, 0.1
    o.schedule, o.decay_fraction, o.final_lr = "wsd", 0.1, 2.5e-6
    o.drop_tokens = o.decay_tokens = o.total_tokens = -1.0  # not the pre-training milestones: over train.steps
    c.checkpoint.every_steps = 100
    return c
