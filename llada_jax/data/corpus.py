"""`llada data corpus`: a real corpus collected from files on this machine into JSONL documents, split by file.

    llada data corpus --name=python_stdlib --out=data/stdlib          # the Python standard library's source
    llada data corpus --input='~/papers/**/*.txt' --out=data/papers    # any files: one file = one document

One file is one document: a JSONL line {"text": ..., "path": ...} (the path relative to the corpus root). Files
are read in sorted path order and split into train / validation / test by file: a file goes to test when the
first 8 bytes of blake2b("SEED:PATH"), read as a fraction of 2^64, are below test_fraction, to validation when below
test_fraction + val_fraction, else to train. The split of a file depends on its path and the seed only (not on which
other files exist), so test files are never seen in training or tokenizer training. Files that are not UTF-8 or
are empty are skipped and counted. Outputs, each written atomically (corpus.json last, marking completion):

    OUT/train.jsonl  OUT/validation.jsonl  OUT/test.jsonl  OUT/corpus.json (counts, bytes, options)

With a vocabulary size (`--vocab_size=8192`) the corpus is also made ready to train on: a sentencepiece BPE
tokenizer trained on the train split only (OUT/tokenizer.model) and one `llada data prepare` token store per split
(OUT/prepared/{train,validation,test}, every document in the store's train split), which
`configs/text_small.py:OUT` trains on and evaluates with.

A second run with the same options finds corpus.json and changes nothing. `make_choices` builds the multiple-choice
file of function continuations from the test split (see its docstring).
"""
import glob
import hashlib
import json
import os
import re
import sysconfig

import numpy as np

from llada_jax.data import prepare, tokenizer
from llada_jax.errors import LladaError

SPLITS = ("train", "validation", "test")


class CorpusError(LladaError):
    """A corpus that cannot be collected; the message says what was wrong and how to fix it."""


def python_stdlib():
    """(root, relative paths) of the standard library's .py files (site-packages excluded: not the stdlib)."""
    root = sysconfig.get_paths()["stdlib"]
    paths = glob.glob("**/*.py", root_dir=root, recursive=True)
    return root, sorted(p for p in paths if not {"site-packages", "dist-packages"} & set(p.split(os.sep)))


CORPORA = {"python_stdlib": python_stdlib}


def from_globs(patterns):
    """(root, relative paths) of the files matching comma-separated globs; root = their common directory."""
    paths = sorted({os.path.abspath(p) for pat in patterns.split(",") if pat.strip()
                    for p in glob.glob(os.path.expanduser(pat.strip()), recursive=True) if os.path.isfile(p)})
    if not paths:
        raise CorpusError(f"--input={patterns!r} matches no files; pass comma-separated globs such as "
                          f"'data/**/*.txt' (quoted, so the shell does not expand them).")
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return root, [os.path.relpath(p, root) for p in paths]


def split_of(path, seed, val_fraction, test_fraction):
    u = int.from_bytes(hashlib.blake2b(f"{seed}:{path}".encode()).digest()[:8], "little") / 2.0 ** 64
    return "test" if u < test_fraction else "validation" if u < test_fraction + val_fraction else "train"


