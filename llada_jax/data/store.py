"""The token store: every document of a split, each followed by EOS, in one flat uint32 TensorStore zarr array.

Layout of a store directory (one per split, e.g. `PREPARED/train`):
    tokens.zarr/   flat uint32 array [n_tokens], chunked, blosc-lz4 with byte shuffle
    offsets.npy    int64 [n_docs + 1]: document i spans tokens[offsets[i]:offsets[i + 1]] (its EOS included)
    store.json     n_docs, n_tokens, chunk size, the tokenizer's ids and fingerprint
A prepared directory (`llada data prepare --out=PREPARED`) holds `train/`, `val/` and `metadata.json`.
"""
import json
import os

import numpy as np
import tensorstore

from llada_jax.errors import LladaError

DEFAULT_CHUNK = 1 << 16  # tokens per zarr chunk: 256 KiB raw, small enough to decompress per random window


class StoreError(LladaError):
    """A token store is missing or incomplete; the message says how to make it."""


def _spec(path, n_tokens=None, chunk=DEFAULT_CHUNK):
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(path, "tokens.zarr")}}
    if n_tokens is not None:
        spec["metadata"] = {"dtype": "<u4", "shape": [n_tokens], "chunks": [chunk],
                            "compressor": {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}}
    return spec


class StoreWriter:
    """Streams documents (token arrays ending in EOS) into a new store directory; `close()` commits it."""

    def __init__(self, path, n_tokens, n_docs, info, chunk=DEFAULT_CHUNK):
        os.makedirs(path, exist_ok=True)
        self.path, self.n_tokens, self.chunk, self.info = path, n_tokens, chunk, info
        self.array = tensorstore.open(_spec(path, max(n_tokens, 1), chunk), create=True, delete_existing=True).result()
        self.offsets = np.zeros(n_docs + 1, np.int64)
        self.n_docs, self.pos, self.flushed = 0, 0, 0
        self.pending = []

    def add(self, tokens, lengths):
        """Appends documents: `tokens` is their concatenation, `lengths` their sizes (EOS included)."""
        k = len(lengths)
        self.offsets[self.n_docs + 1: self.n_docs + 1 + k] = self.pos + np.cumsum(lengths)
        self.n_docs += k
        self.pos += int(np.sum(lengths))
        self.pending.append(np.asarray(tokens, np.uint32))
        if self.pos - self.flushed >= 16 * self.chunk:
            self._flush(final=False)

    def _flush(self, final):
        buf = np.concatenate(self.pending) if self.pending else np.zeros(0, np.uint32)
        n = len(buf) if final else len(buf) // self.chunk * self.chunk  # whole chunks only, until the end
        if n:
            self.array[self.flushed: self.flushed + n].write(buf[:n]).result()
        self.pending = [buf[n:]]
        self.flushed += n

    def close(self):
        self._flush(final=True)
        if self.pos != self.n_tokens or self.n_docs != len(self.offsets) - 1:
            raise RuntimeError(f"store {self.path}: wrote {self.pos} tokens / {self.n_docs} docs, expected "
                               f"{self.n_tokens} / {len(self.offsets) - 1}")
        np.save(os.path.join(self.path, "offsets.npy"), self.offsets)
        meta = {"n_docs": self.n_docs, "n_tokens": self.n_tokens, "chunk": self.chunk, **self.info}
        with open(os.path.join(self.path, "store.json"), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)


def resolve(path, split="train"):
    """A store directory from either itself or a prepared directory holding `split/`."""
    if os.path.exists(os.path.join(path, "store.json")):
        return path
    if os.path.exists(os.path.join(path, split, "store.json")):
        if not os.path.exists(os.path.join(path, "metadata.json")):
            raise StoreError(f"{path} is an unfinished `llada data prepare` output (no metadata.json); run the "
                             f"same prepare command again to finish it.")
        return os.path.join(path, split)
    raise StoreError(f"no token store at {path!r} (looked for store.json and {split}/store.json); make one with "
                     f"`llada data prepare --input=FILES --out={path} --tokenizer=MODEL`.")


class TokenStore:
    """Read access to a store: `read(start, stop)`, and `read_many(starts, length)` for concurrent windows.
    Pickles without its TensorStore handle (reopened lazily), so grain worker processes can use it."""

    def __init__(self, path, split="train", cache_bytes=64 << 20):
        self.path = resolve(path, split)
        with open(os.path.join(self.path, "store.json")) as f:
            self.meta = json.load(f)
        self.n_tokens, self.n_docs = self.meta["n_tokens"], self.meta["n_docs"]
        self.cache_bytes = cache_bytes
        self._array = self._offsets = None

    def __getstate__(self):
        return {**self.__dict__, "_array": None, "_offsets": None}

    @property
    def array(self):
        if self._array is None:
            ctx = tensorstore.Context({"cache_pool": {"total_bytes_limit": self.cache_bytes}})
            self._array = tensorstore.open(_spec(self.path), open=True, read=True, context=ctx).result()
        return self._array

    @property
    def offsets(self):
        if self._offsets is None:
            self._offsets = np.load(os.path.join(self.path, "offsets.npy"), mmap_mode="r")
        return self._offsets

    def read(self, start, stop):
        return self.array[start:stop].read().result()

    def read_many(self, starts, length):
        """[len(starts), length] uint32: the windows tokens[s:s + length], read concurrently."""
        futures = [self.array[int(s): int(s) + length].read() for s in starts]
        return np.stack([f.result() for f in futures]) if futures else np.zeros((0, length), np.uint32)

    def segment_ids(self, start, length):
        """int32 [length]: 0 for the document containing `start`, +1 at every later document start."""
        off = self.offsets
        first = np.searchsorted(off, start, side="right")
        last = np.searchsorted(off, start + length, side="left")
        seg = np.zeros(length, np.int32)
        seg[np.asarray(off[first:last]) - start] = 1
        return np.cumsum(seg, dtype=np.int32)

    def document(self, i):
        return self.read(int(self.offsets[i]), int(self.offsets[i + 1]))
