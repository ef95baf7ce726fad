"""`llada data prepare`: counts, split, idempotence, resume and error reporting of the token store builder."""
import hashlib
import json
import os

import numpy as np
import pytest
from data_corpus import train_tokenizer

from llada_jax.data import prepare, store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _run(inputs, out, tok, **kw):
    kw.setdefault("workers", 0)
    return prepare.prepare(",".join(inputs), str(out), tok, val_fraction=0.2, chunk=256, log=lambda *_: None, **kw)


def _expected(docs, tok, val_fraction=0.2):
    """The train and val token streams computed directly with the tokenizer, in file order."""
    out = {"train": [], "val": []}
    for path in sorted(docs):
        for text in docs[path]:
            split = "val" if prepare.doc_hash(text) < val_fraction * 2 ** 64 else "train"
            out[split].append(tok.encode(text) + [tok.eos_id])
    return out


def _snapshot(root):
    snap = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            snap[p] = (os.stat(p).st_mtime_ns, hashlib.sha256(open(p, "rb").read()).hexdigest())
    return snap


def test_counts_and_contents_equal_a_direct_tokenization(tmp_path, trained):
    tok, docs = trained
    meta = _run(docs, tmp_path / "out", tok, workers=2)  # real worker processes
    want = _expected(docs, tok)
    assert len(want["val"]) > 0 and len(want["train"]) > 0
    for split in ("train", "val"):
        s = store.TokenStore(str(tmp_path / "out"), split)
        flat = np.concatenate(want[split])
        assert meta[split]["documents"] == s.n_docs == len(want[split])
        assert meta[split]["tokens"] == s.n_tokens == len(flat)
        assert meta[split]["text_tokens"] == len(flat) - len(want[split])
        np.testing.assert_array_equal(s.read(0, s.n_tokens), flat)
        np.testing.assert_array_equal(np.diff(s.offsets), [len(d) for d in want[split]])
        np.testing.assert_array_equal(s.document(1), want[split][1])
    assert meta["tokenizer"]["sha256"] == hashlib.sha256(open(tok.path, "rb").read()).hexdigest()
    assert [x["path"] for x in meta["sources"]] == sorted(docs)
    assert meta["skipped_documents"] == 0 and not os.path.exists(tmp_path / "out" / "shards")
    # the held-out fraction is about val_fraction (48 of 102 documents would be far off)
    assert 0.05 < meta["val"]["documents"] / (meta["val"]["documents"] + meta["train"]["documents"]) < 0.4


def test_second_run_changes_nothing(tmp_path, trained):
    tok, docs = trained
    _run(docs, tmp_path / "out", tok)
    before = _snapshot(tmp_path / "out")
    meta = _run(docs, tmp_path / "out", tok)
    assert _snapshot(tmp_path / "out") == before
    assert meta["train"]["documents"] > 0
    with pytest.raises(prepare.PrepareError, match="other inputs or options"):
        _run(list(docs)[:1], tmp_path / "out", tok)


def test_interrupted_run_resumes_from_committed_shards(tmp_path, trained, monkeypatch):
    tok, docs = trained
    out = tmp_path / "out"

    def crash(*a, **k):
        raise KeyboardInterrupt("simulated interruption before the merge")

    with monkeypatch.context() as m:
        m.setattr(prepare, "_merge", crash)
        with pytest.raises(KeyboardInterrupt):
            _run(docs, out, tok)
    shards = sorted(os.listdir(out / "shards"))
    assert len(shards) == 3 and not os.path.exists(out / "metadata.json")
    os.remove(out / "shards" / shards[1])  # as if the run had died while tokenizing the second file
    (out / "shards" / (shards[1] + ".tmp123")).write_bytes(b"partial")
    kept = {s: os.stat(out / "shards" / s).st_mtime_ns for s in (shards[0], shards[2])}

    encoded = []
    real = prepare.encode_chunk
    monkeypatch.setattr(prepare, "encode_chunk", lambda item: encoded.append(item[1]) or real(item))
    monkeypatch.setattr(prepare.shutil, "rmtree", lambda *a, **k: None)  # keep the shards to inspect them
    meta = _run(docs, out, tok)
    assert set(encoded) == {sorted(docs)[1]}  # only the missing file was tokenized again
    assert {s: os.stat(out / "shards" / s).st_mtime_ns for s in kept} == kept
    assert not any(s.endswith(".tmp123") for s in os.listdir(out / "shards"))
    monkeypatch.undo()
    fresh = _run(docs, tmp_path / "fresh", tok)
    for split in ("train", "val"):
        assert meta[split] == fresh[split]
        a, b = store.TokenStore(str(out), split), store.TokenStore(str(tmp_path / "fresh"), split)
        np.testing.assert_array_equal(a.read(0, a.n_tokens), b.read(0, b.n_tokens))


def test_malformed_lines_are_reported_with_file_and_line(tmp_path, trained):
    tok, _ = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "one fox"}\n{"text": "two dogs"}\n{"text": "broken\n\n'
                    b'{"text": "four"}\n{"text": "caf\xe9"}\n{"body": "no text"}\n{"text": "seven"}\n')
    with pytest.raises(prepare.PrepareError, match=r"bad.jsonl:3: malformed JSON.*--on_error=skip"):
        _run([str(bad)], tmp_path / "stop", tok)
    logged = []
    meta = prepare.prepare(str(bad), str(tmp_path / "skip"), tok, workers=0, val_fraction=0.0, on_error="skip",
                           log=logged.append)
    assert meta["skipped_documents"] == 3 and meta["train"]["documents"] == 4
    assert [e.split(":")[1] for e in meta["errors"]] == ["3", "6", "7"]  # line 4 is blank
    assert "not valid UTF-8" in meta["errors"][1] and "'text'" in meta["errors"][2]
    assert any("skipping" in x and "bad.jsonl:6" in x for x in logged)
    assert any("3 bad lines skipped" in x for x in logged)


def test_cli_prepare(tmp_path, trained):
    from llada_jax import cli
    tok, docs = trained
    cli.main(["data", "prepare", f"--input={os.path.dirname(next(iter(docs)))}/*", f"--out={tmp_path / 'o'}",
              f"--tokenizer={tok.path}", "--workers=0", "--val_fraction=0"])
    meta = json.load(open(tmp_path / "o" / "metadata.json"))
    assert meta["train"]["documents"] == sum(len(v) for v in docs.values()) and meta["val"]["documents"] == 0
    with pytest.raises(SystemExit, match="matches no file"):
        cli.main(["data", "prepare", f"--input={tmp_path}/nothing*", f"--out={tmp_path / 'x'}",
                  f"--tokenizer={tok.path}"])
