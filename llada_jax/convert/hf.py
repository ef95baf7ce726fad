"""Conversion between a run directory (orbax checkpoint + config.json) and the released LLaDA Hugging Face layout;
import of Llama-architecture Hugging Face checkpoints (config.json model_type "llama"), the start of an adaptation
from an autoregressive model (block diffusion, REFERENCE.md section 7).

The HF layout (REFERENCE.md section 2): config.json with the release's keys, safetensors shards with the release's
tensor names (PyTorch Linear weights are [out, in]) plus model.safetensors.index.json, generation_config.json, and
our own `configuration_llada.py` / `modeling_llada.py` / `torch_model.py` for `trust_remote_code=True`.

Both directions stream and follow one plan (copy_plan): chunk-aligned blocks of at most about BLOCK_BYTES are in
memory at a time; our stacked [L, ...] arrays move in groups of layers, one HF tensor per layer. An import first has
orbax write a checkpoint of zero-strided placeholders (its metadata, with one chunk per layer) and then fills the
chunks through tensorstore in a `.partial` directory that is renamed only when complete.

Neither direction needs torch: safetensors is a JSON header plus raw little-endian bytes, read and written here.
"""
import json
import os
import shutil
import time

import ml_dtypes
import numpy as np
import sentencepiece
import tensorstore as ts

from llada_jax import checkpoint, config as config_lib, model as model_lib, rundir
from llada_jax.data.tokenizer import PIECES
from llada_jax.errors import LladaError

HF_FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_files")
TORCH_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_model.py")
PREFIX = "model.transformer."
DTYPES = {"float32": ("F32", np.dtype(np.float32)), "bfloat16": ("BF16", np.dtype(ml_dtypes.bfloat16)),
          "float16": ("F16", np.dtype(np.float16))}
ST_DTYPES = {code: dt for code, dt in DTYPES.values()}
BLOCK_BYTES = checkpoint.CHUNK_BYTES  # the unit of reads and writes that are not per-layer: the checkpoint's chunk


def _choose_dtype(dtype, found, column, where):
    """The --dtype name to write: as given, or the one dtype `where` holds (`found`: DTYPES[...][column] values)."""
    if dtype is None:
        if len(found) != 1:
            raise ConvertError(f"{where} mixes dtypes {sorted(map(str, found))}; pass --dtype.")
        dtype = next(n for n, entry in DTYPES.items() if entry[column] in found)
    if dtype not in DTYPES:
        raise ConvertError(f"--dtype={dtype!r}; expected one of {', '.join(DTYPES)}.")
    return dtype


class ConvertError(LladaError):
    """A checkpoint or HF directory that cannot be converted; the message names the tensor or key at fault."""


# ---------------------------------------------------------------------------------------------------------------
# The name and layout mapping: from the model's parameter table (model.param_shapes: hf_name, hf_shape, hf_linear).

class Tensor:
    """One HF tensor: `name` [hf_shape] <-> our leaf `leaf` (layer `layer` of a stacked leaf, or the whole leaf).

    kind "copy": same layout. kind "linear": our slice reshaped to [in, out] is the transpose of HF's [out, in]."""

    def __init__(self, name, leaf, layer, kind, ours, hf):
        self.name, self.leaf, self.layer, self.kind, self.ours, self.hf = name, leaf, layer, kind, ours, hf

    def to_hf(self, x):
        return x if self.kind == "copy" else np.ascontiguousarray(x.reshape(self.hf[::-1]).T)

    def from_hf(self, x):
        return x if self.kind == "copy" else x.T.reshape(self.ours)


# Llama (transformers' LlamaForCausalLM) has the same block and the same rotate-half RoPE, so only the names
# differ (LLaDA's come from the parameter table); a tied head is the embedding read again.
LLAMA_NAMES = {"wte": "model.embed_tokens.weight", "ln_f": "model.norm.weight", "lm_head": "lm_head.weight",
               **{"blocks." + leaf: "model.layers.{layer}." + name + ".weight" for leaf, name in (
                   ("attn_norm", "input_layernorm"), ("q_proj", "self_attn.q_proj"), ("k_proj", "self_attn.k_proj"),
                   ("v_proj", "self_attn.v_proj"), ("attn_out", "self_attn.o_proj"),
                   ("ff_norm", "post_attention_layernorm"), ("ff_proj", "mlp.gate_proj"),
                   ("up_proj", "mlp.up_proj"), ("ff_out", "mlp.down_proj"))}}
LAYOUTS = ("llada", "llama")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some Llama checkpoints store; RoPE is recomputed


