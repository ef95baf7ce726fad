"""Left-to-right decoding with the KV cache (sampling.generate_ar, objective=arm) against one full causal pass per
token (what the decoder did before), same model, same tokens, alternating in one run.

    python benchmarks/ar_decoding.py                        # the 30m size (configs/small.py), 256 tokens
    python benchmarks/ar_decoding.py --size=1b --gen_length=64 --batch=1

Prints per setting the tokens/s of each and last `ar_decoding: cached_over_full=R` (R > 1: the cache is faster).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import config as config_lib, model as model_lib, sampling


def full_passes(model, params, prompt, gen_length):
    """The baseline: greedy decoding with one full causal pass over the whole sequence per token."""
    b, p_len = prompt.shape
    x = jnp.concatenate([prompt, jnp.zeros((b, gen_length), prompt.dtype)], 1)

    def body(i, x):
        logits = jax.lax.dynamic_index_in_dim(model.apply(params, x, causal=True), p_len + i - 1, 1, False)
        return jax.lax.dynamic_update_index_in_dim(x, jnp.argmax(logits, -1).astype(x.dtype), p_len + i, 1)

    return jax.lax.fori_loop(0, gen_length, body, x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="30m", choices=sorted(config_lib.MODEL_SIZES))
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--prompt_length", type=int, default=64)
    p.add_argument("--gen_length", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = config_lib.set_model_size(config_lib.default_config(), args.size, args.vocab_size)
    model = model_lib.Model(cfg.model)
    params = model.init(jax.random.key(0))
    prompt = jnp.asarray(np.random.default_rng(0).integers(6, args.vocab_size, (args.batch, args.prompt_length)),
                         jnp.int32)
    sargs = sampling.SamplingArgs(gen_length=args.gen_length)
    ids = sampling.TokenIds.from_config(cfg)
    cached = lambda: sampling.generate_ar(model, params, prompt, None, jax.random.key(0), sargs, ids)["tokens"]
    full_jit = jax.jit(full_passes, static_argnames=("model", "gen_length"))
    full = lambda: full_jit(model, params, prompt, args.gen_length)
    a, b = np.asarray(cached()), np.asarray(full())  # compile both; the same greedy tokens
    same = float(np.mean(a[:, args.prompt_length:] == b[:, args.prompt_length:]))
    times = {"cached": [], "full": []}
    for _ in range(args.repeats):
        for name, fn in (("cached", cached), ("full", full)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.gen_length
    rate = {k: tokens / min(v) for k, v in times.items()}
    print(f"{args.size}, batch {args.batch}, prompt {args.prompt_length}, {args.gen_length} tokens each: cached "
          f"{rate['cached']:.1f} tok/s ({min(times['cached']):.2f} s), one full pass per token {rate['full']:.1f} "
          f"tok/s ({min(times['full']):.2f} s); same greedy tokens: {same:.1%}")
    print(f"ar_decoding: cached_over_full={rate['cached'] / rate['full']:.2f}")


if __name__ == "__main__":
    main()
