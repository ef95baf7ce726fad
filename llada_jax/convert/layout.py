"""The Hugging Face layouts of our parameters and configs, without file formats: the HF tensor name and shape of
every leaf of the parameter pytree (model.param_shapes) in LLaDA's release layout and in the Llama layout
(transformers' LlamaForCausalLM), the transposes between PyTorch's [out, in] Linear weights and ours, the
translation of config.json to our cfg.model / cfg.tokens and back, and the ids of the token roles (docs/conversion.md).

Reading and writing tensors is elsewhere (safetensors_io.py), so an importer of another file format reuses this.
"""
import json
import os

import numpy as np

from llada_jax import config as config_lib, model as model_lib
from llada_jax.convert import ConvertError
from llada_jax.data.tokenizer import PIECES

# ---------------------------------------------------------------------------------------------------------------
# Tensor names and layouts: from the model's parameter table (model.param_shapes: hf_name, hf_shape, hf_linear).

PREFIX = "model.transformer."  # the release's names: PREFIX + the table's hf_name


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


def tensor_table(m, layout="llada", names=None):
    """{our leaf name ("blocks.q_proj"): [Tensor, ...]} in the table's order; stacked leaves list one per layer.
    layout: "llada" (the release's names) or "llama" (a model.tie_embeddings model, Llama's tie_word_embeddings, has
    no head leaf: the embedding is the head); names: {leaf: name} instead of LLAMA_NAMES (the Llama layout under
    another file format's names, e.g. GGUF's)."""
    hd = model_lib.head_dim(m)
    if layout == "llada" and hd * m.n_heads != m.d_model:
        raise ConvertError(f"model.head_dim={m.head_dim} with d_model={m.d_model} and n_heads={m.n_heads}: the "
                           f"LLaDA HF layout needs head_dim = d_model / n_heads = {m.d_model // m.n_heads}.")
    if layout == "llada" and m.tie_embeddings:
        raise ConvertError("model.tie_embeddings=True: the LLaDA HF layout has no tied head (its weight_tying is "
                           "false); export this run with --layout=llama (tie_word_embeddings).")
    names = LLAMA_NAMES if names is None else names
    table = {}
    for leaf, p in model_lib.flat_params(m).items():
        kind = "linear" if p.hf_linear else "copy"
        if layout == "llada":
            name = PREFIX + p.hf_name
        elif leaf in names:
            name = names[leaf]
        else:
            raise ConvertError(f"parameter {leaf} has no counterpart in the Llama layout.")
        if p.axes[0] == "layers":
            table[leaf] = [Tensor(name.format(layer=i), leaf, i, kind, p.shape[1:], p.hf_shape)
                           for i in range(m.n_layers)]
        else:
            table[leaf] = [Tensor(name, leaf, None, kind, p.shape, p.hf_shape)]
    return table


def leaf_shapes(m):
    """{our leaf name: its shape} of the parameter pytree of model config `m`."""
    return {leaf: p.shape for leaf, p in model_lib.flat_params(m).items()}


# ---------------------------------------------------------------------------------------------------------------
# Configs: config.json <-> cfg.model and cfg.tokens, and the ids of the token roles.

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
        "rms_norm_eps": float(m.norm_eps), "tie_word_embeddings": m.tie_embeddings, "hidden_act": "silu",
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
    m.tie_embeddings = bool(hc.get("tie_word_embeddings", False))  # one matrix, as the checkpoint trains it
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