def tensor_table(m, layout="llada", tied=False):
    """{our leaf name ("blocks.q_proj"): [Tensor, ...]} in the table's order; stacked leaves list one per layer.
    layout: "llada" (the release's names) or "llama"; tied: the output head is the embedding matrix (Llama's
    tie_word_embeddings)."""
    hd = model_lib.head_dim(m)
    if layout == "llada" and hd * m.n_heads != m.d_model:
        raise ConvertError(f"model.head_dim={m.head_dim} with d_model={m.d_model} and n_heads={m.n_heads}: the "
                           f"LLaDA HF layout needs head_dim = d_model / n_heads = {m.d_model // m.n_heads}.")
    table = {}
    for leaf, p in model_lib.flat_params(m).items():
        kind = "linear" if p.hf_linear else "copy"
        if layout == "llada":
            name = PREFIX + p.hf_name
        elif leaf in LLAMA_NAMES:
            name = LLAMA_NAMES["wte" if tied and leaf == "lm_head" else leaf]
        else:
            raise ConvertError(f"parameter {leaf} has no counterpart in the Llama layout.")
        if p.axes[0] == "layers":
            table[leaf] = [Tensor(name.format(layer=i), leaf, i, kind, p.shape[1:], p.hf_shape)
                           for i in range(m.n_layers)]
        else:
            table[leaf] = [Tensor(name, leaf, None, kind, p.shape, p.hf_shape)]
    return table


def leaf_shapes(m):
    return {leaf: p.shape for leaf, p in model_lib.flat_params(m).items()}


# ---------------------------------------------------------------------------------------------------------------
# Configs.

# Token roles: our tokens.* key -> its config.json key (the release has the first three; we write all of them) and
# its piece in the released tokenizer (EOS doubles as padding).
TOKEN_KEYS = {"mask_id": "mask_token_id", "eos_id": "eos_token_id", "pad_id": "pad_token_id", "bos_id": "bos_token_id",
              "eot_id": "eot_token_id", "start_header_id": "start_header_token_id",
              "end_header_id": "end_header_token_id"}
ROLE_PIECES = {role: PIECES.get(role, PIECES["eos_id"]) for role in TOKEN_KEYS}


def hf_config(cfg, dtype_name):
    """config.json of the release's layout with this run's sizes and the ids of every token role."""
    m, t = cfg.model, cfg.tokens
    return {
        "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "model_type": "llada",
        "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads, "n_kv_heads": m.n_kv_heads,
        "mlp_hidden_size": m.ffn_dim, "mlp_ratio": 4, "vocab_size": m.vocab_size, "embedding_size": m.vocab_size,
        "max_sequence_length": m.max_seq_len, "rope": True, "rope_theta": float(m.rope_theta),
        "rope_full_precision": True, "rms_norm_eps": float(m.norm_eps), "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "bias_for_layer_norm": False, "block_type": "llama",
        "activation_type": "silu", "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
        "alibi": False, "scale_logits": False, "input_emb_norm": False, "attention_layer_norm": False,
        "flash_attention": False, "block_group_size": 1, "attention_dropout": 0.0, "residual_dropout": 0.0,
        "embedding_dropout": 0.0, "init_fn": "mitchell", "init_std": 0.02,
        **{key: t[role] for role, key in TOKEN_KEYS.items()},
        "use_cache": False, "precision": "amp_bf16", "torch_dtype": dtype_name,
    }


def llama_hf_config(cfg, dtype_name):
    """config.json of transformers' LlamaForCausalLM with this run's sizes (the weights only: a Llama loader runs
    them causally) and the ids of every token role (unknown keys a Llama config keeps, so an import finds them)."""
    m, t = cfg.model, cfg.tokens
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": m.d_model, "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads, "head_dim": model_lib.head_dim(m), "intermediate_size": m.ffn_dim,
        "vocab_size": m.vocab_size, "max_position_embeddings": m.max_seq_len, "rope_theta": float(m.rope_theta),
        "rms_norm_eps": float(m.norm_eps), "tie_word_embeddings": False, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1,
        **{key: t[role] for role, key in TOKEN_KEYS.items()},
        "use_cache": True, "torch_dtype": dtype_name,
    }


# Release features this architecture does not have: key -> the only value we can represent.
_FIXED = {"rope": True, "layer_norm_type": "rms", "block_type": "llama", "activation_type": "silu",
          "include_bias": False, "include_qkv_bias": False, "weight_tying": False, "alibi": False,
          "scale_logits": False, "input_emb_norm": False, "attention_layer_norm": False, "bias_for_layer_norm": False,
          "layer_norm_with_affine": True}


