"""The `llada train` step against the same model and recipe in PyTorch, on this machine's CPU, in one process.

    python benchmarks/vs_torch.py [--configs=issue,small] [--steps=3] [--repeats=3] [--config.a.b=value ...]

JAX: the step exactly as `train.Setup` builds it (the code path of `llada train`: loss, AdamW, clipping, NaN guard).
PyTorch: our PyTorch LLaDA module (`llada_jax.convert.torch_model`, the released layout) with the same initial
weights, the GUIDELINES pre-training loss restated in PyTorch (masked positions only, / p, / (B * L)) and
`torch.optim.AdamW` + `clip_grad_norm_` with the same hyper-parameters; each step one forward, backward and
optimizer step. Both float32, both on every core (torch.set_num_threads = the CPU count XLA uses). Repeats
alternate between the two sides; compilation and warm-up steps are excluded; each side's figure is its best repeat.

Configs: `issue` (d_model 512, 8 layers, 8 heads, 8 KV heads, FFN 1408, vocab 32000, batch 8 x 512) and `small`
(configs/small.py), or any configs/NAME.py. Prints one row per config and, last, `ratio jax/torch: X.XXx`, the
smallest ratio measured.
"""
import argparse
import os
import sys
import time

import jax
import numpy as np
import torch
import torch.nn.functional as F

from llada_jax import cli, config as config_lib, mfu, optim, train
from llada_jax.convert import hf, torch_model
from llada_jax.data import synthetic

# The dimensions of the issue that reported the gap (and a new user's first comparison).
ISSUE = [("model.vocab_size", "32000"), ("model.n_kv_heads", "8"), ("train.seq_len", "512"),
         ("train.global_batch", "8")]


def build(name, overrides):
    if name == "issue":
        return config_lib.build_config("configs/small.py", ISSUE + list(overrides))
    return config_lib.build_config(f"configs/{name}.py", overrides)


def torch_params(cfg, params):
    """Our params -> the PyTorch module's state dict (the conversion table of `llada convert to-hf`)."""
    flat = {"wte": params["wte"], "ln_f": params["ln_f"], "lm_head": params["lm_head"],
            **{"blocks." + k: v for k, v in params["blocks"].items()}}
    state = {}
    for leaf, tensors in hf.tensor_table(cfg.model).items():
        x = np.asarray(flat[leaf])
        for t in tensors:
            hf_x = np.array(t.to_hf(x if t.layer is None else x[t.layer]))  # a writable copy for torch
            state[t.name.removeprefix("model.")] = torch.from_numpy(hf_x)
    return state


class TorchRecipe:
    """One PyTorch pre-training step of the official recipe (GUIDELINES.md), same hyper-parameters as `cfg`."""

    def __init__(self, cfg, params):
        self.cfg = cfg
        self.model = torch_model.LLaDA(hf.hf_config(cfg, "float32"))
        self.model.load_state_dict(torch_params(cfg, params), strict=True)
        o = cfg.optim
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            is_norm = name.endswith("norm.weight") or "ln_f" in name
            is_embedding = "wte" in name or name == "transformer.ff_out.weight"
            skip = (is_norm and not o.decay_norms) or (is_embedding and not o.decay_embeddings)
            (no_decay if skip else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=o.peak_lr, betas=(o.b1, o.b2), eps=o.adam_eps)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def step(self, input_ids):
        cfg, eps = self.cfg, self.cfg.diffusion.eps
        b, l = input_ids.shape
        if torch.rand(1, generator=self.gen) < cfg.data.random_length_prob:  # the 1% random length
            input_ids = input_ids[:, :int(torch.randint(1, l + 1, (1,), generator=self.gen))]
            b, l = input_ids.shape
        t = torch.rand(b, generator=self.gen)
        p_mask = ((1 - eps) * t + eps)[:, None].repeat(1, l)
        masked = torch.rand((b, l), generator=self.gen) < p_mask
        noisy = torch.where(masked, cfg.tokens.mask_id, input_ids)
        logits = self.model(noisy)
        token_loss = F.cross_entropy(logits[masked], input_ids[masked], reduction="none") / p_mask[masked]
        loss = token_loss.sum() / (b * l)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss)


def timed(fn, steps):
    t0 = time.perf_counter()
    for i in range(steps):
        fn(i)
    return time.perf_counter() - t0


def compare(cfg, steps, repeats, log=print):
    """Best-of-`repeats` seconds per step of each side, alternating JAX and PyTorch."""
    setup = train.Setup(cfg)
    state = setup.init_state()
    corpus = synthetic.SyntheticCorpus(cfg.train.seq_len, cfg.seed)
    host = [corpus.batch(i, cfg.train.global_batch) for i in range(2)]
    batches = [setup.put_batch(b) for b in host]
    recipe = TorchRecipe(cfg, jax.device_get(state["params"]))
    torch_batches = [torch.from_numpy(b["tokens"].astype(np.int64)) for b in host]

    def jax_steps(i):
        nonlocal state
        state, metrics = setup.step_fn(state, batches[i % 2])
        jax.block_until_ready(metrics)

    def torch_steps(i):
        recipe.step(torch_batches[i % 2])

    jax_steps(0)  # compile
    torch_steps(0)  # warm-up
    best_jax = best_torch = float("inf")
    for r in range(repeats):
        best_jax = min(best_jax, timed(jax_steps, steps) / steps)
        best_torch = min(best_torch, timed(torch_steps, steps) / steps)
        log(f"  repeat {r + 1}/{repeats}: jax {best_jax:.3f} s/step, torch {best_torch:.3f} s/step", file=sys.stderr)
    return best_jax, best_torch


def main(argv=None):
    overrides, rest = cli.split_config_args(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="issue,small")
    p.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(rest)
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    peak = mfu.measured_cpu_peak()
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, {threads} threads, "
          f"measured float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'config':<8} {'batch x len':>11} {'jax tok/s':>10} {'torch tok/s':>12} {'jax GFLOP/s':>12} "
          f"{'of peak':>8} {'torch GFLOP/s':>14} {'of peak':>8} {'jax/torch':>10}")
    ratios = []
    for name in args.configs.split(","):
        cfg = build(name, overrides)
        tokens, flops = optim.tokens_per_step(cfg), mfu.flops_per_step(cfg)
        s_jax, s_torch = compare(cfg, args.steps, args.repeats)
        ratios.append(s_torch / s_jax)
        print(f"{name:<8} {cfg.train.global_batch:>4} x {cfg.train.seq_len:<4} {tokens / s_jax:>10,.0f} "
              f"{tokens / s_torch:>12,.0f} {flops / s_jax / 1e9:>12.1f} {flops / s_jax / peak:>8.1%} "
              f"{flops / s_torch / 1e9:>14.1f} {flops / s_torch / peak:>8.1%} {s_torch / s_jax:>9.2f}x", flush=True)
    print(f"ratio jax/torch: {min(ratios):.2f}x")


if __name__ == "__main__":
    main()
