"""The tiny model (~0.8M parameters) pre-trained on packed documents of the built-in synthetic arithmetic corpus
("317+45=362" joined by EOS, 64-token sequences, 1% of them a random length): llada_jax.config.default_config()
itself, the base every config starts from. A few minutes on 2 CPU cores; the pre-training objective end to end.

    llada train --config=configs/tiny_pretrain.py --workdir=runs/pretrain
"""
from llada_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "tiny_pretrain"
    return c
