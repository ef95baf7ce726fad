"""Device mesh (data, fsdp, context, tensor; ICI x DCN for multi-slice) and logical-axis rules -> shardings.

`context` splits the sequence of the activations (context parallelism, docs/architecture.md#context-parallelism):
the rule ("act_seq", "context") shards every per-token activation over it, and attention gathers the keys and
values (attention.py). Parameters are sharded over `fsdp` and `context` together, FSDP-style.

Axis types: every mesh axis is `AxisType.Auto`. We state shardings at the boundaries (jit in/out shardings for
params, optimizer state and batch) and as constraints on activations, and let GSPMD propagate the rest, the MaxText
"pjit" style. JAX 0.10's default, `Explicit`, would make every contraction over a sharded axis state its output
sharding, which buys nothing here and breaks `scan`/`remat` code written once for all meshes.
"""
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from llada_jax.errors import LladaError

AXES = ("data", "fsdp", "context", "tensor")
SIZES = " x ".join(f"mesh.{a}" for a in AXES)


class MeshError(LladaError):
    pass


def _fill(sizes, total, what):
    """Replaces one -1 in sizes by what is left of `total`; checks the product."""
    sizes = list(sizes)
    if sizes.count(-1) > 1:
        raise MeshError(f"at most one {what} mesh axis may be -1, got {dict(zip(AXES, sizes))}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise MeshError(f"{what} mesh {dict(zip(AXES, sizes))}: {total} devices are not divisible by {known}; "
                            f"choose {SIZES} sizes whose product divides {total}.")
        sizes[sizes.index(-1)] = total // known
    if math.prod(sizes) != total:
        raise MeshError(f"{what} mesh {dict(zip(AXES, sizes))} has {math.prod(sizes)} devices but {total} are "
                        f"available; make the product of {SIZES} equal {total}, or set one of them to -1.")
    return sizes


def mesh_shape(mc, n_devices):
    """(ici sizes, dcn sizes) for the `mesh` config on n_devices devices."""
    dcn = [mc[f"dcn_{a}"] for a in AXES]
    if any(s < 1 for s in dcn):
        raise MeshError(f"mesh.dcn_* must be >= 1, got {dict(zip(AXES, dcn))}.")
    n_slices = math.prod(dcn)
    if n_devices % n_slices:
        raise MeshError(f"{n_devices} devices cannot form {n_slices} slices (mesh.dcn_* = {dcn}).")
    ici = _fill([mc[a] for a in AXES], n_devices // n_slices, "per-slice")
    return ici, dcn


def make_mesh(mc, devices=None):
    """The (data, fsdp, context, tensor) mesh. With mesh.dcn_* > 1 a hybrid mesh: each axis is dcn x ici, slices on
    the outer part (devices carry `slice_index` on multi-slice TPU; elsewhere slices are consecutive device groups)."""
    devices = list(devices if devices is not None else jax.devices())
    ici, dcn = mesh_shape(mc, len(devices))
    if math.prod(dcn) == 1:
        try:
            arr = mesh_utils.create_device_mesh(ici, devices)
        except (ValueError, NotImplementedError, AssertionError):
            arr = np.array(devices).reshape(ici)
    elif hasattr(devices[0], "slice_index"):
        arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:  # simulated slices: [dcn..., ici...] -> interleave to [dcn0*ici0, dcn1*ici1, ...]
        n = len(AXES)
        arr = np.array(devices).reshape(dcn + ici).transpose([j for i in range(n) for j in (i, n + i)])
        arr = arr.reshape([d * i for d, i in zip(dcn, ici)])
    return Mesh(arr, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def logical_to_spec(axes, rules):
    """Tuple of logical axis names -> PartitionSpec under `rules` [(logical, mesh axes or None), ...]."""
    rules = [(k, tuple(v) if isinstance(v, list) else v) for k, v in rules]
    return nn.logical_to_mesh_axes(axes, rules)


class Sharder:
    """Turns logical axes into NamedShardings on one mesh; `constrain` is the model's activation hook."""

    def __init__(self, mesh, rules):
        self.mesh = mesh
        self.rules = [(k, tuple(v) if isinstance(v, list) else v) for k, v in rules]

    def spec(self, axes):
        return logical_to_spec(axes, self.rules)

    def named(self, axes):
        return NamedSharding(self.mesh, self.spec(axes))

    def tree(self, axes_tree):
        """A pytree of logical-axis tuples -> the same tree of NamedShardings."""
        return jax.tree.map(self.named, axes_tree, is_leaf=lambda x: isinstance(x, tuple))

    def constrain(self, x, axes):
        return jax.lax.with_sharding_constraint(x, self.named(axes))

    @property
    def replicated(self):
        return NamedSharding(self.mesh, P())

    def batch_size_multiple(self):
        """The batch axis is split over every mesh axis the `batch` rule names."""
        spec = self.spec(("batch",))[0]
        names = spec if isinstance(spec, tuple) else (spec,) if spec else ()
        return math.prod(self.mesh.shape[n] for n in names)
