"""Sentencepiece tokenizers: train one on raw text, or load a `.model`; ids by role (docs/architecture.md).

A tokenizer we train reserves its special pieces at the ids of the default config's `tokens.*`, so a model trained
from scratch needs only `model.vocab_size` set:

    0 <|endoftext|> (EOS, also padding)   1 <|startoftext|> (BOS)   2 <|mdm_mask|>   3 <|eot_id|>
    4 <|start_header_id|>   5 <|end_header_id|>   6 <unk>   7.. byte-fallback pieces, then the learned pieces

The specials are control symbols: text that spells "<|endoftext|>" is encoded as ordinary text, never as EOS, so
documents cannot inject special tokens. The text is not normalised (identity rule, whitespace kept, no dummy
prefix) and unknown characters fall back to bytes, so decode(encode(text)) == text.
"""
import hashlib
import os

import numpy as np
import sentencepiece

from llada_jax.data import documents
from llada_jax.errors import LladaError

PIECES = {  # role -> piece name (the released 8B tokenizer's names)
    "eos_id": "<|endoftext|>",
    "bos_id": "<|startoftext|>",
    "mask_id": "<|mdm_mask|>",
    "eot_id": "<|eot_id|>",
    "start_header_id": "<|start_header_id|>",
    "end_header_id": "<|end_header_id|>",
}
REQUIRED = ("mask_id", "eos_id")  # pre-training needs these; the chat roles are needed only for SFT / chat
CHAT_ROLES = ("bos_id", "eot_id", "start_header_id", "end_header_id")


class TokenizerError(LladaError):
    """A tokenizer file is missing, or lacks a piece a role needs; the message says how to fix it."""


