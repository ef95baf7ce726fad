"""Pre-training on a token store made by `llada data prepare` (a ~30M-parameter model, 1024-token windows).

    llada train --config=configs/pretrain_store.py --config.data.path=/data/prepared
    llada train --config=configs/pretrain_store.py:/data/prepared     # also takes the tokenizer's ids and size

A tokenizer from `llada data tokenizer` reserves the default config's special ids, so only model.vocab_size must
cover its vocabulary (32000 here; the pipeline checks it, and the ids, against the store's metadata).
"""
import json
import os

from llada_jax.config import default_config


def get_config(prepared=None):
    c = default_config()
    c.name = "pretrain_store"
    c.data.source = "store"
    m = c.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = 32000, 512, 8, 8, 4, 1408
    c.train.seq_len = 1024
    c.train.global_batch = 32
    c.train.steps = 10000
    c.optim.peak_lr, c.optim.final_lr, c.optim.warmup_steps = 1e-3, 1e-4, 500
    c.checkpoint.every_steps = 1000
    if prepared:
        c.data.path = prepared
        with open(os.path.join(prepared, "metadata.json")) as f:
            tok = json.load(f)["tokenizer"]
        for role, i in tok["special_ids"].items():
            if i >= 0:
                c.tokens[role] = i
        m.vocab_size = tok["vocab_size"]
    return c
