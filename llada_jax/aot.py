"""Ahead-of-time compilation of the real train step for a TPU topology, on a machine without TPUs.

Uses libtpu's topology descriptions (`pip install libtpu`) and the same `train.Setup` as `llada train`, so what
compiles here is what a pod runs. Reports per-device memory, FLOPs per step and the collectives of the program.

Topology names: `v5e-256` / `v6e-64` count chips; `v4-128` / `v5p-128` count TensorCores (2 per chip), so v5p-128
is 64 chips. An explicit shape such as `v5e:4x4` or `v5p:4x4x4` is also accepted.
"""
import glob
import math
import os
import re
import time
from importlib import metadata

import jax
import jax.numpy as jnp

from llada_jax import mfu, train
from llada_jax.errors import LladaError

GIB = 1 << 30
# HBM per chip (one JAX device per chip on all four generations: v4/v5p megacore).
HBM_BYTES = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


class CompileError(LladaError):
    pass


class DoesNotFit(CompileError):
    """The TPU compiler ran out of HBM while compiling (it refuses to emit a program that cannot fit)."""


def _shape_2d(chips):
    a = 2 ** (int(math.log2(chips)) // 2)
    return f"{a}x{chips // a}"


def _shape_3d(chips):
    dims = [1, 1, 1]
    i = 0
    while math.prod(dims) < chips:
        dims[i % 3] *= 2
        i += 1
    dims = sorted(dims)
    return "x".join(map(str, dims))


def parse_topology(name):
    """'v5p-128' -> ('v5p', 'v5p:4x4x4', 64 chips); 'v5e:4x4' -> ('v5e', 'v5e:4x4', 16)."""
    m = re.fullmatch(r"(v4|v5e|v5p|v6e)[-:](.+)", name.strip().lower())
    if not m:
        raise CompileError(f"unknown topology {name!r}; expected e.g. v5e-256, v5p-128 (TensorCores), v6e-64, "
                           f"v4-32 or an explicit shape like v5e:4x4 / v5p:2x2x4.")
    gen, rest = m.groups()
    if "x" in rest:
        chips = math.prod(int(x) for x in rest.split("x"))
        return gen, f"{gen}:{rest}", chips
    count = int(rest)
    chips = count // CORES_PER_CHIP[gen]
    if chips < 1 or chips & (chips - 1):
        raise CompileError(f"{name}: {chips} chips; expected a power of two.")
    shape = _shape_3d(chips) if gen in ("v4", "v5p") else _shape_2d(chips)
    return gen, f"{gen}:{shape}", chips


def _quiet_libtpu():
    """Off a TPU VM, libtpu probes cloud metadata for its host and prints warnings: tell it what it would find; and
    let several processes load it (there is no TPU to share)."""
    if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
        for k, v in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_WORKER_ID", "0")):
            os.environ.setdefault(k, v)


def topology_devices(name):
    """(generation, libtpu topology name, chips, devices) of a topology name."""
    _quiet_libtpu()
    from jax.experimental import topologies  # after _quiet_libtpu: importing it loads libtpu, which reads the env
    gen, topo_name, chips = parse_topology(name)
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=topo_name)
    except Exception as e:  # libtpu missing or the name unknown to it
        raise CompileError(f"could not get the TPU topology {topo_name} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}). Install the libtpu that jax pins: "
                           f"`pip install 'jax[tpu]'`.") from None
    return gen, topo_name, chips, topo.devices


def count_collectives(hlo_text):
    # `%name = SHAPE op(` or `op-start(`; a tuple SHAPE may hold `/*index=5*/` comments (combined collectives)
    return {op: len(re.findall(rf"^\s*(?:ROOT )?\S+ = [^\n]*? {op}(?:-start)?\(", hlo_text, re.M))
            for op in COLLECTIVES}


def libtpu_mismatch():
    """None, or a sentence when the installed libtpu is not the one the installed jax pins (`jax[tpu]`): jaxlib
    then may not read the optimized HLO back (e.g. `RET_CHECK ... async-update instruction should have 1 operands
    but sees 3` with libtpu 0.0.51 under JAX 0.10.2), although libtpu itself compiles fine."""
    try:
        have = metadata.version("libtpu")
        pins = [r for r in metadata.requires("jax") or [] if r.startswith("libtpu") and 'extra == "tpu"' in r]
    except metadata.PackageNotFoundError:
        return None
    m = re.match(r"libtpu\s*==\s*([\w.]+?)(\.\*)?\s*;", pins[0]) if pins else None
    if m is None or have == m.group(1) or (m.group(2) and have.startswith(m.group(1) + ".")):
        return None
    return (f"libtpu {have} is installed but jax {metadata.version('jax')} pins libtpu=={m.group(1)}{m.group(2) or ''} "
            f"(`pip install \"jax[tpu]=={metadata.version('jax')}\"`)")


