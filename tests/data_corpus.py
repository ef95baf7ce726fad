"""Small corpora and a tiny sentencepiece tokenizer written by the data tests (shared by tests/test_data_*.py)."""
import gzip
import json
import os

import numpy as np

WORDS = ("the quick brown fox jumps over a lazy dog while masked diffusion models denoise every token of "
         "language in parallel and large data helps").split()


def sentence(rng, lo=3, hi=12):
    return " ".join(rng.choice(WORDS, rng.integers(lo, hi + 1)))


def write_corpus(root, seed=0, n_text=60, n_jsonl=40):
    """Writes a.txt (paragraph documents), b.jsonl.gz and c.txt.gz; returns {path: [document texts]}."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    docs = {}
    paras = ["\n".join(sentence(rng) for _ in range(rng.integers(1, 4))) for _ in range(n_text)]
    p = os.path.join(root, "a.txt")
    with open(p, "w") as f:
        f.write("\n\n\n".join(paras[: n_text // 2]) + "\n\n" + "\n\n".join(paras[n_text // 2:]) + "\n")
    docs[p] = paras
    texts = [sentence(rng, 8, 30) for _ in range(n_jsonl)]
    p = os.path.join(root, "b.jsonl.gz")
    with gzip.open(p, "wt") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    docs[p] = texts
    p = os.path.join(root, "c.txt.gz")
    with gzip.open(p, "wt") as f:
        f.write("Ünïcode ok: é 中文 😀\nsecond line\n\nlast one")
    docs[p] = ["Ünïcode ok: é 中文 😀\nsecond line", "last one"]
    return docs


def train_tokenizer(root, vocab_size=400):
    from llada_jax.data import tokenizer
    docs = write_corpus(os.path.join(root, "corpus"))
    tok = tokenizer.train(list(docs), os.path.join(root, "tok", "m"), vocab_size, log=lambda *_: None)
    return tok, docs