# Llama features this architecture does not have: key -> the only value we can represent.
_LLAMA_FIXED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}


def _llama_rope(hc):
    """(theta, problem or None): transformers 4 writes rope_theta (+ rope_scaling), 5 writes rope_parameters."""
    rope = hc.get("rope_parameters") or hc.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = float(hc.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    return theta, None if kind == "default" else f"rope type {kind!r} (only plain RoPE, 'default', is supported)"


def hf_layout(hc):
    """The tensor layout of an HF config.json dict: "llada" or "llama"."""
    layout = hc.get("model_type", "llada")
    if layout not in LAYOUTS:
        raise ConvertError(f"config.json has model_type={layout!r}; expected 'llada' or 'llama' (a Llama-architecture "
                           f"checkpoint).")
    return layout


def _base_config(hc, base, bad, required, what):
    """`base` (default: the default config) once config.json `hc` has every `required` key and no `bad` entry."""
    missing = [k for k in required if k not in hc]
    if missing:
        bad.append(f"missing keys {', '.join(missing)}")
    if bad:
        raise ConvertError(f"config.json describes {what} this architecture cannot hold: " + "; ".join(bad))
    return base if base is not None else config_lib.default_config()


def llama_config_from_hf(hc, base=None):
    """Our config with the sizes of a Llama config.json: the same Transformer (RMSNorm, rotate-half RoPE with its
    theta, GQA, SiLU-gated MLP); the model it holds is causal (objective=arm), the start of an adaptation."""
    bad = [f"{k}={hc[k]!r} (only {v!r} is supported)" for k, v in _LLAMA_FIXED.items() if hc.get(k, v) != v]
    theta, rope_problem = _llama_rope(hc)
    if rope_problem:
        bad.append(rope_problem)
    cfg = _base_config(hc, base, bad, ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                       "intermediate_size", "vocab_size"), "a Llama")
    m = cfg.model
    m.d_model, m.n_layers, m.n_heads = hc["hidden_size"], hc["num_hidden_layers"], hc["num_attention_heads"]
    m.n_kv_heads = hc.get("num_key_value_heads") or hc["num_attention_heads"]
    m.head_dim = hc.get("head_dim") or -1
    if m.head_dim * m.n_heads == m.d_model:
        m.head_dim = -1
    m.ffn_dim, m.vocab_size = hc["intermediate_size"], hc["vocab_size"]
    m.max_seq_len = hc.get("max_position_embeddings", m.max_seq_len)
    m.rope_theta = theta
    m.norm_eps = float(hc.get("rms_norm_eps", 1e-6))
    cfg.objective = "arm"
    return cfg


def config_from_hf(hc, base=None):
    """Our config with the model sizes of an HF config.json dict `hc`, on top of `base` (ids: token_ids_from_hf)."""
    if hf_layout(hc) == "llama":
        return llama_config_from_hf(hc, base)
    bad = [f"{k}={hc[k]!r} (only {v!r} is supported)" for k, v in _FIXED.items() if k in hc and hc[k] != v]
    cfg = _base_config(hc, base, bad, ("d_model", "n_layers", "n_heads"), "a model")
    m = cfg.model
    m.d_model, m.n_layers, m.n_heads = hc["d_model"], hc["n_layers"], hc["n_heads"]
    m.n_kv_heads = hc.get("n_kv_heads") or hc.get("effective_n_kv_heads") or hc["n_heads"]
    m.head_dim = -1
    m.ffn_dim = hc.get("mlp_hidden_size") or hc.get("mlp_ratio", 4) * hc["d_model"]
    m.vocab_size = hc.get("embedding_size") or hc["vocab_size"]
    m.max_seq_len = hc.get("max_sequence_length", m.max_seq_len)
    m.rope_theta = float(hc.get("rope_theta", m.rope_theta))
    m.norm_eps = float(hc.get("rms_norm_eps", m.norm_eps))
    return cfg


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "added_tokens.json")