def _collectives(compiled):
    """Counts of each collective in the optimized program, or None when this jaxlib cannot read the HLO that libtpu
    produced (a libtpu/jaxlib version mismatch; the memory analysis does not need it)."""
    try:
        return count_collectives(compiled.as_text())
    except Exception:  # noqa: BLE001  (JaxRuntimeError: RET_CHECK parsing the HLO proto)
        return None


def compile_step(cfg, topology, log=print):
    """Compiles the train step of `cfg` for `topology`; returns a report dict (raises CompileError if it cannot
    compile). `fits` says whether the per-device total stays within the chip's HBM."""
    gen, topo_name, chips, devices = topology_devices(topology)
    t0 = time.perf_counter()
    setup = train.Setup(cfg, devices)  # a mesh of TPU devices: attention `auto` picks the real splash kernel
    b, l = cfg.train.global_batch, cfg.train.seq_len
    batch = {"tokens": jax.ShapeDtypeStruct((b, l), jnp.int32, sharding=setup.batch_sharding)}
    lowered = setup.step_fn.lower(setup.abstract_state(), batch)
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "HbmOom" not in text:
            raise
        detail = re.search(r"Ran out of memory.*?\.(?=\s|$)", text)  # a sentence, not "(57." of "(57.12G)"
        raise DoesNotFit(f"the step does not fit on {topo_name}: {detail.group(0) if detail else text[:300]} Use more "
                         f"devices, a smaller per-device batch (train.micro_batches) or model.remat=full.") from None
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes \
        + mem.generated_code_size_in_bytes
    hbm = HBM_BYTES[gen] * chips // len(devices)  # per device (libtpu describes v4 with one device per core)
    return {
        "topology": topo_name, "devices": len(devices), "device_kind": devices[0].device_kind,
        "mesh": dict(setup.mesh.shape), "global_batch": b, "seq_len": l, "micro_batches": cfg.train.micro_batches,
        "remat": cfg.model.remat, "per_device_batch": b / len(devices),
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
        "code_bytes": mem.generated_code_size_in_bytes, "total_bytes": total, "hbm_bytes": hbm,
        "fits": total <= hbm, "compiled_flops_per_device": float(cost.get("flops", 0.0)) if cost else None,
        "model_flops_per_step": mfu.flops_per_step(cfg), "collectives": _collectives(compiled),
        "libtpu_mismatch": libtpu_mismatch(),
        "compile_seconds": time.perf_counter() - t0,
    }


def format_report(r):
    g = lambda n: f"{n / GIB:8.2f} GiB"
    lines = [
        f"topology {r['topology']}: {r['devices']} x {r['device_kind']}, mesh {r['mesh']}",
        f"batch {r['global_batch']} x {r['seq_len']} ({r['per_device_batch']:g} sequences per device, "
        f"{r['micro_batches']} micro-batches), remat {r['remat']}",
        "per-device memory:",
        f"  arguments   {g(r['argument_bytes'])}",
        f"  outputs     {g(r['output_bytes'])}  (aliased with arguments: {r['alias_bytes'] / GIB:.2f} GiB)",
        f"  temporaries {g(r['temp_bytes'])}",
        f"  code        {g(r['code_bytes'])}",
        f"  total       {g(r['total_bytes'])} of {r['hbm_bytes'] / GIB:.0f} GiB HBM "
        f"({r['total_bytes'] / r['hbm_bytes']:.0%}) -> {'fits' if r['fits'] else 'DOES NOT FIT'}",
        f"FLOPs per step: model {r['model_flops_per_step']:.3e} (all devices); XLA cost analysis "
        f"{(r['compiled_flops_per_device'] or 0):.3e} per device (a scanned layer loop counts once)",
        "collectives: " + (", ".join(f"{k} {v}" for k, v in r["collectives"].items()) if r["collectives"] else
                           "not available (this jaxlib cannot read the optimized HLO of this libtpu)"),
        f"compiled in {r['compile_seconds']:.1f} s",
    ]
    if r.get("libtpu_mismatch"):
        lines.append(f"warning: {r['libtpu_mismatch']}")
    return "\n".join(lines)