class Tokenizer:
    """A sentencepiece model with ids by role: mask_id, bos_id, eos_id, pad_id (= eos_id), eot_id,
    start_header_id, end_header_id (-1 when the model has no such piece), vocab_size."""

    def __init__(self, model_proto, path="<memory>"):
        self.path = path
        self.model_proto = model_proto
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"tokenizer {path} cannot be read ({str(e).splitlines()[0][:120]}): the file is "
                                 f"damaged or not a sentencepiece model. Restore it (it is the run's data.tokenizer, "
                                 f"config.json), or pass --tokenizer=PATH of the one the run was trained "
                                 f"with.") from None
        self.vocab_size = self.sp.vocab_size()
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        ids = {role: self._find(role) for role in PIECES}
        missing = [f"{role[:-3]} ({PIECES[role]})" for role in REQUIRED if ids[role] < 0]
        if missing:
            raise TokenizerError(
                f"tokenizer {path} has no piece for {', '.join(missing)}: a masked-diffusion model needs a mask "
                f"token and an end-of-text token. Train a tokenizer with `llada data tokenizer` (it reserves all "
                f"special pieces), or retrain yours with control_symbols={[PIECES[r] for r in REQUIRED]}.")
        for role, i in ids.items():
            setattr(self, role, i)
        self.pad_id = self.eos_id  # EOS doubles as padding, as in the release

    def _find(self, role):
        i = self.sp.piece_to_id(PIECES[role])
        if self.sp.id_to_piece(i) == PIECES[role]:
            return i
        # A model trained elsewhere may name BOS/EOS differently ("<s>", "</s>"); sentencepiece knows them.
        fallback = {"bos_id": self.sp.bos_id, "eos_id": self.sp.eos_id}.get(role)
        return fallback() if fallback else -1

    @classmethod
    def load(cls, path):
        """A sentencepiece `.model`, or a `tokenizer.json` (JsonTokenizer: an imported model's vocabulary)."""
        if not os.path.exists(path):
            raise TokenizerError(f"tokenizer model {path!r} does not exist; train one with "
                                 f"`llada data tokenizer --input=FILES --out=PREFIX --vocab_size=N`.")
        with open(path, "rb") as f:
            return (JsonTokenizer if path.endswith(".json") else cls)(f.read(), path)

    def special_ids(self):
        return {role: getattr(self, role) for role in (*PIECES, "pad_id")}

    def require_chat(self):
        """Raises unless the chat-template pieces exist (SFT and chat need them)."""
        missing = [PIECES[r] for r in CHAT_ROLES if getattr(self, r) < 0]
        if missing:
            raise TokenizerError(f"tokenizer {self.path} lacks the chat pieces {missing}; SFT needs them. Train a "
                                 f"tokenizer with `llada data tokenizer` or add them as control symbols.")

    def encode(self, texts):
        """str -> list of ids; list of str -> list of lists (batched in C++)."""
        return self.sp.encode(texts)

    def decode(self, ids, keep_special=False):
        """ids (one sequence, or a batch: a list of sequences / a 2-D array) -> str or list of str.
        Special pieces decode to nothing unless keep_special, which writes their names."""
        arr = ids.tolist() if isinstance(ids, np.ndarray) else ids
        if arr and isinstance(arr[0], (list, tuple, np.ndarray)):
            return [self.decode(row, keep_special) for row in arr]
        arr = [int(i) for i in arr]
        if not keep_special:
            return self.sp.decode(arr)
        out, run = [], []
        for i in arr:
            if self.sp.is_control(i):
                out += [self.sp.decode(run), self.sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join(out + [self.sp.decode(run)])


class JsonTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` read by the `tokenizers` library (`llada convert from-gguf` writes one), with
    Tokenizer's interface: token stores in an imported model's own vocabulary. Roles from the same piece names
    (SmolLM2: EOS = <|endoftext|>, its documents' separator); only EOS is required, as documents end with it (the
    mask token of an adapted model is its config's tokens.mask_id). Special tokens in the text stay text."""

    def __init__(self, model_proto, path="<memory>"):
        try:
            from tokenizers import Tokenizer as HFTokenizer  # the `gguf` extra
        except ImportError:
            raise TokenizerError(f"{path} is a tokenizer.json file, which needs the tokenizers library: pip install "
                                 f"'llada-jax[gguf]'.") from None
        self.path, self.model_proto = path, model_proto
        try:
            self.tok = HFTokenizer.from_str(model_proto.decode())
        except Exception as e:  # tokenizers raises its own Exception for a damaged or foreign JSON file
            raise TokenizerError(f"tokenizer {path} cannot be read ({str(e).splitlines()[0][:120]}): it is not a "
                                 f"tokenizers tokenizer.json.") from None
        self.tok.encode_special_tokens = True  # documents cannot inject special tokens
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        for role, piece in PIECES.items():
            i = self.tok.token_to_id(piece)
            setattr(self, role, -1 if i is None else i)
        if self.eos_id < 0:
            raise TokenizerError(f"tokenizer {path} has no {PIECES['eos_id']} piece, which ends every document of a "
                                 f"token store.")
        self.pad_id = self.eos_id

    def encode(self, texts):
        """str -> list of ids; list of str -> list of lists. A special token's spelling in the text is
        encoded as text (as sentencepiece's control symbols are)."""
        if isinstance(texts, str):
            return self.encode([texts])[0]
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode_template(self, text):
        """The ids of a chat template's rendering: the special tokens it names by text become theirs."""
        self.tok.encode_special_tokens = False
        try:
            return self.tok.encode(text, add_special_tokens=False).ids
        finally:
            self.tok.encode_special_tokens = True

    def decode(self, ids, keep_special=False):
        arr = ids.tolist() if isinstance(ids, np.ndarray) else ids
        if arr and isinstance(arr[0], (list, tuple, np.ndarray)):
            return [self.decode(row, keep_special) for row in arr]
        return self.tok.decode([int(i) for i in arr], skip_special_tokens=not keep_special)


def apply_to_config(tokenizer, cfg):
    """Writes the tokenizer's ids into `cfg.tokens.*` and its size into `cfg.model.vocab_size`; returns cfg."""
    for role, i in tokenizer.special_ids().items():
        if i >= 0:
            cfg.tokens[role] = int(i)
    cfg.model.vocab_size = int(tokenizer.vocab_size)
    return cfg


def check_config(ids, vocab_size, cfg, what):
    """Raises unless `cfg` agrees with a tokenizer's `ids` (role -> id) and fits its vocabulary."""
    wrong = [f"tokens.{r}={cfg.tokens[r]} but {what} has {i}" for r, i in ids.items()
             if i >= 0 and r in cfg.tokens and cfg.tokens[r] != i]
    if cfg.model.vocab_size < vocab_size:
        wrong.append(f"model.vocab_size={cfg.model.vocab_size} is smaller than its {vocab_size} pieces")
    if wrong:
        fix = " ".join(f"--config.tokens.{r}={i}" for r, i in ids.items() if i >= 0 and r in cfg.tokens)
        raise TokenizerError(f"the config does not match {what}: {'; '.join(wrong)}. Fix: {fix} "
                             f"--config.model.vocab_size={vocab_size} (or llada_jax.data.tokenizer.apply_to_config).")


def _training_lines(paths, text_field):
    for path in paths:
        for _, text in documents.iter_documents(path, text_field):
            yield from (line for line in text.split("\n") if line.strip())


def train(inputs, out_prefix, vocab_size, model_type="bpe", text_field="text", byte_fallback=True,
          max_sentences=5_000_000, character_coverage=0.9995, log=print):
    """Trains a sentencepiece model on text / JSONL (optionally .gz) files; writes PREFIX.model and PREFIX.vocab
    and returns the loaded Tokenizer."""
    if model_type not in ("bpe", "unigram"):
        raise TokenizerError(f"model_type={model_type!r}; expected 'bpe' or 'unigram'.")
    paths = list(inputs)
    if not paths:
        raise TokenizerError("no input files; pass --input=FILE[,FILE...] (globs allowed).")
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    ids = {"eos_id": 0, "bos_id": 1, "unk_id": len(PIECES), "pad_id": -1}
    control = [PIECES[r] for r in ("mask_id", "eot_id", "start_header_id", "end_header_id")]  # ids 2..5
    log(f"training a {model_type} sentencepiece model ({vocab_size} pieces) on {len(paths)} file(s)")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_training_lines(paths, text_field), model_prefix=out_prefix, vocab_size=vocab_size,
        model_type=model_type, bos_piece=PIECES["bos_id"], eos_piece=PIECES["eos_id"], control_symbols=control,
        byte_fallback=byte_fallback, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=character_coverage, input_sentence_size=max_sentences, shuffle_input_sentence=True,
        train_extremely_large_corpus=False, minloglevel=2, **ids)
    tok = Tokenizer.load(out_prefix + ".model")
    log(f"wrote {out_prefix}.model: {tok.vocab_size} pieces, sha256 {tok.sha256[:16]}..., ids {tok.special_ids()}")
    return tok
