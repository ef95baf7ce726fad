"""Ahead-of-time compilation of the real train step for a TPU or NVIDIA GPU topology, on a machine without either.

Uses libtpu's topology descriptions (`pip install libtpu`), or for GPUs JAX's CUDA plugin (`pip install
"jax[cuda12]"`, the `gpu` extra; no driver or GPU needed) given a description of the GPU (`gpu_target_config`), and
the same `train.Setup` as `llada train`, so what compiles here is what the machines run (on GPU: cuDNN attention).
Reports per-device memory, FLOPs per step and the collectives of the program.

TPU topology names: `v5e-256` / `v6e-64` count chips; `v4-128` / `v5p-128` count TensorCores (2 per chip), so
v5p-128 is 64 chips. An explicit shape such as `v5e:4x4` or `v5p:4x4x4` is also accepted.
GPU topology names: `h100:8` / `h200:8` (one host of 8 GPUs), `h100:2x8` (2 hosts of 8 GPUs).
"""
import glob
import importlib.util
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
# NVIDIA GPUs (SXM, HBM per device as the driver reports it). Both are Hopper (sm_90a): 132 SMs at 1.98 GHz, 50 MiB L2.
GPUS = {"h100": {"name": "NVIDIA H100 80GB HBM3", "memory": 84942979072, "bandwidth": 3.35232e12},
        "h200": {"name": "NVIDIA H200 141GB HBM3e", "memory": 151397597184, "bandwidth": 4.8e12}}
HBM_BYTES.update({k: v["memory"] for k, v in GPUS.items()})
# JAX's GPU allocator gets this fraction of the memory (XLA_PYTHON_CLIENT_MEM_FRACTION); the rest is left to
# cuDNN / cuBLAS workspaces, NCCL buffers and the CUDA context.
GPU_MEM_FRACTION = 0.75
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
    """'v5p-128' -> ('v5p', 'v5p:4x4x4', 64 chips); 'v5e:4x4' -> ('v5e', 'v5e:4x4', 16); 'h100:8' -> ('h100',
    'h100:1x8', 8 GPUs); 'h200:2x8' -> ('h200', 'h200:2x8', 16): hosts x GPUs per host."""
    g = re.fullmatch(r"(h100|h200)[-:](?:(\d+)x)?(\d+)", name.strip().lower())
    if g:
        hosts, per_host = int(g.group(2) or 1), int(g.group(3))
        if hosts < 1 or not 1 <= per_host <= 8:
            raise CompileError(f"{name}: expected 1 to 8 GPUs per host, e.g. h100:8 or h100:2x8 (2 hosts of 8).")
        return g.group(1), f"{g.group(1)}:{hosts}x{per_host}", hosts * per_host
    m = re.fullmatch(r"(v4|v5e|v5p|v6e)[-:](.+)", name.strip().lower())
    if not m:
        raise CompileError(f"unknown topology {name!r}; expected e.g. v5e-256, v5p-128 (TensorCores), v6e-64, "
                           f"v4-32, an explicit shape like v5e:4x4 / v5p:2x2x4, or GPUs h100:8, h200:8, h100:2x8.")
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


CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")  # jax[cuda12] (the gpu extra), jax[cuda13] (GPU images)
CUDNN_PACKAGES = ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13")


def cuda_plugin():
    """The module name of the installed JAX CUDA plugin, or None."""
    return next((m for m in CUDA_PLUGINS if importlib.util.find_spec(m)), None)


def installed_version(*packages):
    """The version of the first of `packages` that is installed ("9.8.0"), or None."""
    for pkg in packages:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return None


def gpu_target_config(gpu):
    """The text-format GpuTargetConfigProto of a `GPUS` entry: what XLA's GPU compiler would otherwise read from an
    attached GPU (its limits, cost-model rates, cuDNN version). The cuDNN version is the installed one, so that the
    compiler takes the cuDNN fusions (flash attention) the machines will have; XLA's repository keeps such specs
    for many GPUs (xla/backends/gpu/target_config/specs/), but with fields newer than a given jaxlib reads."""
    g = GPUS[gpu]
    found = installed_version(*CUDNN_PACKAGES)
    dnn = [int(x) for x in found.split(".")[:3]] if found else [9, 8, 0]
    info = {"threads_per_block_limit": 1024, "threads_per_warp": 32, "shared_memory_per_block": 48 << 10,
            "shared_memory_per_core": 228 << 10, "shared_memory_per_block_optin": 227 << 10,
            "threads_per_core_limit": 2048, "core_count": 132, "fpus_per_core": 128,
            "block_dim_limit_x": 2 ** 31 - 1, "block_dim_limit_y": 65535, "block_dim_limit_z": 65535,
            "thread_dim_limit_x": 1024, "thread_dim_limit_y": 1024, "thread_dim_limit_z": 64,
            "registers_per_core_limit": 65536, "registers_per_block_limit": 65536,
            "memory_bandwidth": int(g["bandwidth"]), "l2_cache_size": 50 << 20, "clock_rate_ghz": 1.98,
            "device_memory_size": g["memory"], "device_address_bits": 64, "pcie_bandwidth": 32 << 30,
            "ecc_enabled": "true", "device_vendor": '"NVIDIA Corporation"',
            "platform_version": '"Compute Capability 9.0a"', "name": f'"{g["name"]}"'}

    def rates(table, clock):  # {xla.PrimitiveType number: (units per SM, ops per clock per unit)}
        return "".join(f" rate_infos {{ key: {k} value {{ clock_rate_ghz: {clock} units_per_core: {u} "
                       f"ops_per_clock: {o} }} }}" for k, (u, o) in table.items())

    # PrimitiveType: S8 2, F16 10, F32 11, F64 12, BF16 16, F8E5M2 19, F8E4M3FN 20. Matrix: tensor cores (4 per SM,
    # dense ops per clock; F32 is TF32); scalar: the CUDA cores.
    matrix = rates({2: (4, 1024), 10: (4, 512), 11: (4, 256), 16: (4, 512), 19: (4, 1024), 20: (4, 1024)}, 1.83)
    scalar = rates({10: (128, 2), 11: (128, 1), 12: (64, 1), 16: (128, 2)}, 1.98)
    fields = " ".join(f"{k}: {v}" for k, v in info.items())
    return (f"gpu_device_info {{ {fields} cuda_compute_capability {{ major: 9 feature_extension: "
            f"ACCELERATED_FEATURES }} matrix_unit_description {{{matrix} }} scalar_unit_description {{{scalar} }}"
            f" device_interconnect_info {{ active_links: 18 }} }}"
            f' platform_name: "CUDA" dnn_version_info {{ major: {dnn[0]} minor: {dnn[1]} patch: {dnn[2]} }}'
            f' device_description_str: "{g["name"]}"')


