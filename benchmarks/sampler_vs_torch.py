"""`sampling.generate` against the reverse process restated in PyTorch (docs/sampling.md), same weights.

    python benchmarks/sampler_vs_torch.py [--configs=small,tiny] [--gen_length=128] [--prompt_length=32]
                                          [--batch=1] [--repeats=3] [--config.a.b=value ...]

Both sides: one block of `gen_length`, one token per step (steps = gen_length), low-confidence remasking,
temperature 0, random weights of configs/NAME.py in float32. JAX: `sampling.generate` with the `llada_jax.model`
forward (the whole loop is one compiled program). PyTorch: the official generate() loop line by line (eager, one
forward of our PyTorch LLaDA module per step, float64 softmax, `torch.topk` per row) under `torch.no_grad()`.
Both on every core; repeats alternate between the sides; compilation and a warm-up run are excluded; each side's
figure is its best repeat. Prints one row per config (generated tokens/s of each side, whether the tokens are
identical, the ratio) and, last, `ratio jax/torch: X.XXx` (the smallest ratio measured).
"""
import argparse
import os
import sys
import time

import jax
import numpy as np
import torch
import torch.nn.functional as F
from vs_torch import torch_params

from llada_jax import cli, config as config_lib, model as model_lib, sampling
from llada_jax.convert import hf, torch_model


@torch.no_grad()
def torch_generate(model, prompt, gen_length, steps, mask_id):
    """The official generate() for one block, temperature 0, low confidence (docs/sampling.md#the-reverse-process)."""
    b, p = prompt.shape
    x = torch.full((b, p + gen_length), mask_id, dtype=torch.long)
    x[:, :p] = prompt
    masked = (x[:, p:] == mask_id).sum(1)
    base, rem = masked // steps, masked % steps
    for i in range(steps):
        mask_index = x == mask_id
        logits = model(x)
        x0 = logits.argmax(-1)
        probs = F.softmax(logits.to(torch.float64), dim=-1)
        x0_p = torch.gather(probs, -1, x0[..., None])[..., 0]
        x0 = torch.where(mask_index, x0, x)
        confidence = torch.where(mask_index, x0_p, -np.inf)
        for j in range(b):
            k = int(base[j] + (i < rem[j]))
            if k:
                idx = torch.topk(confidence[j], k=k).indices
                x[j, idx] = x0[j, idx]
    return x


def timed(fn, results):
    t0 = time.perf_counter()
    results.append(fn())
    return time.perf_counter() - t0


def compare(cfg, args):
    model = model_lib.Model(cfg.model)
    params = model.init(jax.random.key(cfg.seed))
    tmodel = torch_model.LLaDA(hf.hf_config(cfg, "float32")).eval()
    tmodel.load_state_dict(torch_params(cfg, jax.device_get(params)), strict=True)
    rng = np.random.default_rng(cfg.seed)
    specials = {cfg.tokens[k] for k in ("mask_id", "eos_id", "pad_id", "bos_id", "eot_id")}
    vocab = np.array([i for i in range(cfg.model.vocab_size) if i not in specials])
    prompt = rng.choice(vocab, (args.batch, args.prompt_length)).astype(np.int32)
    sargs = sampling.SamplingArgs(gen_length=args.gen_length, block_length=args.gen_length, steps=args.gen_length)
    ids = sampling.TokenIds.from_config(cfg)
    key = jax.random.key(0)

    def run_jax():
        out = sampling.generate(model, params, prompt, None, key, sargs, ids)
        return np.asarray(jax.device_get(out["tokens"]))

    def run_torch():
        return torch_generate(tmodel, torch.from_numpy(prompt.astype(np.int64)), args.gen_length,
                              args.gen_length, cfg.tokens.mask_id).numpy()

    jax_out, torch_out = [run_jax()], [run_torch()]  # compilation / warm-up
    s_jax = s_torch = float("inf")
    for r in range(args.repeats):
        s_jax = min(s_jax, timed(run_jax, jax_out))
        s_torch = min(s_torch, timed(run_torch, torch_out))
        print(f"  repeat {r + 1}/{args.repeats}: jax {s_jax:.3f} s, torch {s_torch:.3f} s", file=sys.stderr)
    same = all(np.array_equal(a, torch_out[0]) for a in jax_out + torch_out)
    agree = float(np.mean(jax_out[0][:, args.prompt_length:] == torch_out[0][:, args.prompt_length:]))
    return s_jax, s_torch, same, agree


def main(argv=None):
    overrides, rest = cli.split_config_args(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="small,tiny")
    p.add_argument("--gen_length", type=int, default=128)
    p.add_argument("--prompt_length", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(rest)
    torch.set_num_threads(os.cpu_count())
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, {os.cpu_count()} threads; "
          f"batch {args.batch}, prompt {args.prompt_length}, gen length {args.gen_length} in one block, "
          f"{args.gen_length} steps, low confidence, T = 0")
    print(f"{'config':<8} {'params':>8} {'jax tok/s':>10} {'torch tok/s':>12} {'same tokens':>12} {'jax/torch':>10}")
    ratios = []
    for name in args.configs.split(","):
        cfg = config_lib.build_config(f"configs/{name}.py", overrides)
        cfg.model.dtype = cfg.model.param_dtype = "float32"
        s_jax, s_torch, same, agree = compare(cfg, args)
        tokens = args.batch * args.gen_length
        ratios.append(s_torch / s_jax)
        print(f"{name:<8} {model_lib.count_params(cfg.model) / 1e6:>7.1f}M {tokens / s_jax:>10,.1f} "
              f"{tokens / s_torch:>12,.1f} {'yes' if same else f'{agree:.1%}':>12} {s_torch / s_jax:>9.2f}x",
              flush=True)
    print(f"ratio jax/torch: {min(ratios):.2f}x")


if __name__ == "__main__":
    main()
