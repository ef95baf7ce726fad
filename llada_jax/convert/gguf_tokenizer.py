"""The tokenizer a GGUF file describes in its metadata (docs/conversion.md#from-a-gguf-file), rebuilt as a
`tokenizers` library Tokenizer, which a run saves as tokenizer.json: a GPT-2-style byte-level BPE vocabulary
(`tokenizer.ggml.model` "gpt2": tokens in the byte-to-unicode alphabet, merges, token types) split as llama.cpp
splits text for the file's `tokenizer.ggml.pre`; control tokens become special added tokens, user-defined ones plain
added tokens (both matched whole, as llama.cpp does).
"""
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from llada_jax.convert import ConvertError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types (tokenizer.ggml.token_type; 1 is a normal token)

# Llama 3's split (llama.cpp's LLAMA3 pre-tokenizer; the regex of its tokenizer.json).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's regex, then bytes


# tokenizer.ggml.pre -> (pre-tokenizer, BPE ignore_merges). smollm: every digit alone, then GPT-2's split (llama.cpp's
# SMOLLM regexes; SmolLM2's own tokenizer.json has Digits(individual_digits) + ByteLevel). llama-bpe: Llama 3, whose
# BPE takes a whole word from the vocabulary before merging (ignore_merges).
PRE_TOKENIZERS = {
    "default": lambda: (_gpt2(), False),
    "gpt2": lambda: (_gpt2(), False),
    "smollm": lambda: (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()]), False),
    "llama-bpe": lambda: (pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), True),
}


def check(meta, vocab_size):
    """Every problem with the tokenizer metadata `meta` ({key: value} of the GGUF file) for an embedding of
    `vocab_size` rows, one line each."""
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    problems = []
    if kind != "gpt2":
        problems.append(f"tokenizer.ggml.model={kind!r}: only 'gpt2' (byte-level BPE) vocabularies are supported")
    elif pre not in PRE_TOKENIZERS:
        problems.append(f"tokenizer.ggml.pre={pre!r}: a pre-tokenizer we cannot rebuild (supported: "
                        f"{', '.join(PRE_TOKENIZERS)})")
    if not tokens or "tokenizer.ggml.merges" not in meta:
        problems.append("the file has no tokenizer.ggml.tokens or tokenizer.ggml.merges")
    elif len(tokens) > vocab_size:
        problems.append(f"{len(tokens)} tokens but token_embd.weight has only {vocab_size} rows")
    elif len(set(tokens)) != len(tokens):
        problems.append(f"tokenizer.ggml.tokens repeats {len(tokens) - len(set(tokens))} token(s)")
    bad = [m for m in meta.get("tokenizer.ggml.merges", []) if len(m.split(" ")) != 2]
    if bad:
        problems.append(f"{len(bad)} merges are not two tokens separated by one space (e.g. {bad[0]!r})")
    return problems


def build(meta):
    """The `tokenizers` Tokenizer of GGUF metadata `meta` that passed check(): ids are the file's token ids."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    pre, ignore_merges = PRE_TOKENIZERS[meta.get("tokenizer.ggml.pre", "default")]()
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    if tok.get_vocab_size() != len(tokens):  # an added token the vocabulary lacks would get a new id
        raise ConvertError(f"the tokenizer rebuilt from the file has {tok.get_vocab_size()} ids, not its "
                           f"{len(tokens)} tokens; the vocabulary is inconsistent.")
    return tok
