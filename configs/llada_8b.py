"""LLaDA 8B (paper Table 5, the released checkpoint's layout): 32 layers, d 4096, 32 heads (MHA), FFN 12288,
vocab 126464: 8,015,581,184 parameters, trained with the paper's recipe (config.paper_recipe)."""
from llada_jax.config import default_config, paper_recipe, set_model_size


def get_config():
    c = set_model_size(paper_recipe(default_config()), "8b")
    c.name = "llada_8b"
    return c
