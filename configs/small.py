"""A ~30M-parameter model for benchmarks (bf16 compute on accelerators, float32 on the CPU)."""
from llada_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "small"
    m = c.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = 64, 512, 8, 8, 4, 1408
    c.train.seq_len = 256
    c.train.global_batch = 16
    c.train.steps = 1000
    c.optim.peak_lr = 1e-3
    c.optim.final_lr = 1e-4
    return c