def _write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def collect(out, name=None, inputs=None, val_fraction=0.05, test_fraction=0.05, seed=0, max_files=0, log=print):
    """Writes OUT/{train,validation,test}.jsonl and OUT/corpus.json (see the module docstring); returns the
    manifest. name: a built-in corpus (CORPORA); inputs: comma-separated globs instead. max_files > 0 keeps an
    evenly spaced subset of that many files (a quick slice; the split rule is unchanged)."""
    if (name is None) == (inputs is None):
        raise CorpusError(f"pass exactly one of --name ({', '.join(CORPORA)}) or --input=GLOBS.")
    if name is not None and name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; built in: {', '.join(CORPORA)} (or --input=GLOBS for any files).")
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CorpusError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: expected fractions with "
                          f"test_fraction > 0 and a sum below 1, e.g. 0.05 and 0.05.")
    root, paths = CORPORA[name]() if name else from_globs(inputs)
    if max_files and len(paths) > max_files:
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, max_files).round().astype(int)]
    options = {"name": name, "input": inputs, "root": root, "val_fraction": val_fraction,
               "test_fraction": test_fraction, "seed": seed, "max_files": max_files,
               "files_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest()}
    manifest_path = os.path.join(out, "corpus.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest["options"] == options:
            log(f"{out} is complete and up to date ({manifest['train']['documents']:,} train files); nothing to do.")
            return manifest
        raise CorpusError(f"{out} already holds a corpus collected with other options or files; choose another "
                          f"--out, or delete {out} to collect it again.")
    os.makedirs(out, exist_ok=True)
    lines = {s: [] for s in SPLITS}
    counts = {s: {"documents": 0, "bytes": 0} for s in SPLITS}
    skipped = {"not_utf8": 0, "empty": 0}
    for i, rel in enumerate(paths):
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        if not text.strip():
            skipped["empty"] += 1
            continue
        split = split_of(rel, seed, val_fraction, test_fraction)
        lines[split].append(json.dumps({"text": text, "path": rel}, ensure_ascii=False) + "\n")
        counts[split]["documents"] += 1
        counts[split]["bytes"] += len(text.encode())
        if (i + 1) % 500 == 0:
            log(f"corpus: {i + 1}/{len(paths)} files read")
    for split in SPLITS:
        _write_atomic(os.path.join(out, f"{split}.jsonl"), "".join(lines[split]))
    manifest = {"options": options, **counts, "skipped": skipped}
    _write_atomic(manifest_path, json.dumps(manifest, indent=2))
    log(f"corpus {name or inputs} -> {out}: " + ", ".join(
        f"{s} {counts[s]['documents']:,} files / {counts[s]['bytes'] / 1e6:.1f} MB" for s in SPLITS)
        + f"; skipped {skipped['not_utf8']} non-UTF-8 and {skipped['empty']} empty files")
    return manifest


def tokenize(out, vocab_size, workers=None, log=print):
    """OUT/tokenizer.model (trained on the train split) and OUT/prepared/SPLIT token stores; each step is skipped
    when already done (prepare itself is resumable and idempotent)."""
    model = os.path.join(out, "tokenizer.model")
    if os.path.exists(model):
        tok = tokenizer.Tokenizer.load(model)
        if tok.vocab_size != vocab_size:
            raise CorpusError(f"{model} has {tok.vocab_size} pieces, not --vocab_size={vocab_size}; delete it (and "
                              f"{os.path.join(out, 'prepared')}) to retrain, or pass --vocab_size={tok.vocab_size}.")
    else:
        tok = tokenizer.train([os.path.join(out, "train.jsonl")], os.path.join(out, "tokenizer"), vocab_size,
                              log=log)
    for split in SPLITS:
        path = os.path.join(out, f"{split}.jsonl")
        small = os.path.getsize(path) < 8 << 20  # starting worker processes costs more than it saves
        prepare.prepare(path, os.path.join(out, "prepared", split), tok, workers=1 if small else workers,
                        val_fraction=0.0, log=log)
    return tok


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows):
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


DEF_LINE = re.compile(r"^[ \t]*(async[ \t]+)?def[ \t]+\w+", re.M)


def make_choices(test_jsonl, tokenizer, n, context_tokens=48, choice_tokens=16, n_choices=4, seed=0):
    """Multiple choice from held-out files: the context is the first `context_tokens` tokens of a function (from
    its `def` line), the right choice the next `choice_tokens` tokens, the others the same span of functions of
    other files. Every choice re-encodes to exactly `choice_tokens` tokens (the tokenizer decodes losslessly), so
    the likelihoods compared are over equally many tokens. Returns up to n dicts {context, choices, answer, path}
    (answer: the index of the right choice, placed at random)."""
    rng = np.random.default_rng(seed)
    spans = []  # (file index, context ids, continuation ids)
    for f, doc in enumerate(read_jsonl(test_jsonl)):
        for m in DEF_LINE.finditer(doc["text"]):
            ids = tokenizer.encode(doc["text"][m.start():m.start() + 64 * (context_tokens + choice_tokens)])
            if len(ids) >= context_tokens + choice_tokens:
                cont = ids[context_tokens:context_tokens + choice_tokens]
                if len(tokenizer.encode(tokenizer.decode(cont))) == choice_tokens:
                    spans.append((f, ids[:context_tokens], cont, doc["path"]))
    if len({s[0] for s in spans}) < n_choices:
        raise CorpusError(f"{test_jsonl} has functions in {len({s[0] for s in spans})} files; multiple choice needs "
                          f"at least {n_choices} (collect more test files: a larger --test_fraction).")
    out = []
    for i in rng.permutation(len(spans)):
        if len(out) == n:
            break
        f, context, cont, path = spans[i]
        others = [j for j in rng.permutation(len(spans)) if spans[j][0] != f][:n_choices - 1]
        choices = [tokenizer.decode(spans[j][2]) for j in others]
        answer = int(rng.integers(n_choices))
        choices.insert(answer, tokenizer.decode(cont))
        if len(set(choices)) == n_choices:
            out.append({"context": tokenizer.decode(context), "choices": choices, "answer": answer, "path": path})
    return out
