"""The memory-bounded plan both directions of a conversion follow (copy_plan): the arrays of an orbax `params` item
are read and written through tensorstore in chunk-aligned blocks of at most about BLOCK_BYTES, each block matched to
the HF tensors, or the rows of one HF tensor, it holds; stacked [L, ...] arrays move in groups of layers, one HF
tensor per layer. Progress prints the lines both directions log while the blocks move.

Nothing here knows a file format: the HF side of a block is a layout.Tensor and a row range.
"""
import time

import numpy as np

from llada_jax import checkpoint

BLOCK_BYTES = checkpoint.CHUNK_BYTES  # the unit of reads and writes that are not per-layer: the checkpoint's chunk


def open_leaf(params_dir, name, context):
    """The tensorstore of our leaf `name` ("blocks.q_proj") in an orbax params directory, or None."""
    try:
        return checkpoint.open_array(params_dir, name, context)
    except ValueError:
        return None


def _step_blocks(t, axis):
    """[(start, stop)] along `axis`: whole storage chunks, grouped up to BLOCK_BYTES, so no chunk is decoded twice."""
    size = t.shape[axis]
    chunk = t.chunk_layout.read_chunk.shape[axis] or size
    row_bytes = t.dtype.numpy_dtype.itemsize * int(np.prod(t.shape)) // max(size, 1)
    step = max(chunk, BLOCK_BYTES // max(row_bytes, 1) // chunk * chunk)
    return [(a, min(a + step, size)) for a in range(0, size, step)]


def copy_plan(table, stores):
    """The blocks both directions move, in the table's order: (leaf store, tensors, our index, HF rows). A stacked
    leaf moves in chunk-aligned groups of layers (one HF tensor per layer; rows None: whole tensors); a single
    tensor in chunk-aligned row blocks of the HF tensor, which are our columns for a linear one ([d, V] vs [V, d])."""
    for leaf, tensors in table.items():
        t = stores[leaf]
        if tensors[0].layer is not None:
            for a, b in _step_blocks(t, 0):
                yield t, tensors[a:b], slice(a, b), None
        else:
            axis = 1 if tensors[0].kind == "linear" else 0
            for a, b in _step_blocks(t, axis):
                yield t, tensors, (slice(None), slice(a, b)) if axis else slice(a, b), (a, b)


class Progress:
    """Progress lines: bytes done of the total, MB/s, the current tensor; at most one line every `every` seconds."""

    def __init__(self, label, total, log, every=2.0):
        self.label, self.total, self.log, self.every = label, total, log, every
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def update(self, nbytes, name):
        self.done += nbytes
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.log(f"{self.label}: {self.done / 1e6:,.0f}/{self.total / 1e6:,.0f} MB "
                     f"({100 * self.done / max(self.total, 1):.0f}%) {self.rate():.0f} MB/s  {name}")

    def rate(self):
        return self.done / 1e6 / max(time.perf_counter() - self.t0, 1e-9)
