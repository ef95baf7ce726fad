"""Reading documents from raw text / JSONL files (optionally .gz): used by the tokenizer trainer, `prepare` and SFT.

In a JSONL file (`.jsonl`, `.json`, `.ndjson`, optionally `.gz`) each non-blank line is one JSON object whose
`text_field` is one document. In any other file (plain text, optionally `.gz`) a document is a run of non-blank
lines: blank lines separate documents, the lines keep their newlines, the trailing one is dropped.
"""
import glob
import gzip
import json
import os

from llada_jax.errors import LladaError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


class DocumentError(LladaError):
    """An input pattern matches nothing, or a line is undecodable or malformed; the message names file and line."""


def expand_inputs(patterns):
    """Comma-separated globs (or a list of them) -> sorted, de-duplicated absolute paths; each glob must match."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p]
    paths = []
    for pat in patterns:
        found = sorted(p for p in glob.glob(os.path.expanduser(pat)) if os.path.isfile(p))
        if not found:
            raise DocumentError(f"--input pattern {pat!r} matches no file.")
        paths += found
    return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def is_jsonl(path):
    name = path[:-3] if path.endswith(".gz") else path
    return name.endswith(JSONL_SUFFIXES)


def _open(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_raw_documents(path):
    """(first line number, [raw byte lines]) per document of `path` (see the module docstring)."""
    jsonl = is_jsonl(path)
    with _open(path) as f:
        para, first = [], 0
        for n, line in enumerate(f, 1):
            if not line.strip():
                if para:
                    yield first, para
                    para = []
                continue
            if jsonl:
                yield n, [line]
            else:
                if not para:
                    first = n
                para.append(line)
        if para:
            yield first, para


def decode_document(path, first_line, lines, text_field):
    """Raw lines -> text; raises DocumentError naming file and line for undecodable or malformed input."""
    for k, line in enumerate(lines):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DocumentError(f"{path}:{first_line + k}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not is_jsonl(path):
        return b"".join(lines).decode("utf-8").rstrip("\r\n")
    try:
        obj = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise DocumentError(f"{path}:{first_line}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
        got = type(obj.get(text_field)).__name__ if isinstance(obj, dict) and text_field in obj else "no such field"
        raise DocumentError(f"{path}:{first_line}: expected a JSON object with a string field {text_field!r} "
                           f"(got {got}); pass --text_field=NAME if the text lives elsewhere")
    return obj[text_field]


def iter_documents(path, text_field="text"):
    """(line number, text) per document, raising on the first bad line (used to train tokenizers)."""
    for first, lines in iter_raw_documents(path):
        yield first, decode_document(path, first, lines, text_field)
