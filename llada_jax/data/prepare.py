"""`llada data prepare`: raw text / JSONL (optionally .gz) -> a tokenized token store per split (see store.py).

Documents are read by `documents.py` (JSONL: one object per line; plain text: blank-line separated paragraphs).

Stages, each restartable:
  1. tokenize: worker processes encode chunks of documents; the results of one input file are committed atomically
     as one shard (`DIR/shards/NNNNN-KEY.npz`, written to a temporary name and renamed). A shard's KEY covers the
     file's path, size and mtime and the tokenizer's sha256, so an interrupted run resumes at the first missing shard.
  2. merge: the shards are split into train / val by document hash and written as two stores, then
     `DIR/metadata.json` is written last: it marks completion. The shards are deleted afterwards.
A second run with the same inputs and options finds metadata.json and changes nothing.

Errors: an undecodable (non UTF-8) or malformed line (bad JSON, no string `text_field`) is reported with file and line
number; `on_error="stop"` raises, `on_error="skip"` drops that document (for plain text: its whole paragraph), counts
it and keeps the first messages in metadata.json. Empty documents are dropped and counted.

Validation split: a document goes to `val` when the first 8 bytes of blake2b(its UTF-8 text), read as a fraction of
2^64, are below `val_fraction`: deterministic, independent of file order and worker count, and exact duplicates
always land in the same split.
"""
import hashlib
import json
import multiprocessing
import os
import shutil
import time

import numpy as np

from llada_jax.data import documents, store as store_lib, tokenizer as tokenizer_lib
from llada_jax.errors import LladaError

CHUNK_BYTES = 1 << 20  # raw text per work item sent to a worker
MAX_ERROR_MESSAGES = 100


class PrepareError(LladaError):
    """Bad input or options; the message names the file and line and says how to proceed."""


def doc_hash(text):
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


# -- workers ----------------------------------------------------------------------------------------------------
_WORKER = {}


def _init_worker(cls, model_proto):
    _WORKER["tok"] = cls(model_proto)


def encode_chunk(item):
    """Work item (file index, path, text_field, [(line, raw lines)]) -> (file index, tokens, lengths, hashes,
    errors, empty, n_bytes). Each document's tokens end with EOS."""
    fi, path, text_field, docs = item
    tok = _WORKER["tok"]
    texts, errors, empty, n_bytes = [], [], 0, 0
    for first, lines in docs:
        n_bytes += sum(len(x) for x in lines)
        try:
            text = documents.decode_document(path, first, lines, text_field)
        except documents.DocumentError as e:
            errors.append(str(e))
            continue
        if text.strip():
            texts.append(text)
        else:
            empty += 1
    ids = tok.encode(texts)
    lengths = np.array([len(x) + 1 for x in ids], np.int64)
    tokens = np.empty(int(lengths.sum()), np.uint32)
    ends = np.cumsum(lengths)
    for x, end, n in zip(ids, ends, lengths):
        tokens[end - n: end - 1] = x
        tokens[end - 1] = tok.eos_id
    hashes = np.array([doc_hash(t) for t in texts], np.uint64)
    return fi, tokens, lengths, hashes, errors, empty, n_bytes


def _work_items(jobs, text_field):
    """Chunks of about CHUNK_BYTES of documents, then an end marker (None docs) per file."""
    for fi, path in jobs:
        docs, size = [], 0
        for first, lines in documents.iter_raw_documents(path):
            docs.append((first, lines))
            size += sum(len(x) for x in lines)
            if size >= CHUNK_BYTES:
                yield fi, path, text_field, docs
                docs, size = [], 0
        if docs:
            yield fi, path, text_field, docs
        yield fi, path, text_field, None


def _file_key(path, tok_sha, text_field):
    st = os.stat(path)
    field = text_field if documents.is_jsonl(path) else None
    ident = json.dumps([path, st.st_size, st.st_mtime_ns, tok_sha, field])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def _write_atomic(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


class _Shard:
    """Accumulates one input file's encoded chunks."""

    def __init__(self):
        self.parts, self.errors, self.empty, self.bytes = [], [], 0, 0

    def add(self, result):
        _, tokens, lengths, hashes, errors, empty, n_bytes = result
        self.parts.append((tokens, lengths, hashes))
        self.errors += errors
        self.empty += empty
        self.bytes += n_bytes

    def save(self, path):
        cat = lambda k, dt: np.concatenate([p[k] for p in self.parts]) if self.parts else np.zeros(0, dt)
        stats = {"errors": self.errors, "empty": self.empty, "bytes": self.bytes}

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, tokens=cat(0, np.uint32), lengths=cat(1, np.int64), hashes=cat(2, np.uint64),
                         stats=np.array(json.dumps(stats)))
        _write_atomic(path, write)


