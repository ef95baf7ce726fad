"""The pre-training pipeline: windows, shuffling, host shards, restore, worker independence, mixtures, the
random-length statistics, and the trainer wiring end to end."""
import os

import jax
import numpy as np
import pytest
from data_corpus import train_tokenizer, write_corpus

from llada_jax import diffusion
from llada_jax.config import default_config
from llada_jax.data import pipeline, prepare, store, tokenizer

L = 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipe"))
    tok, docs = train_tokenizer(root)
    out = os.path.join(root, "prepared")
    prepare.prepare(",".join(docs), out, tok, workers=0, val_fraction=0.0, chunk=64, log=lambda *_: None)
    more = write_corpus(os.path.join(root, "corpus2"), seed=1, n_text=20, n_jsonl=5)
    out2 = os.path.join(root, "prepared2")
    prepare.prepare(",".join(more), out2, tok, workers=0, val_fraction=0.0, chunk=64, log=lambda *_: None)
    return tok, out, out2


def _cfg(tok, path, **data):
    cfg = default_config()
    tokenizer.apply_to_config(tok, cfg)
    cfg.data.source, cfg.data.path = "store", path
    cfg.train.seq_len, cfg.train.global_batch = L, 8
    cfg.data.threads = 0
    for k, v in data.items():
        cfg.data[k] = v
    return cfg


def _windows(path):
    s = store.TokenStore(path)
    n = s.n_tokens // L
    w = s.read(0, n * L).reshape(n, L).astype(np.int32)
    index = {row.tobytes(): i for i, row in enumerate(w)}
    assert len(index) == n  # windows are distinguishable by content
    return w, index


def _take(source, n):
    return [next(source) for _ in range(n)]