def tokenizer_piece_ids(hf_dir):
    """{piece: (id, file)} of the special pieces (ROLE_PIECES) that the tokenizer files of `hf_dir` give an id:
    tokenizer_config.json (added_tokens_decoder), tokenizer.json (added_tokens, model.vocab), added_tokens.json.
    special_tokens_map.json names pieces without ids, so it adds nothing here."""
    wanted, found = set(ROLE_PIECES.values()), {}
    for name in TOKENIZER_FILES:
        path = os.path.join(hf_dir, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            data = json.load(f)
        if name == "tokenizer_config.json":
            pairs = [(tok.get("content"), i) for i, tok in data.get("added_tokens_decoder", {}).items()]
        elif name == "tokenizer.json":
            vocab = (data.get("model") or {}).get("vocab")
            pairs = [(tok.get("content"), tok.get("id")) for tok in data.get("added_tokens", [])]
            pairs += list(vocab.items()) if isinstance(vocab, dict) else []
        else:
            pairs = list(data.items())
        for piece, i in pairs:
            if piece in wanted and piece not in found:
                found[piece] = (int(i), name)
    return found


def token_ids_from_hf(hf_dir, hc, gen, tokens, overridden=()):
    """Sets every role of `tokens` (our tokens.* block) for the HF directory `hf_dir` (config.json `hc`,
    generation_config.json `gen`) and returns {role: where its id came from}. In order: a --config.tokens.*
    override (roles in `overridden`, already set), the config.json / generation_config.json key, the piece's id in
    the tokenizer files, the release's id when the model is the released layout (vocab 126464, mask 126336). A role
    found nowhere is an error: the defaults of a tiny model are never kept silently."""
    pieces = tokenizer_piece_ids(hf_dir)
    sources = {role: "override" for role in overridden}
    for role, key in TOKEN_KEYS.items():
        for value, source in ((hc.get(key), "config.json"), (gen.get(key), "generation_config.json"),
                              pieces.get(ROLE_PIECES[role], (None, None))):
            if isinstance(value, list):  # generation_config.json may list several EOS ids: the first is EOS
                value = value[0] if value else None
            if role not in sources and value is not None:
                tokens[role], sources[role] = int(value), source
    release = config_lib.RELEASE_TOKENS
    if (hc.get("embedding_size") or hc.get("vocab_size")) == config_lib.RELEASE_VOCAB and (
            "mask_id" not in sources or tokens.mask_id == release["mask_id"]):
        for role in TOKEN_KEYS:
            if role not in sources:
                tokens[role], sources[role] = release[role], "release defaults"
    missing = [role for role in TOKEN_KEYS if role not in sources]
    if missing:
        raise ConvertError(
            f"{hf_dir} gives no id for the token roles {', '.join(missing)}: config.json and generation_config.json "
            f"have no {', '.join(TOKEN_KEYS[r] for r in missing)}, no tokenizer file ({', '.join(TOKENIZER_FILES)}) "
            f"names {', '.join(ROLE_PIECES[r] for r in missing)}, and the model is not the released layout (vocab "
            f"{config_lib.RELEASE_VOCAB}, mask id {release['mask_id']}). Pass them: " +
            " ".join(f"--config.tokens.{r}=ID" for r in missing))
    return {role: sources[role] for role in TOKEN_KEYS}


# ---------------------------------------------------------------------------------------------------------------
# safetensors: an 8-byte little-endian header length, a JSON header, then the tensors' raw bytes.

def read_safetensors_header(path):
    """{name: (dtype code, shape, absolute byte offset, nbytes)} of one safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConvertError(f"{path}: not a safetensors file (shorter than its 8-byte header length).")
        n = int.from_bytes(raw, "little")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"{path}: unreadable safetensors header ({e}).") from None
    header.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"]), 8 + n + v["data_offsets"][0],
                v["data_offsets"][1] - v["data_offsets"][0]) for k, v in header.items()}


class SafetensorsWriter:
    """Writes one shard whose tensors (names, dtype codes, shapes) are known up front; data arrives in order,
    each tensor whole or in row blocks."""

    def __init__(self, path, entries):
        self.path, self.entries = path, entries
        header, offset = {}, 0
        for name, code, shape in entries:
            nbytes = int(np.prod(shape)) * ST_DTYPES[code].itemsize
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        header["__metadata__"] = {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.f = open(path, "wb")
        self.f.write(len(text).to_bytes(8, "little") + text)
        self.index, self.written = 0, 0

    def write(self, name, block):
        """Appends `block` (the whole tensor, or its next rows) of tensor `name`."""
        want_name, code, shape = self.entries[self.index]
        assert name == want_name and block.dtype == ST_DTYPES[code], (name, want_name, block.dtype, code)
        data = np.ascontiguousarray(block).astype(block.dtype.newbyteorder("<"), copy=False)
        self.f.write(memoryview(data.reshape(-1).view(np.uint8)))
        self.written += data.nbytes
        if self.written == int(np.prod(shape)) * ST_DTYPES[code].itemsize:
            self.index, self.written = self.index + 1, 0

    @property
    def done(self):
        return self.index == len(self.entries)

    def close(self):
        assert self.done, f"{self.path}: wrote {self.index} of {len(self.entries)} tensors"
        self.f.close()


class ShardedWriter:
    """Consecutive shards: the next file opens when the previous one has all its tensors."""

    def __init__(self, paths, entries):
        self.pending = list(zip(paths, entries))
        self.current = None

    def write(self, name, block):
        if self.current is None or self.current.done:
            if self.current is not None:
                self.current.close()
            self.current = SafetensorsWriter(*self.pending.pop(0))
        self.current.write(name, block)

    def close(self):
        self.current.close()
        assert not self.pending, f"{len(self.pending)} shards were never written"


# ---------------------------------------------------------------------------------------------------------------
# Reading and writing the arrays of an orbax `params` item with tensorstore.

def open_leaf(params_dir, name, context):
    """The tensorstore of our leaf `name` ("blocks.q_proj") in an orbax params directory, or None."""
    try:
        return checkpoint.open_array(params_dir, name, context)
    except ValueError:
        return None


def _step_blocks(t, axis):
    """[(start, stop)] along `axis`: whole storage chunks, grouped up to BLOCK_BYTES, so no chunk is decoded twice."""
    size = t.shape[axis]
    chunk = t.chunk_layout.read_chunk.shape[axis] or size
    row_bytes = t.dtype.numpy_dtype.itemsize * int(np.prod(t.shape)) // max(size, 1)
    step = max(chunk, BLOCK_BYTES // max(row_bytes, 1) // chunk * chunk)
    return [(a, min(a + step, size)) for a in range(0, size, step)]


def copy_plan(table, stores):
    """The blocks both directions move, in the table's order: (leaf store, tensors, our index, HF rows). A stacked
    leaf moves in chunk-aligned groups of layers (one HF tensor per layer; rows None: whole tensors); a single
    tensor in chunk-aligned row blocks of the HF tensor, which are our columns for a linear one ([d, V] vs [V, d])."""
    for leaf, tensors in table.items():
        t = stores[leaf]
        if tensors[0].layer is not None:
            for a, b in _step_blocks(t, 0):
                yield t, tensors[a:b], slice(a, b), None
        else:
            axis = 1 if tensors[0].kind == "linear" else 0
            for a, b in _step_blocks(t, axis):
                yield t, tensors, (slice(None), slice(a, b)) if axis else slice(a, b), (a, b)


def find_step_dir(run_dir, step=None, log=print):
    """(step, path of that step's directory) of a run directory (or its checkpoints/ directory): `step`, by default
    the newest step whose params read back (checkpoint.read_newest)."""
    directory, step = checkpoint.find_step(run_dir, step, log=log)
    path = os.path.join(directory, str(step))
    if not os.path.isdir(os.path.join(path, "params")):
        raise ConvertError(f"{path} has no params item; is it a llada checkpoint?")
    return step, path


class Progress:
    """Progress lines: bytes done of the total, MB/s, the current tensor; at most one line every `every` seconds."""

    def __init__(self, label, total, log, every=2.0):
        self.label, self.total, self.log, self.every = label, total, log, every
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0

    def update(self, nbytes, name):
        self.done += nbytes
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.log(f"{self.label}: {self.done / 1e6:,.0f}/{self.total / 1e6:,.0f} MB "
                     f"({100 * self.done / max(self.total, 1):.0f}%) {self.rate():.0f} MB/s  {name}")

    def rate(self):
        return self.done / 1e6 / max(time.perf_counter() - self.t0, 1e-9)


def _parse_size(text):
    if isinstance(text, int):
        return text
    units = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "B": 1}
    s = str(text).strip().upper()
    for unit, factor in units.items():
        if s.endswith(unit):
            return int(float(s[:-len(unit)]) * factor)
    return int(s)


def _copy_tokenizer(path, out, cfg):
    """Tokenizer files into the export: an HF tokenizer directory is copied as is; a sentencepiece .model becomes
    tokenizer.model plus a tokenizer_config.json naming the special tokens of our config."""
    if os.path.isdir(path):
        names = [n for n in os.listdir(path) if n.startswith("tokenizer") or n in (
            "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")]
        if not names:
            raise ConvertError(f"--tokenizer={path}: no tokenizer files (tokenizer.json, tokenizer.model, ...) there.")
        for n in names:
            shutil.copy(os.path.join(path, n), os.path.join(out, n))
        return names
    if not os.path.exists(path):
        raise ConvertError(f"--tokenizer={path} does not exist; pass a sentencepiece .model or an HF tokenizer dir.")
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    t = cfg.tokens
    piece = lambda i: sp.id_to_piece(i) if 0 <= i < sp.get_piece_size() else None
    shutil.copy(path, os.path.join(out, "tokenizer.model"))
    tok_cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
               "bos_token": piece(t.bos_id), "eos_token": piece(t.eos_id), "pad_token": piece(t.pad_id),
               "mask_token": piece(t.mask_id), "model_max_length": cfg.model.max_seq_len}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)
    return ["tokenizer.model", "tokenizer_config.json"]


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------------------------------------------
# Export: run directory -> HF directory.

def to_hf(run_dir, out, step=None, dtype=None, tokenizer=None, max_shard_size="5GB", log=print, layout="llada"):
    """Writes the HF layout of checkpoint `step` (default: the latest) of `run_dir` into `out`.

    dtype: "bfloat16" | "float32" | "float16" | None (the checkpoint's own dtype). layout: "llada" (the release's
    LLaDAModelLM with its remote code) or "llama" (transformers' own LlamaForCausalLM: the same weights, run causally
    there; for an objective=arm run the same logits). Returns a summary dict."""
    if layout not in LAYOUTS:
        raise ConvertError(f"layout={layout!r}; expected one of {', '.join(LAYOUTS)}.")
    cfg = rundir.load_config(run_dir)
    m = cfg.model
    table = tensor_table(m, layout)
    step, step_dir = find_step_dir(run_dir, step, log)
    params_dir = os.path.join(step_dir, "params")
    context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    stores, problems = {}, []
    for leaf, shape in leaf_shapes(m).items():
        t = open_leaf(params_dir, leaf, context)
        if t is None:
            problems.append(f"params/{leaf}: missing from the checkpoint (expected shape {shape})")
        elif tuple(t.shape) != shape:
            problems.append(f"params/{leaf}: checkpoint shape {tuple(t.shape)}, config expects {shape}")
        stores[leaf] = t
    if problems:
        raise ConvertError(f"checkpoint step {step} of {run_dir} does not match its config.json:\n  " +
                           "\n  ".join(problems))
    stored = {np.dtype(t.dtype.numpy_dtype) for t in stores.values()}
    dtype = _choose_dtype(dtype, stored, 1, "the checkpoint")
    code, np_dtype = DTYPES[dtype]

    # Plan the shards: tensors in reading order, a new shard when the next tensor would overflow the limit.
    limit = _parse_size(max_shard_size)
    order = [tensor for leaf in table for tensor in table[leaf]]
    shards, current, size = [], [], 0
    for tensor in order:
        nbytes = int(np.prod(tensor.hf)) * np_dtype.itemsize
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = [], 0
        current.append(tensor)
        size += nbytes
    shards.append(current)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    shard_of = {t.name: names[i] for i, shard in enumerate(shards) for t in shard}
    total = sum(int(np.prod(t.hf)) * np_dtype.itemsize for t in order)

    os.makedirs(out, exist_ok=True)
    for stale in os.listdir(out):  # shards of an earlier export with another shard count would confuse loaders
        if stale.endswith(".safetensors") or stale == "model.safetensors.index.json":
            os.remove(os.path.join(out, stale))
    _write_json(os.path.join(out, "config.json"), (hf_config if layout == "llada" else llama_hf_config)(cfg, dtype))
    _write_json(os.path.join(out, "generation_config.json"),
                {"bos_token_id": cfg.tokens.bos_id, "eos_token_id": cfg.tokens.eos_id,
                 "pad_token_id": cfg.tokens.pad_id})
    old_code = [n for n in os.listdir(out) if n.endswith(".py")]
    for n in old_code if layout == "llama" else ():  # remote code of an earlier llada export
        os.remove(os.path.join(out, n))
    for n in os.listdir(HF_FILES) if layout == "llada" else ():
        if n.endswith(".py"):
            shutil.copy(os.path.join(HF_FILES, n), os.path.join(out, n))
    if layout == "llada":
        shutil.copy(TORCH_MODEL, os.path.join(out, "torch_model.py"))
    tokenizer = tokenizer or (cfg.data.tokenizer if cfg.get("data") and cfg.data.get("tokenizer") else None)
    tok_files = _copy_tokenizer(tokenizer, out, cfg) if tokenizer else []

    log(f"to-hf: step {step} of {run_dir} -> {out} ({layout} layout): {len(order)} tensors, "
        f"{total / 1e6:,.0f} MB {dtype}, {len(shards)} shard(s)")
    progress = Progress("to-hf", total, log)
    writer = ShardedWriter([os.path.join(out, n) for n in names], [[(t.name, code, t.hf) for t in sh] for sh in shards])

    def emit(tensor, block):
        writer.write(tensor.name, block)
        progress.update(block.nbytes, tensor.name)

    for t, tensors, ours, rows in copy_plan(table, stores):
        x = t[ours].read().result()
        if rows is None:  # layers
            for tensor, layer in zip(tensors, x):
                emit(tensor, tensor.to_hf(layer).astype(np_dtype))
        elif tensors[0].kind == "linear":  # our column block -> HF rows, transposed in pieces of <= BLOCK_BYTES / 4
            rows_per = max(1, BLOCK_BYTES // 4 // (x.shape[0] * x.itemsize))
            for r in range(0, x.shape[1], rows_per):
                emit(tensors[0], np.ascontiguousarray(x[:, r:r + rows_per].T).astype(np_dtype))
        else:
            emit(tensors[0], x.astype(np_dtype))
        del x
    writer.close()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(shard_of.items()))}
    _write_json(os.path.join(out, "model.safetensors.index.json"), index)
    log(f"to-hf: wrote {out} ({total / 1e6:,.0f} MB at {progress.rate():.0f} MB/s"
        f"{', tokenizer: ' + ', '.join(tok_files) if tok_files else ''})")
    return {"step": step, "tensors": len(order), "bytes": total, "shards": names, "dtype": dtype,
            "mb_per_s": progress.rate(), "layout": layout}


# ---------------------------------------------------------------------------------------------------------------
# Import: HF directory -> run directory.

def read_hf_index(hf_dir):
    """{tensor name: (file path, dtype code, shape, offset, nbytes)} of every safetensors file of an HF directory."""
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))
    if not files:
        raise ConvertError(f"{hf_dir} has no .safetensors files (PyTorch .bin checkpoints are not supported; "
                           f"re-save them with safetensors).")
    out = {}
    for n in files:
        path = os.path.join(hf_dir, n)
        if not os.path.exists(path):
            raise ConvertError(f"{index_path} names {n}, which is missing from {hf_dir}.")
        for name, (code, shape, offset, nbytes) in read_safetensors_header(path).items():
            out[name] = (path, code, shape, offset, nbytes)
    return out


def check_hf_tensors(index, table, layout="llada"):
    """Every problem with the HF tensors, one line each: wrong shapes, missing and unknown names, dtypes."""
    expected = {t.name: t for tensors in table.values() for t in tensors}
    problems = []
    for name, t in expected.items():
        if name not in index:
            problems.append(f"{name}: missing (expected shape {list(t.hf)})")
        elif index[name][2] != t.hf:
            problems.append(f"{name}: shape {list(index[name][2])}, expected {list(t.hf)} from config.json")
        elif index[name][1] not in ST_DTYPES:
            problems.append(f"{name}: dtype {index[name][1]}, expected one of {', '.join(ST_DTYPES)}")
    for name in sorted(set(index) - set(expected)):
        if not name.endswith(IGNORED_SUFFIXES):
            problems.append(f"{name}: unknown tensor name (shape {list(index[name][2])}); not part of the {layout} "
                            f"layout")
    return problems


def _read_rows(entry, a, b):
    """Rows a:b of an HF tensor, read straight from its safetensors file."""
    path, code, shape, offset, _ = entry
    dt = ST_DTYPES[code].newbyteorder("<")
    row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    count = (b - a) * row
    with open(path, "rb") as f:
        f.seek(offset + a * row * dt.itemsize)
        data = np.fromfile(f, dtype=dt, count=count)
    if data.size != count:
        raise ConvertError(f"{path} is truncated: its tensor data ends early.")
    return data.reshape((b - a,) + tuple(shape[1:]))


class _Placeholder(np.ndarray):
    """A zero-strided array with no memory behind it; orbax's defensive deepcopy returns it as is."""

    def __deepcopy__(self, memo):
        return self


def _placeholder(shape, dtype):
    return np.broadcast_to(np.zeros((), dtype), shape).view(_Placeholder)


# Keys an import takes from the HF directory itself, which --config.* overrides cannot change.
_FROM_DIRECTORY = ("model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads",
                   "model.head_dim", "model.ffn_dim", "model.param_dtype")


def from_hf(hf_dir, out, base_config=None, dtype=None, overwrite=False, log=print, overrides=()):
    """Imports an HF LLaDA directory into a new run directory `out` (config.json + checkpoints/0 with `params` and
    `config`), usable by `--config.checkpoint.init_from=OUT`, sampling and `to_hf`. `overrides` [(dotted key, text)]
    (`--config.a.b=value`) win over the directory and `base_config`; the token ids are chosen by token_ids_from_hf
    and logged with their sources. Returns a summary dict."""
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(config_path):
        raise ConvertError(f"{config_path} not found: {hf_dir} is not a Hugging Face model directory.")
    with open(config_path) as f:
        hc = json.load(f)
    gen_path = os.path.join(hf_dir, "generation_config.json")
    gen = {}
    if os.path.exists(gen_path):
        with open(gen_path) as f:
            gen = json.load(f)
    fixed = [k for k, _ in overrides if k in _FROM_DIRECTORY]
    if fixed:
        raise ConvertError(f"--config.{fixed[0]} is read from {hf_dir} (config.json and the tensors; --dtype for the "
                           f"parameter dtype) and cannot be overridden on import.")
    cfg = config_from_hf(hc, base_config)
    m = cfg.model
    layout = hf_layout(hc)
    table = tensor_table(m, layout, tied=layout == "llama" and hc.get("tie_word_embeddings", False))
    index = read_hf_index(hf_dir)
    problems = check_hf_tensors(index, table, layout)
    if problems:
        raise ConvertError(f"{hf_dir} does not match the {layout} layout of its config.json ({m.n_layers} layers, "
                           f"d_model {m.d_model}, {m.n_heads} heads, {m.n_kv_heads} kv heads, ffn {m.ffn_dim}, "
                           f"vocab {m.vocab_size}):\n  " + "\n  ".join(problems))
    codes = {index[t.name][1] for tensors in table.values() for t in tensors}
    dtype = _choose_dtype(dtype, codes, 0, hf_dir)
    np_dtype = DTYPES[dtype][1]
    m.param_dtype = m.dtype = dtype  # computing in another dtype is an explicit --config.model.dtype
    with cfg.unlocked():
        cfg.name = os.path.basename(os.path.normpath(hf_dir)) or cfg.name
    for key, text in overrides:
        config_lib.override(cfg, key, text)
    overridden = [k[len("tokens."):] for k, _ in overrides if k.startswith("tokens.")]
    sources = token_ids_from_hf(hf_dir, hc, gen, cfg.tokens, overridden)
    log("from-hf: token ids " + ", ".join(f"{role}={cfg.tokens[role]} ({source})" for role, source in sources.items()))

    if os.path.exists(out) and os.listdir(out):
        if not overwrite:
            raise ConvertError(f"{out} exists and is not empty; choose a new --out or pass --overwrite.")
        shutil.rmtree(out)
    partial = os.path.normpath(out) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    ckpt_dir = os.path.join(partial, "checkpoints")
    shapes = leaf_shapes(m)

    # 1. orbax writes the checkpoint's structure and metadata from placeholders, chunked as every checkpoint is
    #    (checkpoint.params_save_args: one chunk per layer for stacked leaves).
    skeleton = {}
    for k, s in shapes.items():
        *groups, name = k.split(".")
        node = skeleton
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = _placeholder(s, np_dtype)
    ckpt = checkpoint.Checkpointer(ckpt_dir, cfg)
    ckpt.save_params(0, skeleton, cfg)
    ckpt.wait()
    ckpt.close()
    params_dir = os.path.join(ckpt_dir, "0", "params")

    # 2. Fill the chunks, one HF tensor (or BLOCK_BYTES of one) at a time.
    total = sum(int(np.prod(t.hf)) * np_dtype.itemsize for tensors in table.values() for t in tensors)
    log(f"from-hf: {hf_dir} -> {out}: {sum(len(v) for v in table.values())} tensors, {total / 1e6:,.0f} MB {dtype}")
    progress = Progress("from-hf", total, log)
    context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    stores = {leaf: open_leaf(params_dir, leaf, context) for leaf in table}
    for t, tensors, ours, rows in copy_plan(table, stores):
        if rows is None:  # layers: whole HF tensors
            x = np.stack([tensor.from_hf(_read_rows(index[tensor.name], 0, tensor.hf[0]).astype(np_dtype))
                          for tensor in tensors])
        else:
            x = _read_rows(index[tensors[0].name], *rows).astype(np_dtype)
            x = x.T if tensors[0].kind == "linear" else x
        t[ours].write(x).result()
        progress.update(x.nbytes, tensors[0].name)
    rundir.save_config(partial, cfg)
    os.replace(partial, out)
    log(f"from-hf: wrote run directory {out} ({total / 1e6:,.0f} MB at {progress.rate():.0f} MB/s); fine-tune it "
        f"with --config.checkpoint.init_from={out}")
    return {"tensors": sum(len(v) for v in table.values()), "bytes": total, "dtype": dtype,
            "mb_per_s": progress.rate()}