def _tokenize(jobs, shard_paths, tok, text_field, workers, on_error, log):
    """Runs the workers over the files in `jobs` and commits one shard per file."""
    items = _work_items(jobs, text_field)
    if workers > 1:
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (type(tok), tok.model_proto))
        results = pool.imap(_encode_or_end, items)
    else:
        pool = None
        _init_worker(type(tok), tok.model_proto)
        results = map(_encode_or_end, items)
    try:
        shard, t0, done = _Shard(), time.perf_counter(), 0
        t_report = t0
        for result in results:
            fi = result[0]
            if time.perf_counter() - t_report > 10:
                t_report = time.perf_counter()
                log(f"  {os.path.basename(dict(jobs)[fi])}: {shard.bytes / 1e6:.1f} MB so far")
            if result[1] is None:  # end of file fi: commit its shard
                shard.save(shard_paths[fi])
                done += 1
                n_docs = sum(len(p[1]) for p in shard.parts)
                n_tok = sum(len(p[0]) for p in shard.parts)
                dt = time.perf_counter() - t0
                log(f"[{done}/{len(jobs)}] {os.path.basename(dict(jobs)[fi])}: {n_docs:,} docs, {n_tok:,} tokens, "
                    f"{shard.bytes / 1e6:.1f} MB in {dt:.1f}s ({shard.bytes / 1e6 / max(dt, 1e-9):.1f} MB/s)"
                    + (f", {len(shard.errors)} bad lines skipped" if shard.errors else ""))
                shard, t0 = _Shard(), time.perf_counter()
                continue
            if result[4] and on_error == "stop":
                raise PrepareError(f"{result[4][0]}. Fix the input, or pass --on_error=skip to drop such "
                                   f"documents (they are counted and reported).")
            for e in result[4]:
                if len(shard.errors) < 5:
                    log(f"skipping: {e}")
            shard.add(result)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _encode_or_end(item):
    if item[3] is None:
        return item[0], None
    return encode_chunk(item)


def _split_masks(hashes, val_fraction):
    threshold = np.uint64(min(int(val_fraction * 2.0 ** 64), 2 ** 64 - 1))
    val = hashes < threshold if val_fraction > 0 else np.zeros(len(hashes), bool)
    return ~val, val


def _sizes(counts):
    """'N documents, M tokens' of a prepared store (its train split), or of each split when val has documents."""
    def size(split):
        return f"{counts[split]['documents']:,} documents, {counts[split]['tokens']:,} tokens"
    return f"train {size('train')}; val {size('val')}" if counts["val"]["documents"] else size("train")


