"""Data-layer throughput: `prepare` MB/s of raw text, and tokens/s the pre-training pipeline delivers as
4096-token batches from a token store, against the target of 1M tokens/s per host process.

    python benchmarks/data_throughput.py [--mb=20] [--batch=8] [--steps=100] [--threads=4] [--workers=0]

Writes a synthetic corpus (random words, Zipf-distributed) to a temporary directory, trains a sentencepiece
tokenizer on its first few MB, prepares a store with all cores, then reads `--steps` batches from a fresh iterator
(global shuffle over the whole store: every window is a random read).
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from llada_jax.config import default_config
from llada_jax.data import pipeline, prepare, tokenizer

TARGET = 1e6  # tokens/s per host process


def write_corpus(root, mb, seed=0):
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocab = ["".join(rng.choice(letters, rng.integers(1, 9))) for _ in range(20000)]
    probs = 1.0 / np.arange(1, len(vocab) + 1)
    probs /= probs.sum()
    paths, written, k = [], 0, 0
    while written < mb * 1e6:
        path = os.path.join(root, f"part{k:03d}.txt")
        with open(path, "w") as f:
            for _ in range(2000):
                words = rng.choice(len(vocab), rng.integers(50, 400), p=probs)
                text = " ".join(vocab[w] for w in words) + ".\n\n"
                f.write(text)
                written += len(text)
        paths.append(path)
        k += 1
    return paths, written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=20, help="raw text to prepare")
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8, help="per-host batch (rows of seq_len tokens)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--document_mask", action="store_true")
    p.add_argument("--cache_mb", type=float, default=0, help="decoded-chunk cache; 0 = every window decompresses "
                   "its chunks, as in a store much larger than the cache")
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="llada_data_bench_")
    quiet = lambda *_: None
    try:
        paths, n_bytes = write_corpus(root, args.mb)
        tok = tokenizer.train(paths[:1], os.path.join(root, "tok"), 8000, log=quiet)
        t0 = time.perf_counter()
        meta = prepare.prepare(",".join(paths), os.path.join(root, "store"), tok, workers=os.cpu_count(),
                               val_fraction=0.0, log=quiet)
        t_prep = time.perf_counter() - t0
        n_tok = meta["train"]["tokens"]
        print(f"prepare: {n_bytes / 1e6:.1f} MB raw text -> {n_tok:,} tokens in {t_prep:.1f}s on {os.cpu_count()} "
              f"cores: {n_bytes / 1e6 / t_prep:.2f} MB/s ({n_tok / t_prep:,.0f} tokens/s)")

        cfg = default_config()
        tokenizer.apply_to_config(tok, cfg)
        cfg.data.source, cfg.data.path = "store", os.path.join(root, "store")
        cfg.data.document_mask = args.document_mask
        cfg.data.threads, cfg.data.workers = args.threads, args.workers
        cfg.train.seq_len, cfg.train.global_batch = args.seq_len, args.batch
        src = pipeline.make_pretrain_source(cfg, 0, 1)
        for s in src.read.stores:
            s.cache_bytes = int(args.cache_mb * 2 ** 20)
        next(src)  # start-up (threads / worker processes) is not counted
        t0 = time.perf_counter()
        for _ in range(args.steps):
            batch = next(src)
        dt = time.perf_counter() - t0
        src.close()
        tps = args.steps * args.batch * args.seq_len / dt
        print(f"pipeline: {args.steps} batches of {args.batch} x {args.seq_len} tokens (store of "
              f"{n_tok // args.seq_len:,} windows, cache {args.cache_mb:g} MB, threads={args.threads}, "
              f"workers={args.workers}"
              f"{', document_mask' if args.document_mask else ''}): {tps:,.0f} tokens/s = "
              f"{tps / TARGET:.2f} x the 1M tokens/s target")
        assert batch["tokens"].shape == (args.batch, args.seq_len)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
