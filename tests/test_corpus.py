"""The real-text corpus: collection and split by file, tokenizer + token stores, a few training steps of
configs/text_small.py, the multiple-choice file, and the exact autoregressive perplexity."""
import json
import math
import os

import jax
import numpy as np
import pytest

from llada_jax import cli, config as config_lib, evaluate, likelihood, model as model_lib, train
from llada_jax.data import corpus, store, tokenizer


@pytest.fixture(scope="module")
def stdlib_slice(tmp_path_factory):
    """120 files of this Python's standard library, with a 600-piece tokenizer and a store per split."""
    out = str(tmp_path_factory.mktemp("corpus"))
    assert cli.main(["data", "corpus", "--name=python_stdlib", f"--out={out}", "--max_files=120",
                     "--val_fraction=0.1", "--test_fraction=0.2", "--vocab_size=600"]) in (0, None)
    return out


def test_split_by_file_is_deterministic_and_disjoint(stdlib_slice):
    docs = {s: corpus.read_jsonl(os.path.join(stdlib_slice, f"{s}.jsonl")) for s in corpus.SPLITS}
    paths = {s: [d["path"] for d in docs[s]] for s in corpus.SPLITS}
    assert all(paths.values()) and not (set(paths["train"]) & set(paths["test"]))
    assert not (set(paths["train"]) & set(paths["validation"])) and not (set(paths["validation"]) & set(paths["test"]))
    manifest = json.load(open(os.path.join(stdlib_slice, "corpus.json")))
    assert sum(manifest[s]["documents"] for s in corpus.SPLITS) + sum(manifest["skipped"].values()) == 120
    for s in corpus.SPLITS:  # the rule of the module docstring, recomputed from the hash
        for p in paths[s]:
            u = int.from_bytes(__import__("hashlib").blake2b(f"0:{p}".encode()).digest()[:8], "little") / 2 ** 64
            assert s == ("test" if u < 0.2 else "validation" if u < 0.3 else "train")
        assert paths[s] == sorted(paths[s])
    root = manifest["options"]["root"]
    assert all(open(os.path.join(root, d["path"]), encoding="utf-8").read() == d["text"] for d in docs["test"])
    # a second run changes nothing; other options into the same directory fail clearly
    assert corpus.collect(stdlib_slice, "python_stdlib", max_files=120, val_fraction=0.1, test_fraction=0.2,
                          log=lambda *a: None) == manifest
    with pytest.raises(corpus.CorpusError, match="other options"):
        corpus.collect(stdlib_slice, "python_stdlib", max_files=121, log=lambda *a: None)


def test_inputs_and_errors(tmp_path):
    for i in range(6):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}\n")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    m = corpus.collect(str(tmp_path / "out"), inputs=str(tmp_path / "*.txt"), test_fraction=0.5,
                       log=lambda *a: None)
    assert m["skipped"] == {"not_utf8": 1, "empty": 0}
    assert sum(m[s]["documents"] for s in corpus.SPLITS) == 6
    with pytest.raises(corpus.CorpusError, match="matches no files"):
        corpus.collect(str(tmp_path / "o2"), inputs=str(tmp_path / "*.nothing"))
    with pytest.raises(corpus.CorpusError, match="unknown corpus 'wiki'"):
        corpus.collect(str(tmp_path / "o3"), name="wiki")
    with pytest.raises(SystemExit, match="exactly one of --name"):
        cli.main(["data", "corpus", f"--out={tmp_path / 'o4'}"])


def test_stores_hold_each_split_and_the_tokenizer_saw_only_train(stdlib_slice):
    tok = tokenizer.Tokenizer.load(os.path.join(stdlib_slice, "tokenizer.model"))
    assert tok.vocab_size == 600
    for s in corpus.SPLITS:
        st = store.TokenStore(os.path.join(stdlib_slice, "prepared", s))
        docs = corpus.read_jsonl(os.path.join(stdlib_slice, f"{s}.jsonl"))
        assert st.n_docs == len(docs)
        assert tok.decode(st.document(0)) == docs[0]["text"]  # lossless, in file order
    meta = json.load(open(os.path.join(stdlib_slice, "prepared", "train", "metadata.json")))
    assert [x["path"] for x in meta["sources"]] == [os.path.join(stdlib_slice, "train.jsonl")]