def _merge(out, shard_paths, tok, val_fraction, chunk, log):
    """Shards -> `out/train` and `out/val` stores (built under temporary names, then renamed)."""
    totals = {"train": [0, 0], "val": [0, 0]}
    for p in shard_paths:  # pass 1: sizes
        with np.load(p) as z:
            for split, sel in zip(("train", "val"), _split_masks(z["hashes"], val_fraction)):
                totals[split][0] += int(sel.sum())
                totals[split][1] += int(z["lengths"][sel].sum())
    store_info = {"tokenizer_sha256": tok.sha256, "vocab_size": tok.vocab_size, "special_ids": tok.special_ids()}
    writers = {}
    for split, (n_docs, n_tok) in totals.items():
        tmp = os.path.join(out, f".{split}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        writers[split] = store_lib.StoreWriter(tmp, n_tok, n_docs, store_info, chunk)
    for k, p in enumerate(shard_paths):  # pass 2: data
        with np.load(p) as z:
            tokens, lengths = z["tokens"], z["lengths"]
            owner = np.repeat(np.arange(len(lengths)), lengths)
            for split, sel in zip(("train", "val"), _split_masks(z["hashes"], val_fraction)):
                writers[split].add(tokens[sel[owner]], lengths[sel])
        log(f"merge [{k + 1}/{len(shard_paths)}]")
    for split, w in writers.items():
        w.close()
        final = os.path.join(out, split)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(w.path, final)
    return {s: {"documents": d, "tokens": t, "text_tokens": t - d} for s, (d, t) in totals.items()}


def prepare(inputs, out, tokenizer, text_field="text", workers=None, val_fraction=0.01, on_error="stop",
            chunk=store_lib.DEFAULT_CHUNK, keep_shards=False, log=print):
    """Tokenizes `inputs` (globs) into token stores under `out`; returns the metadata dict (see module docstring)."""
    if on_error not in ("stop", "skip"):
        raise PrepareError(f"on_error={on_error!r}; expected 'stop' or 'skip'.")
    if not 0.0 <= val_fraction < 1.0:
        raise PrepareError(f"val_fraction={val_fraction}; expected a fraction in [0, 1).")
    tok = tokenizer if isinstance(tokenizer, tokenizer_lib.Tokenizer) else tokenizer_lib.Tokenizer.load(tokenizer)
    paths = documents.expand_inputs(inputs)
    workers = (os.cpu_count() or 1) if workers is None else workers
    sources = [{"path": p, "bytes": os.path.getsize(p), "key": _file_key(p, tok.sha256, text_field)} for p in paths]
    options = {"text_field": text_field, "val_fraction": val_fraction, "on_error": on_error, "chunk": chunk}
    fingerprint = hashlib.sha256(json.dumps([sources, options, tok.sha256]).encode()).hexdigest()
    meta_path = os.path.join(out, "metadata.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("fingerprint") == fingerprint:
            log(f"{out} is complete and up to date ({_sizes(meta)}); nothing to do.")
            shutil.rmtree(os.path.join(out, "shards"), ignore_errors=True)  # left over if stopped before cleanup
            return meta
        raise PrepareError(f"{out} already holds a store prepared from other inputs or options (or the inputs "
                           f"changed since). Choose another --out, or delete {out} to rebuild it.")

    shard_dir = os.path.join(out, "shards")
    os.makedirs(shard_dir, exist_ok=True)
    shard_paths = [os.path.join(shard_dir, f"{i:05d}-{s['key']}.npz") for i, s in enumerate(sources)]
    for name in os.listdir(shard_dir):  # partial writes of an interrupted run, and shards of changed inputs
        if os.path.join(shard_dir, name) not in shard_paths:
            os.remove(os.path.join(shard_dir, name))
    jobs = [(i, s["path"]) for i, s in enumerate(sources) if not os.path.exists(shard_paths[i])]
    reused = len(sources) - len(jobs)
    log(f"prepare: {len(sources)} file(s), {sum(s['bytes'] for s in sources) / 1e6:.1f} MB -> {out}; "
        f"{reused} shard(s) already done, {workers} worker(s)")
    t0 = time.perf_counter()
    if jobs:
        _tokenize(jobs, shard_paths, tok, text_field, workers, on_error, log)
    t_tok = time.perf_counter() - t0
    errors, empty = [], 0
    for p in shard_paths:
        with np.load(p) as z:
            stats = json.loads(str(z["stats"]))
        errors += stats["errors"]
        empty += stats["empty"]
    counts = _merge(out, shard_paths, tok, val_fraction, chunk, log)
    meta = {"fingerprint": fingerprint, "tokenizer": {"path": tok.path, "sha256": tok.sha256,
                                                      "vocab_size": tok.vocab_size, "special_ids": tok.special_ids()},
            "sources": [{"path": s["path"], "bytes": s["bytes"]} for s in sources], "options": options,
            **counts, "skipped_documents": len(errors), "empty_documents": empty,
            "errors": errors[:MAX_ERROR_MESSAGES], "tokenize_seconds": t_tok}
    _write_atomic(meta_path, lambda tmp: _write_text(tmp, json.dumps(meta, indent=2)))
    if not keep_shards:
        shutil.rmtree(shard_dir, ignore_errors=True)
    log(f"done: {out}: {_sizes(counts)}"
        + (f"; {len(errors)} bad documents skipped" if errors else "")
        + (f"; {empty} empty documents dropped" if empty else ""))
    return meta
