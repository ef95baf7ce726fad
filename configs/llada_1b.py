"""LLaDA 1B (paper Table 5): 22 layers, d 2048, 32 heads with 4 KV heads (GQA), FFN 5634, vocab 126464.

Training hyper-parameters of the paper (section 2.3, scaled by the caller's steps): AdamW wd 0.1, batch 1280 x 4096,
Warmup-Stable-Decay 0 -> 4e-4 over 2000 steps, 1e-4 after 1.2T tokens, linear to 1e-5 over the last 0.3T of 2.3T.
"""
from llada_jax.config import default_config, paper_recipe, set_model_size


def get_config():
    c = set_model_size(paper_recipe(default_config()), "1b")
    c.name = "llada_1b"
    return c
