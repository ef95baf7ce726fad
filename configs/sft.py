"""Supervised fine-tuning on chat JSONL (paper section 2.4): the prompt is never masked, no random lengths.

    llada train --config=configs/sft.py --config.data.path=chat.jsonl --config.data.tokenizer=tok.model

Recipe (docs/objectives.md#training-recipes): LR 0 -> 2.5e-5 in 50 steps, constant, linear to 2.5e-6 over the last 10%,
weight decay 0.1; the paper's global batch is 256 and 3 epochs. Initialise from a pre-trained model (checkpoint
restore) for real fine-tuning; the model sizes here match configs/pretrain_store.py.
"""
from llada_jax.config import default_config, set_model_size


def get_config():
    c = set_model_size(default_config(), "30m", vocab_size=32000)
    c.name = "sft"
    c.data.source = "sft"
    c.data.random_length_prob = 0.0  # SFT pads answers with EOS instead
    c.data.sft_overlong = "drop"
    c.train.seq_len = 1024
    c.train.global_batch = 256
    c.train.steps = 3000
    o = c.optim
    o.peak_lr, o.warmup_steps, o.weight_decay = 2.5e-5, 50, 0.1
    o.schedule, o.decay_fraction, o.final_lr = "wsd", 0.1, 2.5e-6
    return c
