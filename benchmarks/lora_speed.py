"""LoRA against full fine-tuning at SmolLM2-135M's size: train-step throughput of the same block-diffusion step
(token shift, block 32, the [x_t ; x_0] pair) with every weight trained and with train.lora_rank adapters only,
alternating in one process. Random weights and tokens: the time of a step does not depend on their values.

    python benchmarks/lora_speed.py [--rank=16] [--batch=4] [--seq_len=256] [--rounds=3]

Prints `lora_speed: full=X tok/s lora=Y tok/s ratio=Y/X`.
"""
import argparse
import time

import jax
import numpy as np

from llada_jax import config as config_lib, train


def smollm2_config(args, rank):
    c = config_lib.default_config()
    m = c.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = 49152, 576, 30, 9, 3, 1536
    m.tie_embeddings, m.shift_logits, m.scan_layers, m.max_seq_len = True, True, True, 2048
    c.objective, c.diffusion.block_size = "block", 32
    c.train.global_batch, c.train.seq_len, c.train.lora_rank = args.batch, args.seq_len, rank
    c.data.random_length_prob = 0.0
    return c


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="timed steps of each, alternating")
    args = p.parse_args()
    tokens = np.random.default_rng(0).integers(0, 49152, (args.batch, args.seq_len)).astype(np.int32)
    runs = {}
    for name, rank in (("full", 0), ("lora", args.rank)):
        setup = train.Setup(smollm2_config(args, rank), jax.devices()[:1])
        state = setup.init_state()
        batch = setup.put_batch({"tokens": tokens})
        state, _ = jax.block_until_ready(setup.step(state, batch, 0))  # compiles
        runs[name] = [setup, state, batch, []]
    for i in range(args.rounds):
        for name, run in runs.items():
            setup, state, batch, times = run
            t0 = time.perf_counter()
            run[1], _ = jax.block_until_ready(setup.step(state, batch, i + 1))
            times.append(time.perf_counter() - t0)
            print(f"round {i + 1} {name}: {times[-1]:.1f} s", flush=True)
    rate = {name: args.batch * args.seq_len / float(np.median(run[3])) for name, run in runs.items()}
    print(f"lora_speed: full={rate['full']:.1f} tok/s lora={rate['lora']:.1f} tok/s "
          f"ratio={rate['lora'] / rate['full']:.2f} (rank {args.rank}, {args.batch} x {args.seq_len}, median of "
          f"{args.rounds})")


if __name__ == "__main__":
    main()
