"""The CPU default: a ~0.8M-parameter model on the built-in synthetic arithmetic corpus (a few minutes on 2 cores)."""
from llada_jax.config import default_config


def get_config():
    return default_config()
