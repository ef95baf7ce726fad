"""The pre-training input pipeline (grain): fixed windows of seq_len tokens from token stores, globally shuffled,
mixed, and cut into each host's rows of the global batch.

The global stream. Each store's non-overlapping windows `tokens[w L:(w + 1) L]` (the tail shorter than L is unused)
are shuffled by grain's index shuffle, with a new permutation each epoch, and repeat forever; several stores are
interleaved by grain's deterministic weighted mix. Row r of that stream is a pure function of (seed, r), computed by
random access, so nothing depends on the order or the process in which rows are read.

Hosts and steps. The global batch of step s is rows [R0 + s G, R0 + (s + 1) G) with G = train.global_batch; host h
of P reads only its rows [.. + h G/P, .. + (h + 1) G/P), exactly the rows `jax.make_array_from_process_local_data`
expects from it. Grain threads and worker processes (`data.threads`, `data.workers`) only prefetch those batches:
the batches do not depend on their number.

Checkpointing. `get_state()` is {"row": rows consumed}. After `set_state` the stream continues at that row, so the
next batches are exactly those an uninterrupted run would have produced. If the number of hosts changes between save
and restore, the global batches stay the same row for row (each host simply takes another slice of them); if
train.global_batch changes, the stream still continues at the same row, so no window is skipped or repeated.

Random length (paper: 1% of the pre-training data gets a length uniform in {1..L}). The pipeline does NOT cut
sequences: the trainer's jitted step draws the lengths per sequence from its checkpointed key
(`diffusion.random_lengths` with data.random_length_prob) and applies them as key mask and loss mask, without
recompiling. Cutting here as well would apply it twice.

Document masking. With data.document_mask=True a batch also carries `segment_ids` [B, L] int32 (0 for the document
that the window starts in, +1 at each later document start), so attention stays within documents. The default,
False, attends across documents as the paper did.
"""
import jax
import numpy as np
from absl import flags

from llada_jax.data import store as store_lib, tokenizer as tokenizer_lib
from llada_jax.errors import LladaError


class PipelineError(LladaError):
    """A pipeline config that cannot work; the message says how to fix it."""


def _grain():
    import grain  # lazily: only the store and SFT sources use grain, which takes ~0.7 s to import
    return grain


def derive_seed(*parts):
    """A 32-bit grain seed from integers (grain's shuffle accepts [0, 2^32))."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _allow_grain_workers():
    # grain's worker processes read absl flags; a program that never parsed absl flags (ours) must mark them parsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class HostBatches:
    """The trainer's data-source contract over a global stream of rows (a grain MapDataset of row descriptors):
    an iterator of host-local numpy batches, `read(descriptors [G/P, ...]) -> dict`, with get_state / set_state."""

    def __init__(self, rows, read, global_batch, process_index=None, process_count=None, threads=4, workers=0,
                 prefetch=8):
        if process_index is None or process_count is None:
            process_index, process_count = jax.process_index(), jax.process_count()
        if global_batch % process_count:
            raise PipelineError(f"train.global_batch={global_batch} is not divisible by {process_count} hosts.")
        self.rows, self.read, self.global_batch = rows, read, global_batch
        self.process_index, self.process_count = process_index, process_count
        self.local_batch = global_batch // process_count
        self.threads, self.workers, self.prefetch = threads, workers, prefetch
        self.row = 0
        self._it = None

    def dataset(self, row=0):
        """MapDataset whose element s is this host's batch of the s-th step after global row `row`."""
        return self.rows[row:].batch(self.local_batch)[self.process_index::self.process_count].map(self.read)

    def _iterator(self):
        grain = _grain()
        ds = self.dataset(self.row).to_iter_dataset(
            grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=self.prefetch if self.threads else 0))
        if self.workers > 0:
            _allow_grain_workers()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                             per_worker_buffer_size=max(1, self.prefetch // 2)))
        return iter(ds)

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._iterator()
        batch = next(self._it)
        self.row += self.global_batch
        return batch

    def get_state(self):
        return {"row": self.row}

    def set_state(self, state):
        self.close()
        self.row = int(state["row"])

    def close(self):
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None


class _Tag:
    """window index -> (store index, first token) of one store's window."""

    def __init__(self, k, seq_len):
        self.k, self.seq_len = k, seq_len

    def __call__(self, w):
        return np.array([self.k, int(w) * self.seq_len], np.int64)


def window_rows(n_windows, seq_len, seed, weights=None):
    """The global stream of (store, start) rows over stores with `n_windows` windows each: shuffled per store
    (a new permutation each epoch), repeated forever, mixed by `weights` (default: proportional to size)."""
    grain = _grain()
    parts = [grain.MapDataset.range(n).shuffle(derive_seed(seed, k)).repeat().map(_Tag(k, seq_len))
             for k, n in enumerate(n_windows)]
    if len(parts) == 1:
        return parts[0]
    return grain.MapDataset.mix(parts, list(weights) if weights else [float(n) for n in n_windows])


class ReadWindows:
    """Rows [(store, start)] -> {'tokens': [n, L] int32 (+ 'segment_ids' [n, L] int32)}; reads run concurrently."""

    def __init__(self, stores, seq_len, document_mask=False):
        self.stores, self.seq_len, self.document_mask = stores, seq_len, document_mask

    def __call__(self, rows):
        rows = np.asarray(rows).reshape(-1, 2)
        tokens = np.empty((len(rows), self.seq_len), np.int32)
        for k, store in enumerate(self.stores):
            sel = np.nonzero(rows[:, 0] == k)[0]
            if len(sel):
                tokens[sel] = store.read_many(rows[sel, 1], self.seq_len)
        out = {"tokens": tokens}
        if self.document_mask:
            out["segment_ids"] = np.stack([self.stores[k].segment_ids(s, self.seq_len) for k, s in rows])
        return out


def parse_list(text, what):
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise PipelineError(f"{what} is empty; set it, e.g. --config.{what}=/data/prepared")
    return items


def data_seed(cfg):
    return cfg.data.seed if cfg.data.seed >= 0 else cfg.seed


def make_pretrain_source(cfg, process_index=None, process_count=None):
    """`data.source="store"`: the pre-training source over the stores in data.path (comma-separated)."""
    d, seq_len = cfg.data, cfg.train.seq_len
    stores = [store_lib.TokenStore(p, d.split) for p in parse_list(d.path, "data.path")]
    for s in stores:
        tokenizer_lib.check_config(s.meta["special_ids"], s.meta["vocab_size"], cfg, f"the tokenizer of {s.path}")
    n_windows = [s.n_tokens // seq_len for s in stores]
    for s, n in zip(stores, n_windows):
        if n == 0:
            raise PipelineError(f"store {s.path} has {s.n_tokens} tokens, fewer than train.seq_len={seq_len}; "
                                f"prepare more text or lower --config.train.seq_len.")
    weights = [float(w) for w in parse_list(d.weights, "data.weights")] if d.weights else None
    if weights is not None and (len(weights) != len(stores) or min(weights) <= 0):
        raise PipelineError(f"data.weights={d.weights!r} must hold one positive weight per store in data.path "
                            f"({len(stores)}).")
    rows = window_rows(n_windows, seq_len, data_seed(cfg), weights)
    return HostBatches(rows, ReadWindows(stores, seq_len, d.document_mask), cfg.train.global_batch,
                       process_index, process_count, d.threads, d.workers, d.prefetch)