def gpu_topology_devices(name):
    """(gpu, topology name, GPUs, devices) of a GPU topology name: compile-only devices of JAX's CUDA plugin."""
    gpu, topo_name, count = parse_topology(name)
    hosts, per_host = topo_name.split(":")[1].split("x")
    if not glob.glob("/dev/nvidia[0-9]*"):
        # The plugin checks its CUDA libraries by calling cuInit when it loads; without a driver that fails
        # ("operation cuInit(0) failed: Unknown CUDA error 303") and JAX drops the plugin, topologies and all. The
        # compiler needs no driver: skip the check (read when the plugin loads, so set before any backend starts).
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    from jax.experimental import topologies
    try:
        topo = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(gpu),
                                            topology=f"{hosts}x1x{per_host}")
    except Exception as e:  # noqa: BLE001  (plugin missing, or it could not start: report its words)
        raise CompileError(f"could not get the GPU topology {topo_name} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}). Install JAX's CUDA plugin (no GPU or driver needed to "
                           f"compile): `pip install \"jax[cuda12]=={metadata.version('jax')}\"`; if it is installed, "
                           f"set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 before JAX starts.") from None
    return gpu, topo_name, count, topo.devices


def topology_devices(name):
    """(generation, topology name, chips, devices) of a topology name."""
    if name.strip().lower().startswith(tuple(GPUS)):
        return gpu_topology_devices(name)
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
    compile). `fits` says whether the per-device total stays within the chip's HBM (on GPU within `usable_bytes`,
    the part of it JAX's allocator gets)."""
    gen, topo_name, chips, devices = topology_devices(topology)
    t0 = time.perf_counter()
    setup = train.Setup(cfg, devices)  # TPU devices: attention `auto` picks the real splash kernel; GPU: cuDNN
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
    gpu = gen in GPUS
    # on GPU what JAX's allocator may use (XLA_PYTHON_CLIENT_MEM_FRACTION of the memory, as the run will see it)
    usable = int(hbm * float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEM_FRACTION))) if gpu else hbm
    return {
        "topology": topo_name, "devices": len(devices), "device_kind": devices[0].device_kind,
        "mesh": dict(setup.mesh.shape), "global_batch": b, "seq_len": l, "micro_batches": cfg.train.micro_batches,
        "remat": cfg.model.remat, "per_device_batch": b / len(devices),
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
        "code_bytes": mem.generated_code_size_in_bytes, "total_bytes": total, "hbm_bytes": hbm,
        "usable_bytes": usable, "fits": total <= usable,
        "compiled_flops_per_device": float(cost.get("flops", 0.0)) if cost else None,
        "model_flops_per_step": mfu.flops_per_step(cfg), "collectives": _collectives(compiled),
        "libtpu_mismatch": None if gpu else libtpu_mismatch(),
        "cudnn_attention_calls": hlo_count(compiled, "__cudnn$fmha") if gpu else None,
        "compile_seconds": time.perf_counter() - t0,
    }


def hlo_count(compiled, text):
    """How often `text` occurs in the optimized program (None when it cannot be read back)."""
    try:
        return compiled.as_text().count(text)
    except Exception:  # noqa: BLE001
        return None


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
        f"({r['total_bytes'] / r['hbm_bytes']:.0%}) -> {'fits' if r['fits'] else 'DOES NOT FIT'}"
        + (f" in JAX's GPU allocator ({r['usable_bytes'] / GIB:.1f} GiB, XLA_PYTHON_CLIENT_MEM_FRACTION="
           f"{r['usable_bytes'] / r['hbm_bytes']:.2f})" if r.get("usable_bytes", r["hbm_bytes"]) != r["hbm_bytes"]
           else ""),
        f"FLOPs per step: model {r['model_flops_per_step']:.3e} (all devices); XLA cost analysis "
        + (f"{r['compiled_flops_per_device']:.3e} per device (a scanned layer loop counts once)"
           if r["compiled_flops_per_device"] is not None else "not available (none for GPU compiled without one)"),
        "collectives: " + (", ".join(f"{k} {v}" for k, v in r["collectives"].items()) if r["collectives"] else
                           "not available (this jaxlib cannot read the optimized HLO of this libtpu)"),
        f"compiled in {r['compile_seconds']:.1f} s",
    ]
    if r.get("cudnn_attention_calls") is not None:
        lines.insert(-1, f"cuDNN attention calls in the program: {r['cudnn_attention_calls']}")
    if r.get("libtpu_mismatch"):
        lines.append(f"warning: {r['libtpu_mismatch']}")
    return "\n".join(lines)
