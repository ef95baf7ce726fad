"""Model FLOPs per training step and peak dense bf16 FLOP/s per device, for honest model FLOPs utilisation (MFU)."""
import functools
import time

import jax
import jax.numpy as jnp

from llada_jax import model as model_lib, objectives, optim

# Dense bf16 peak per chip (TPU) or per GPU, in FLOP/s, from the vendors' data sheets.
PEAK_FLOPS = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
    "h800": 989e12,
}


def flops_per_step(cfg):
    """Model FLOPs of one training step of `cfg`: model.flops_per_token (the causal count for the ARM objective, the
    [x_t ; x_0] pair for block diffusion) times the tokens of a step."""
    obj = objectives.get(cfg)
    return model_lib.flops_per_token(cfg.model, cfg.train.seq_len, obj.causal, obj.pair,
                                     model_lib.lora_of(cfg)) * optim.tokens_per_step(cfg)


@functools.lru_cache(maxsize=None)
def measured_cpu_peak(n=1024, dtype="float32"):
    """FLOP/s of one large matmul on this host's CPU devices (best of several runs), measured once per process."""
    device = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def device_peak_flops(device=None):
    """Peak FLOP/s of one device: the table for TPUs and GPUs, a measured matmul on the CPU (None if unknown).

    Simulated CPU devices (`--xla_force_host_platform_device_count`) share one host: their peak is the host's."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return measured_cpu_peak() / max(1, len(jax.devices("cpu")))
    kind = device.device_kind.lower()
    for name, peak in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return peak
    return None
