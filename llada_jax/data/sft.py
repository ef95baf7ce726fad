"""Supervised fine-tuning data: chat JSONL -> single-turn examples in the chat template (docs/architecture.md).

Input lines: {"messages": [{"role": ..., "content": ...}, ...]} (multi-turn) or {"prompt": ..., "response": ...}.
Template: data/chat.py's built-in (BOS once, then per message its header, its stripped content and `<|eot_id|>`), or
the model's own Jinja template of data.chat_template (e.g. ChatML; the answer is then what the assistant message
adds to the rendering, its end of turn included). A dialogue
with n assistant messages becomes n examples: the prompt holds every earlier message and ends with the assistant
header and "\\n\\n"; the answer is that assistant message followed by `<|eot_id|>`, then EOS
padding up to seq_len. The padding counts as answer (the SFT loss in diffusion.py masks and trains on it).

Over-long examples (prompt + answer > seq_len): data.sft_overlong="drop" drops them; "truncate" cuts the answer's
tail (its `<|eot_id|>` may go), or drops the example when the prompt leaves no room for an answer token. Both counts
are reported. The examples live in memory (flat arrays), tokenized once when the source is built.

Batches: examples are shuffled (a new permutation each epoch) and served by pipeline.HostBatches, so the
host/step/state contract is that of the pre-training pipeline; a batch carries `tokens` and `prompt_lengths`.
"""
import json

import numpy as np

from llada_jax.data import chat, documents, pipeline, tokenizer as tokenizer_lib
from llada_jax.errors import LladaError


class SFTError(LladaError):
    """Malformed SFT data or options; the message names file and line."""


def parse_dialogue(obj, where="<input>"):
    """A JSON object -> [(role, content), ...] with at least one assistant message."""
    if isinstance(obj, dict) and "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise SFTError(f"{where}: 'messages' must be a list of {{\"role\": str, \"content\": str}} objects.")
        turns = [(m["role"], m["content"]) for m in msgs]
    elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        turns = [("user", obj["prompt"]), ("assistant", obj["response"])]
    else:
        raise SFTError(f"{where}: expected {{\"messages\": [...]}} or {{\"prompt\": str, \"response\": str}}.")
    if not any(role == "assistant" for role, _ in turns):
        raise SFTError(f"{where}: the dialogue has no assistant message, so nothing to train on.")
    return turns


def render(turns, tok):
    """[(role, content)] -> [(prompt ids, answer ids)], one pair per assistant message."""
    texts = sorted({r for r, _ in turns} | {c.strip() for _, c in turns} | {"\n\n"})
    encode = dict(zip(texts, tok.encode(texts))).__getitem__  # every distinct text encoded once
    out, context = [], [tok.bos_id]
    for role, content in turns:
        head, body = chat.message(role, content, encode, tok)
        if role == "assistant":
            out.append((context + head, body))
        context = context + head + body
    return out


class Examples:
    """Flat storage of tokenized examples: example i is tokens[offsets[i]:offsets[i + 1]], its prompt the first
    prompt_lengths[i] of them."""

    def __init__(self, pairs, seq_len, overlong="drop"):
        if overlong not in ("drop", "truncate"):
            raise SFTError(f"data.sft_overlong={overlong!r}; expected 'drop' or 'truncate'.")
        seqs, prompts = [], []
        self.dropped = self.truncated = 0
        for prompt, answer in pairs:
            if len(prompt) + len(answer) > seq_len:
                if overlong == "drop" or len(prompt) >= seq_len:
                    self.dropped += 1
                    continue
                answer = answer[: seq_len - len(prompt)]
                self.truncated += 1
            seqs.append(prompt + answer)
            prompts.append(len(prompt))
        self.seq_len = seq_len
        self.prompt_lengths = np.asarray(prompts, np.int32)
        self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
        self.tokens = np.asarray([t for s in seqs for t in s], np.int32)

    def __len__(self):
        return len(self.prompt_lengths)


def load(paths, tok, seq_len, overlong="drop", template=None):
    """JSONL files -> Examples; malformed lines raise SFTError with file and line. template: a model's own
    chat.Template (its renderings encoded with tok.encode_template), else the built-in template."""
    if template is None:
        tok.require_chat()
    elif not hasattr(tok, "encode_template"):
        raise SFTError(f"data.chat_template={template.path} writes special tokens by name, which only a tokenizer.json "
                       f"tokenizer parses; data.tokenizer={tok.path} is not one.")
    pairs = []
    for path in paths:
        for n, raw in documents.iter_raw_documents(path) if documents.is_jsonl(path) else _not_jsonl(path):
            where = f"{path}:{n}"
            try:
                obj = json.loads(raw[0].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SFTError(f"{where}: not a valid UTF-8 JSON line ({e}).") from None
            turns = parse_dialogue(obj, where)
            pairs += template.pairs(turns, tok.encode_template) if template else render(turns, tok)
    return Examples(pairs, seq_len, overlong)


def _not_jsonl(path):
    raise SFTError(f"{path}: SFT data must be JSONL (.jsonl / .json / .ndjson, optionally .gz).")


class ReadExamples:
    """Example indices -> {'tokens': [n, L] int32 padded with EOS, 'prompt_lengths': [n] int32}."""

    def __init__(self, examples, pad_id):
        self.ex, self.pad_id = examples, pad_id

    def __call__(self, idx):
        idx = np.asarray(idx).reshape(-1)
        tokens = np.full((len(idx), self.ex.seq_len), self.pad_id, np.int32)
        for row, i in enumerate(idx):
            seq = self.ex.tokens[self.ex.offsets[i]: self.ex.offsets[i + 1]]
            tokens[row, : len(seq)] = seq
        return {"tokens": tokens, "prompt_lengths": self.ex.prompt_lengths[idx]}


def make_sft_source(cfg, process_index=None, process_count=None, log=print):
    """`data.source="sft"`: SFT batches from the JSONL files in data.path with the tokenizer data.tokenizer."""
    d = cfg.data
    if not d.tokenizer:
        raise SFTError("data.source='sft' needs a tokenizer: --config.data.tokenizer=PATH.model")
    tok = tokenizer_lib.Tokenizer.load(d.tokenizer)
    tokenizer_lib.check_config(tok.special_ids(), tok.vocab_size, cfg, f"the tokenizer {d.tokenizer}")
    paths = documents.expand_inputs(pipeline.parse_list(d.path, "data.path"))
    template = chat.Template(d.chat_template) if d.chat_template else None
    ex = load(paths, tok, cfg.train.seq_len, d.sft_overlong, template)
    if not len(ex):
        raise SFTError(f"no SFT example fits train.seq_len={cfg.train.seq_len} ({ex.dropped} dropped as too long); "
                       f"raise --config.train.seq_len or use --config.data.sft_overlong=truncate.")
    log(f"sft: {len(ex):,} examples from {len(paths)} file(s); {ex.dropped} dropped and {ex.truncated} truncated as "
        f"longer than {cfg.train.seq_len} tokens")
    grain = pipeline._grain()
    rows = grain.MapDataset.range(len(ex)).shuffle(pipeline.derive_seed(pipeline.data_seed(cfg))).repeat()
    source = pipeline.HostBatches(rows, ReadExamples(ex, cfg.tokens.pad_id), cfg.train.global_batch,
                                  process_index, process_count, d.threads, d.workers, d.prefetch)
    source.examples = ex
    return source