def test_choices_are_well_formed_and_from_test_files(stdlib_slice, tmp_path):
    out = str(tmp_path / "mc.jsonl")
    tok_path = os.path.join(stdlib_slice, "tokenizer.model")
    assert cli.main(["data", "choices", f"--corpus={stdlib_slice}", f"--tokenizer={tok_path}", f"--out={out}",
                     "--n=20", "--context_tokens=24", "--choice_tokens=8"]) in (0, None)
    rows = evaluate.load_jsonl(out)
    tok = tokenizer.Tokenizer.load(tok_path)
    test_docs = {d["path"]: d["text"] for d in corpus.read_jsonl(os.path.join(stdlib_slice, "test.jsonl"))}
    train_paths = {d["path"] for d in corpus.read_jsonl(os.path.join(stdlib_slice, "train.jsonl"))}
    assert len(rows) == 20
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["answer"] < 4
        assert r["path"] in test_docs and r["path"] not in train_paths
        assert r["context"] + r["choices"][r["answer"]] in test_docs[r["path"]]  # the real continuation
        assert r["context"].lstrip().startswith(("def ", "async def"))
        assert all(len(tok.encode(c)) == 8 for c in r["choices"])


@pytest.mark.slow
def test_text_small_trains_on_the_store_and_scores_heldout_text(stdlib_slice, tmp_path):
    cfg = config_lib.build_config(f"configs/text_small.py:{stdlib_slice},mdm,s", [
        ("model.d_model", "64"), ("model.n_layers", "2"), ("model.n_heads", "2"), ("model.n_kv_heads", "2"),
        ("model.ffn_dim", "128"), ("train.seq_len", "64"), ("train.global_batch", "8"), ("train.steps", "6"),
        ("train.log_every", "3")])
    assert cfg.model.vocab_size == 600 and cfg.data.tokenizer.endswith("tokenizer.model")
    lines = []
    state, _ = train.train(cfg, str(tmp_path / "run"), log=lines.append)
    losses = [json.loads(x)["loss"] for x in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in x]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    held = evaluate.heldout_tokens(cfg, 4)
    val = store.TokenStore(os.path.join(stdlib_slice, "prepared", "validation"))
    np.testing.assert_array_equal(held[0], val.read(0, 64))  # eval.heldout: the validation store, from its start


@pytest.mark.slow
def test_ar_perplexity_is_the_exact_causal_nll(tiny_cfg):
    """ar_perplexity = the mean of the token-by-token -log p(x_i | x_<i) (positions from `start` on, up to lengths),
    recomputed from the logits of each prefix separately (float64)."""
    tiny_cfg.objective = "arm"
    model = model_lib.Model(tiny_cfg.model)
    params = model.init(jax.random.key(0))
    tokens = np.random.default_rng(0).integers(6, tiny_cfg.model.vocab_size, (3, 10)).astype(np.int32)
    want = []  # per row, per position i >= 1: -log p(x_i | x_<i) from the prefix alone
    for row in tokens:
        nll = np.zeros(len(row))
        for i in range(1, len(row)):
            logits = np.asarray(model.apply(params, row[None, :i], causal=True)[0, -1], np.float64)
            nll[i] = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[row[i]]
        want.append(nll)
    r = likelihood.ar_perplexity(model, params, tokens, batch_size=2)
    np.testing.assert_allclose(r["nll"], np.mean([w[1:].sum() / 9 for w in want]), rtol=1e-5)
    assert r["tokens"] == 27 and np.isclose(r["ppl"], np.exp(r["nll"]))
    r = likelihood.ar_perplexity(model, params, tokens, start=4, batch_size=2)  # continuations of 4-token prompts
    np.testing.assert_allclose(r["nll"], np.mean([w[4:].sum() / 6 for w in want]), rtol=1e-5)
    r = likelihood.ar_perplexity(model, params, tokens, start=4, lengths=[10, 7, 5], batch_size=2)  # stopped early
    np.testing.assert_allclose(r["nll"], sum(w[4:n].sum() for w, n in zip(want, (10, 7, 5))) / 10, rtol=1e-5)
    assert r["tokens"] == 10
    with pytest.raises(evaluate.EvalError, match="lengths must be 3 values in"):
        likelihood.ar_perplexity(model, params, tokens, start=4, lengths=[10, 4, 5])
    with pytest.raises(evaluate.EvalError, match="start=10 must be in"):
        likelihood.ar_perplexity(model, params, tokens, start=10)
