"""A ~30M-parameter model for benchmarks (bf16 compute on accelerators, float32 on the CPU)."""
from llada_jax.config import default_config, set_model_size


def get_config():
    c = set_model_size(default_config(), "30m", vocab_size=64)
    c.name = "small"
    c.train.seq_len = 256
    c.train.global_batch = 16
    c.train.steps = 1000
    c.optim.peak_lr = 1e-3
    c.optim.final_lr = 1e-4
    return c
