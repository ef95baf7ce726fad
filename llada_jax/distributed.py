"""Multi-host start-up: `jax.distributed.initialize()` when the environment says this is one of several processes."""
import os

import jax

# Variables set by the launchers (launch/), SLURM, or Cloud TPU pods that mean "more than one process".
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def is_multihost_env():
    if os.environ.get("JAX_NUM_PROCESSES", "1") not in ("", "1"):
        return True
    if os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def maybe_initialize():
    """Initializes jax.distributed once when launched as several processes; a no-op on one host.

    Explicit settings (launch/local_multiprocess.py, GPU clusters without SLURM) come from JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID; SLURM and TPU pods are detected by JAX itself."""
    if not is_multihost_env() or jax.distributed.is_initialized():
        return
    if "cpu" in os.environ.get("JAX_PLATFORMS", ""):  # CPU processes talk through gloo (tests, local launcher)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                                   int(os.environ["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
