"""Sharded safetensors without torch: reading the tensor index of an HF directory (model.safetensors.index.json and
each file's header), reading row blocks of one tensor straight from its file, planning the shards of an export and
writing them tensor by tensor, each tensor whole or in row blocks, so that no file is ever held in memory.

A safetensors file is an 8-byte little-endian header length, a JSON header ({name: dtype, shape, data_offsets}),
then the tensors' raw little-endian bytes.
"""
import json
import os

import ml_dtypes
import numpy as np

from llada_jax.convert import ConvertError

# --dtype name -> (safetensors dtype code, numpy dtype).
DTYPES = {"float32": ("F32", np.dtype(np.float32)), "bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16)),
          "float16": ("F16", np.dtype(np.float16))}
ST_DTYPES = {code: dt for code, dt in DTYPES.values()}
INDEX = "model.safetensors.index.json"


def _nbytes(code, shape):
    return int(np.prod(shape)) * ST_DTYPES[code].itemsize


# ---------------------------------------------------------------------------------------------------------------
# Reading.

def read_safetensors_header(path):
    """{name: (dtype code, shape, absolute byte offset, nbytes)} of one safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConvertError(f"{path}: not a safetensors file (shorter than its 8-byte header length).")
        n = int.from_bytes(raw, "little")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path}: unreadable safetensors header ({e}).") from None
    header.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"]), 8 + n + v["data_offsets"][0],
                v["data_offsets"][1] - v["data_offsets"][0]) for k, v in header.items()}


def read_hf_index(hf_dir):
    """{tensor name: (file path, dtype code, shape, offset, nbytes)} of every safetensors file of an HF directory."""
    index_path = os.path.join(hf_dir, INDEX)
    if os.path.exists(index_path):
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))
    if not files:
        raise ConvertError(f"{hf_dir} has no .safetensors files (PyTorch .bin checkpoints are not supported; "
                           f"re-save them with safetensors).")
    out = {}
    for n in files:
        path = os.path.join(hf_dir, n)
        if not os.path.exists(path):
            raise ConvertError(f"{index_path} names {n}, which is missing from {hf_dir}.")
        for name, (code, shape, offset, nbytes) in read_safetensors_header(path).items():
            out[name] = (path, code, shape, offset, nbytes)
    return out


def read_rows(entry, a, b):
    """Rows a:b of an HF tensor (`entry`: its read_hf_index value), read straight from its safetensors file."""
    path, code, shape, offset, _ = entry
    dt = ST_DTYPES[code].newbyteorder("<")
    row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    count = (b - a) * row
    with open(path, "rb") as f:
        f.seek(offset + a * row * dt.itemsize)
        data = np.fromfile(f, dtype=dt, count=count)
    if data.size != count:
        raise ConvertError(f"{path} is truncated: its tensor data ends early.")
    return data.reshape((b - a,) + tuple(shape[1:]))


# ---------------------------------------------------------------------------------------------------------------
# Writing.

def _parse_size(text):
    if isinstance(text, int):
        return text
    units = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "B": 1}
    s = str(text).strip().upper()
    for unit, factor in units.items():
        if s.endswith(unit):
            return int(float(s[:-len(unit)]) * factor)
    return int(s)


def plan_shards(entries, max_shard_size):
    """[(file name, [(name, dtype code, shape), ...])]: `entries` in order, a new shard when the next tensor would
    overflow max_shard_size (bytes, or text such as "5GB"); the files are model-0000i-of-0000n.safetensors."""
    limit = _parse_size(max_shard_size)
    shards, current, size = [], [], 0
    for entry in entries:
        nbytes = _nbytes(*entry[1:])
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    shards.append(current)
    return [(f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors", shard) for i, shard in enumerate(shards)]


def total_bytes(shards):
    """The bytes of tensor data of plan_shards' `shards`."""
    return sum(_nbytes(code, shape) for _, entries in shards for _, code, shape in entries)


def shard_index(shards):
    """The contents of model.safetensors.index.json (INDEX) for plan_shards' `shards`."""
    weight_map = {name: file for file, entries in shards for name, _, _ in entries}
    return {"metadata": {"total_size": total_bytes(shards)}, "weight_map": dict(sorted(weight_map.items()))}


def remove_shards(directory):
    """Deletes the safetensors files and INDEX of `directory`: shards of an earlier export with another shard count
    would confuse loaders."""
    for name in os.listdir(directory):
        if name.endswith(".safetensors") or name == INDEX:
            os.remove(os.path.join(directory, name))


class SafetensorsWriter:
    """Writes one shard whose tensors (names, dtype codes, shapes) are known up front; data arrives in order,
    each tensor whole or in row blocks."""

    def __init__(self, path, entries):
        self.path, self.entries = path, entries
        header, offset = {}, 0
        for name, code, shape in entries:
            nbytes = _nbytes(code, shape)
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header["__metadata__"] = {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.f = open(path, "wb")
        self.f.write(len(text).to_bytes(8, "little") + text)
        self.index, self.written = 0, 0

    def write(self, name, block):
        """Appends `block` (the whole tensor, or its next rows) of tensor `name`."""
        want_name, code, shape = self.entries[self.index]
        assert name == want_name and block.dtype == ST_DTYPES[code], (name, want_name, block.dtype, code)
        data = np.ascontiguousarray(block).astype(block.dtype.newbyteorder("<"), copy=False)
        self.f.write(memoryview(data.reshape(-1).view(np.uint8)))
        self.written += data.nbytes
        if self.written == _nbytes(code, shape):
            self.index, self.written = self.index + 1, 0

    @property
    def done(self):
        return self.index == len(self.entries)

    def close(self):
        assert self.done, f"{self.path}: wrote {self.index} of {len(self.entries)} tensors"
        self.f.close()


class ShardedWriter:
    """The shards of plan_shards in `directory`, consecutively: the next file opens when the previous one has all
    its tensors."""

    def __init__(self, directory, shards):
        self.pending = [(os.path.join(directory, file), entries) for file, entries in shards]
        self.current = None

    def write(self, name, block):
        if self.current is None or self.current.done:
            if self.current is not None:
                self.current.close()
            self.current = SafetensorsWriter(*self.pending.pop(0))
        self.current.write(name, block)

    def close(self):
        self.current.close()
        assert not self.pending, f"{len(self.pending)} shards were never written"
