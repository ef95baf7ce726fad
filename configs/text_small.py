"""Real text: a small model on a corpus made by `llada data corpus --vocab_size=N` (e.g. the Python standard library).

    llada data corpus --name=python_stdlib --out=data/stdlib --vocab_size=8192
    llada train --config=configs/text_small.py:data/stdlib                  # the masked-diffusion model
    llada train --config=configs/text_small.py:data/stdlib,arm              # the autoregressive baseline
    llada train --config=configs/text_small.py:data/stdlib,mdm,m            # size s (default), m or l

ARG = CORPUS[,OBJECTIVE[,SIZE]]: trains on CORPUS/prepared/train, scores `llada eval` perplexities on
CORPUS/prepared/validation (eval.heldout; the test split is for the final figures), and decodes with
CORPUS/tokenizer.model, whose ids and size it takes. Sizes (with an 8192-piece vocabulary, embeddings included):
s = 4 layers of 256 (7.6M parameters), m = 6 of 384 (17.5M), l = 8 of 512 (31.5M); 256-token sequences.
"""
from llada_jax.config import ConfigError, load_config

SIZES = {  # d_model, n_layers, n_heads, n_kv_heads, ffn_dim
    "s": (256, 4, 4, 4, 704),
    "m": (384, 6, 6, 6, 1024),
    "l": (512, 8, 8, 8, 1408),
}


def get_config(arg="data/stdlib"):
    corpus, objective, size = (arg.split(",") + ["", ""])[:3]
    objective, size = objective or "mdm", size or "s"
    if size not in SIZES:
        raise ConfigError(f"size {size!r} in configs/text_small.py:{arg}; expected one of {', '.join(SIZES)} "
                          f"(ARG = CORPUS[,OBJECTIVE[,SIZE]]).")
    c = load_config(f"configs/pretrain_store.py:{corpus}/prepared/train")
    c.name = f"text_small_{objective}_{size}"
    c.objective = objective
    m = c.model
    m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = SIZES[size]
    c.data.tokenizer = f"{corpus}/tokenizer.model"
    c.eval.heldout = f"{corpus}/prepared/validation"
    c.eval.tasks = ""
    c.train.seq_len, c.train.global_batch = 256, 16
    c.train.steps, c.train.log_every = 2000, 50
    c.optim.peak_lr, c.optim.final_lr, c.optim.warmup_steps = 2e-3, 2e-4, 100
    c.checkpoint.every_steps = 500
    c.sampling.gen_length, c.sampling.block_length, c.sampling.steps = 64, 64, 64
    return c
