"""LLaDA 8B (paper Table 5, the released checkpoint's layout): 32 layers, d 4096, 32 heads (MHA), FFN 12288,
vocab 126464: 8,015,581,184 parameters, trained with the paper's recipe (config.paper_recipe)."""
from llada_jax.config import default_config, paper_recipe


def get_config():
    c = paper_recipe(default_config())
    c.name = "llada_8b"
    m = c.model
    m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = 4096, 32, 32, 32, 12288
    return c