def test_batches_are_shuffled_store_windows_covering_each_epoch_once(prepared):
    tok, path, _ = prepared
    w, index = _windows(path)
    n = len(w)
    src = pipeline.make_pretrain_source(_cfg(tok, path), 0, 1)
    steps = -(-2 * n // 8)
    rows = np.concatenate([b["tokens"] for b in _take(src, steps)])
    ids = np.array([index[r.tobytes()] for r in rows])  # every row is a window of the store
    assert sorted(ids[:n]) == list(range(n)) and sorted(ids[n:2 * n]) == list(range(n))  # each epoch: all, once
    assert not np.array_equal(ids[:n], np.arange(n))  # shuffled ...
    assert not np.array_equal(ids[:n], ids[n:2 * n])  # ... with a new permutation each epoch
    assert rows.dtype == np.int32


def test_same_seed_same_batches_other_seed_others(prepared):
    tok, path, _ = prepared
    a = _take(pipeline.make_pretrain_source(_cfg(tok, path), 0, 1), 3)
    b = _take(pipeline.make_pretrain_source(_cfg(tok, path), 0, 1), 3)
    c = _take(pipeline.make_pretrain_source(_cfg(tok, path, seed=5), 0, 1), 3)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    assert not all(np.array_equal(x["tokens"], z["tokens"]) for x, z in zip(a, c))


def test_restored_iterator_continues_exactly_even_with_other_host_counts(prepared):
    tok, path, _ = prepared
    cfg = _cfg(tok, path)
    src = pipeline.make_pretrain_source(cfg, 0, 1)
    _take(src, 5)
    state = src.get_state()
    assert state == {"row": 40}
    want = _take(src, 4)
    again = pipeline.make_pretrain_source(cfg, 0, 1)
    again.set_state(state)
    for x, y in zip(want, _take(again, 4)):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    hosts = [pipeline.make_pretrain_source(cfg, h, 2) for h in range(2)]
    for h in hosts:
        h.set_state(state)
    parts = [_take(h, 4) for h in hosts]
    for s in range(4):  # two hosts after restore: their rows stacked are the one-host global batch
        np.testing.assert_array_equal(np.concatenate([parts[0][s]["tokens"], parts[1][s]["tokens"]]),
                                      want[s]["tokens"])


def test_two_hosts_read_disjoint_windows_that_cover_the_epoch(prepared):
    tok, path, _ = prepared
    w, index = _windows(path)
    n = len(w)
    cfg = _cfg(tok, path)
    steps = -(-n // 8)
    seen = {}
    for h in range(2):
        src = pipeline.make_pretrain_source(cfg, h, 2)
        seen[h] = [[index[r.tobytes()] for r in b["tokens"]] for b in _take(src, steps)]
        assert all(len(b) == 4 for b in seen[h])  # the per-host batch is global_batch / process_count
    # global row order: step by step, host 0's rows then host 1's; the first n rows are the first epoch
    order = [(h, i) for s in range(steps) for h in range(2) for i in seen[h][s]][:n]
    assert sorted(i for _, i in order) == list(range(n))  # together they cover the epoch, each window once
    mine = [{i for h, i in order if h == host} for host in range(2)]
    assert not mine[0] & mine[1] and len(mine[0]) >= n // 2 - 4


@pytest.mark.slow
@pytest.mark.parametrize("threads,workers", [(2, 0), (0, 1), (2, 2)])
def test_batches_do_not_depend_on_prefetch_threads_or_worker_processes(prepared, threads, workers):
    tok, path, _ = prepared
    base = _take(pipeline.make_pretrain_source(_cfg(tok, path, document_mask=True), 0, 1), 6)
    src = pipeline.make_pretrain_source(_cfg(tok, path, document_mask=True, threads=threads, workers=workers), 0, 1)
    src.set_state({"row": 0})
    got = _take(src, 6)
    src.close()
    for x, y in zip(base, got):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        np.testing.assert_array_equal(x["segment_ids"], y["segment_ids"])


def test_segment_ids_follow_document_boundaries(prepared):
    tok, path, _ = prepared
    s = store.TokenStore(path)
    src = pipeline.make_pretrain_source(_cfg(tok, path, document_mask=True), 0, 1)
    b = next(src)
    assert b["segment_ids"].dtype == np.int32 and b["segment_ids"].shape == (8, L)
    starts = set(np.asarray(s.offsets).tolist())
    _, index = _windows(path)
    for row, seg in zip(b["tokens"], b["segment_ids"]):
        first = index[row.tobytes()] * L
        want = np.cumsum([0] + [int(first + j in starts) for j in range(1, L)])
        np.testing.assert_array_equal(seg, want)
        # a new segment starts right after each EOS (documents are joined with EOS)
        np.testing.assert_array_equal(np.diff(seg), (row[:-1] == tok.eos_id).astype(np.int32))
    assert "segment_ids" not in next(pipeline.make_pretrain_source(_cfg(tok, path), 0, 1))


def test_weighted_mixture_of_two_stores(prepared):
    tok, path, path2 = prepared
    n = [store.TokenStore(p).n_tokens // L for p in (path, path2)]
    rows = pipeline.window_rows(n, L, 0, [3.0, 1.0])
    k = np.array([rows[i][0] for i in range(400)])
    assert (k == 0).sum() == 300
    src = pipeline.make_pretrain_source(_cfg(tok, f"{path},{path2}", weights="3,1"), 0, 1)
    w2, index2 = _windows(path2)
    _, index1 = _windows(path)
    rows = np.concatenate([b["tokens"] for b in _take(src, 10)])
    from_2 = sum(r.tobytes() in index2 for r in rows)
    assert all(r.tobytes() in index1 or r.tobytes() in index2 for r in rows) and from_2 == 20


def test_store_tokenizer_mismatch_is_a_clear_error(prepared):
    tok, path, _ = prepared
    cfg = _cfg(tok, path)
    cfg.model.vocab_size = 100
    with pytest.raises(tokenizer.TokenizerError, match="--config.model.vocab_size=400"):
        pipeline.make_pretrain_source(cfg, 0, 1)
    cfg = _cfg(tok, path)
    cfg.train.seq_len = 10 ** 7
    with pytest.raises(pipeline.PipelineError, match="fewer than train.seq_len"):
        pipeline.make_pretrain_source(cfg, 0, 1)
    with pytest.raises(store.StoreError, match="llada data prepare"):
        pipeline.make_pretrain_source(_cfg(tok, path + "-missing"), 0, 1)


def test_random_length_fraction_and_uniformity():
    """The 1% random length (drawn by the trainer, not the pipeline): over 200k sequences the cut fraction is within
    5 standard errors of 1%, and the cut lengths are uniform on {1..L}."""
    n, seq_len, prob = 200_000, 4096, 0.01
    lengths = np.asarray(diffusion.random_lengths(jax.random.key(0), n, seq_len, prob))
    assert lengths.min() >= 1 and lengths.max() <= seq_len
    q = prob * (1 - 1 / seq_len)  # a cut to exactly L is indistinguishable from no cut
    cut = lengths[lengths < seq_len]
    assert abs(len(cut) / n - q) < 5 * np.sqrt(q * (1 - q) / n)
    # uniform on {1..L-1} given a visible cut: mean L/2, and each quarter holds a quarter
    sd = np.sqrt(((seq_len - 1) ** 2 - 1) / 12)
    assert abs(cut.mean() - seq_len / 2) < 5 * sd / np.sqrt(len(cut))
    quarters = np.histogram(cut, bins=4, range=(1, seq_len))[0] / len(cut)
    assert np.all(np.abs(quarters - 0.25) < 5 * np.sqrt(0.25 * 0.75 / len(cut)))


@pytest.mark.slow
def test_train_end_to_end_on_a_store(prepared, tmp_path, monkeypatch):
    """`llada train --config=configs/pretrain_store.py --config.data.path=...`: the trainer sees the pipeline's
    batches and the loss is finite."""
    from llada_jax import cli, train
    tok, path, _ = prepared
    seen = []
    make = train.make_data

    def recording(cfg):
        src = make(cfg)
        return _Recorder(src, seen)

    monkeypatch.setattr(train, "make_data", recording)
    cli.main(["train", "--config=configs/pretrain_store.py", f"--config.data.path={path}",
              "--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
              "--config.model.n_kv_heads=1", "--config.model.ffn_dim=64", "--config.model.vocab_size=400",
              "--config.train.seq_len=32", "--config.train.global_batch=8", "--config.train.steps=3",
              "--config.train.log_every=1", "--config.data.threads=0", f"--workdir={tmp_path / 'run'}"])
    cfg = default_config()
    tokenizer.apply_to_config(tok, cfg)
    cfg.data.source, cfg.data.path, cfg.train.seq_len, cfg.train.global_batch = "store", path, 32, 8
    direct = pipeline.make_pretrain_source(cfg, 0, 1)
    assert len(seen) == 3
    for s in range(3):
        np.testing.assert_array_equal(seen[s]["tokens"], direct.dataset()[s]["tokens"])
    import json
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)


class _Recorder:
    def __init__(self, src, seen):
        self.src, self.seen = src, seen

    def __iter__(self):
        return self

    def __next__(self):
        b = next(self.src)
        self.seen.append(b)
        return b

    def get_state(self):
        return self.src.get_state()

    def set_state(self, state):
        self.src.set_state(state)
