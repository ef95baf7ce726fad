"""Pre-training on a token store made by `llada data prepare` (a ~30M-parameter model, 1024-token windows).

    llada train --config=configs/pretrain_store.py --config.data.path=/data/prepared
    llada train --config=configs/pretrain_store.py:/data/prepared     # also takes the tokenizer's ids and size

A tokenizer from `llada data tokenizer` reserves the default config's special ids, so only model.vocab_size must
cover its vocabulary (32000 here; the pipeline checks it, and the ids, against the store's metadata).
"""
import json
import os

from llada_jax.config import ConfigError, default_config, set_model_size


def get_config(prepared=None):
    c = set_model_size(default_config(), "30m", vocab_size=32000)
    c.name = "pretrain_store"
    c.data.source = "store"
    c.train.seq_len = 1024
    c.train.global_batch = 32
    c.train.steps = 10000
    c.optim.peak_lr, c.optim.final_lr, c.optim.warmup_steps = 1e-3, 1e-4, 500
    c.checkpoint.every_steps = 1000
    if prepared:
        c.data.path = prepared
        if not os.path.exists(os.path.join(prepared, "metadata.json")):
            raise ConfigError(f"{prepared} is not a prepared token store (no metadata.json); make it with `llada "
                              f"data prepare --out=DIR` or `llada data corpus --out=CORPUS` (then CORPUS/prepared/"
                              f"train).")
        with open(os.path.join(prepared, "metadata.json")) as f:
            tok = json.load(f)["tokenizer"]
        for role, i in tok["special_ids"].items():
            if i >= 0:
                c.tokens[role] = i
        c.model.vocab_size = tok["vocab_size"]
    return c
