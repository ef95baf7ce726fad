"""Conversion between a run directory (orbax checkpoint + config.json) and a Hugging Face directory: `to_hf` exports
a checkpoint in LLaDA's release layout or the Llama layout, `from_hf` imports either into a new run directory (a
Llama checkpoint, config.json model_type "llama", is the start of an adaptation from an autoregressive model). The
`llada convert` command calls these two (docs/conversion.md).

An export holds config.json and safetensors shards (PyTorch Linear weights are [out, in]) with the layout's keys and
tensor names plus model.safetensors.index.json, generation_config.json, the tokenizer files when a tokenizer is known,
and for the release's layout our own `configuration_llada.py` / `modeling_llada.py` / `torch_model.py` for
`trust_remote_code=True`. The names and config.json come from layout.py, the files from safetensors_io.py, and both
directions move the tensors block by block as stream.py plans. An import first has orbax write a checkpoint of
zero-strided placeholders (its metadata, with one chunk per layer) and then fills the chunks through tensorstore in a
`.partial` directory that is renamed only when complete.

Neither direction needs torch.
"""
import json
import os
import shutil

import numpy as np
import sentencepiece
import tensorstore as ts

from llada_jax import checkpoint, config as config_lib, model as model_lib, objectives, rundir
from llada_jax.convert import ConvertError
from llada_jax.convert.layout import (
    IGNORED_SUFFIXES,
    LAYOUTS,
    config_from_hf,
    hf_config,
    hf_layout,
    leaf_shapes,
    llama_hf_config,
    tensor_table,
    token_ids_from_hf,
)
from llada_jax.convert.safetensors_io import (
    DTYPES,
    INDEX,
    ST_DTYPES,
    ShardedWriter,
    plan_shards,
    read_hf_index,
    read_rows,
    remove_shards,
    shard_index,
    total_bytes,
)
from llada_jax.convert.stream import BLOCK_BYTES, Progress, copy_plan, open_leaf

HF_FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_files")
TORCH_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_model.py")


def _choose_dtype(dtype, found, column, where):
    """The --dtype name to write: as given, or the one dtype `where` holds (`found`: DTYPES[...][column] values)."""
    if dtype is None:
        if len(found) != 1:
            raise ConvertError(f"{where} mixes dtypes {sorted(map(str, found))}; pass --dtype.")
        dtype = next(n for n, entry in DTYPES.items() if entry[column] in found)
    if dtype not in DTYPES:
        raise ConvertError(f"--dtype={dtype!r}; expected one of {', '.join(DTYPES)}.")
    return dtype


def find_step_dir(run_dir, step=None, log=print):
    """(step, path of that step's directory) of a run directory (or its checkpoints/ directory): `step`, by default
    the newest step whose params read back (checkpoint.read_newest)."""
    directory, step = checkpoint.find_step(run_dir, step, log=log)
    path = os.path.join(directory, str(step))
    if not os.path.isdir(os.path.join(path, "params")):
        raise ConvertError(f"{path} has no params item; is it a llada checkpoint?")
    return step, path


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
    unfaithful = [what for what, on in ((f"objective={cfg.objective} (block-causal attention over [x_t ; x_0])",
                                         objectives.get(cfg).blockwise),
                                        ("model.shift_logits (the token shift)", m.shift_logits)) if on]
    if unfaithful:
        raise ConvertError(f"{run_dir} computes with {' and '.join(unfaithful)}, which neither Hugging Face layout's "
                           f"modeling code does: its export would compute something else. Sample and evaluate it "
                           f"here (llada sample / chat / eval).")
    table = tensor_table(m, layout)
    step, step_dir = find_step_dir(run_dir, step, log)
    params_dir = os.path.join(step_dir, "params")
    context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    stores, problems = {}, []
    lora = model_lib.lora_of(cfg)  # adapters are merged as their projection streams: W + scale A B
    expected = {leaf: p.shape for leaf, p in model_lib.flat_params(m, lora).items()}
    for leaf, shape in expected.items():
        t = open_leaf(params_dir, leaf, context)
        if t is None:
            problems.append(f"params/{leaf}: missing from the checkpoint (expected shape {shape})")
        elif tuple(t.shape) != shape:
            problems.append(f"params/{leaf}: checkpoint shape {tuple(t.shape)}, config expects {shape}")
        stores[leaf] = t
    if problems:
        raise ConvertError(f"checkpoint step {step} of {run_dir} does not match its config.json:\n  " +
                           "\n  ".join(problems))
    adapters = {id(stores[f"blocks.{name}"]): (stores.pop(f"blocks.{name}_lora_a"), stores.pop(f"blocks.{name}_lora_b"))
                for name in model_lib.LORA_TARGETS if lora}
    stored = {np.dtype(t.dtype.numpy_dtype) for t in stores.values()}
    dtype = _choose_dtype(dtype, stored, 1, "the checkpoint")
    code, np_dtype = DTYPES[dtype]

    order = [tensor for leaf in table for tensor in table[leaf]]  # reading order
    shards = plan_shards([(t.name, code, t.hf) for t in order], max_shard_size)
    total = total_bytes(shards)

    os.makedirs(out, exist_ok=True)
    remove_shards(out)
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
    writer = ShardedWriter(out, shards)

    def emit(tensor, block):
        writer.write(tensor.name, block)
        progress.update(block.nbytes, tensor.name)

    for t, tensors, ours, rows in copy_plan(table, stores):
        x = t[ours].read().result()
        if id(t) in adapters:  # a LoRA projection (stacked: `ours` selects layers)
            x = model_lib.lora_merged(x, *(s[ours].read().result() for s in adapters[id(t)]), lora.scale)
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
    _write_json(os.path.join(out, INDEX), shard_index(shards))
    log(f"to-hf: wrote {out} ({total / 1e6:,.0f} MB at {progress.rate():.0f} MB/s"
        f"{', tokenizer: ' + ', '.join(tok_files) if tok_files else ''})")
    return {"step": step, "tensors": len(order), "bytes": total, "shards": [name for name, _ in shards], "dtype": dtype,
            "mb_per_s": progress.rate(), "layout": layout}


# ---------------------------------------------------------------------------------------------------------------
# Import: HF directory -> run directory.

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


class _Placeholder(np.ndarray):
    """A zero-strided array with no memory behind it; orbax's defensive deepcopy returns it as is."""

    def __deepcopy__(self, memo):
        return self


def _placeholder(shape, dtype):
    return np.broadcast_to(np.zeros((), dtype), shape).view(_Placeholder)


# Keys an import takes from the HF directory itself, which --config.* overrides cannot change.
_FROM_DIRECTORY = ("model.vocab_size", "model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads",
                   "model.head_dim", "model.ffn_dim", "model.param_dtype", "model.tie_embeddings")


def refuse_fixed_overrides(overrides, source):
    """Raises on a --config.* override of a key an import reads from `source` (the sizes and the dtype)."""
    fixed = [k for k, _ in overrides if k in _FROM_DIRECTORY]
    if fixed:
        raise ConvertError(f"--config.{fixed[0]} is read from {source} (its config and tensors; --dtype for the "
                           f"parameter dtype) and cannot be overridden on import.")


def write_run(out, cfg, table, read, source, overwrite=False, log=print, label="from-hf", add_files=None):
    """Writes the new run directory `out`: config.json (`cfg`) and checkpoints/0 with `params`, each leaf filled
    from the HF-layout tensors of `table` (layout.tensor_table): `read(tensor, rows)` returns one tensor (rows None)
    or its rows a..b (rows (a, b)) as a numpy array. The tensors move block by block as stream.copy_plan plans, into
    `OUT.partial`, renamed to `out` when complete; `add_files(directory)` first adds the caller's own files there.
    Returns the summary dict of an import."""
    m = cfg.model
    np_dtype = DTYPES[m.param_dtype][1]
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
    n_tensors = sum(len(v) for v in table.values())
    total = sum(int(np.prod(t.hf)) * np_dtype.itemsize for tensors in table.values() for t in tensors)
    log(f"{label}: {source} -> {out}: {n_tensors} tensors, {total / 1e6:,.0f} MB {m.param_dtype}")
    progress = Progress(label, total, log)
    context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    stores = {leaf: open_leaf(params_dir, leaf, context) for leaf in table}
    for t, tensors, ours, rows in copy_plan(table, stores):
        if rows is None:  # layers: whole HF tensors
            x = np.stack([tensor.from_hf(read(tensor, None).astype(np_dtype)) for tensor in tensors])
        else:
            x = read(tensors[0], rows).astype(np_dtype)
            x = x.T if tensors[0].kind == "linear" else x
        t[ours].write(x).result()
        progress.update(x.nbytes, tensors[0].name)
    if add_files:
        add_files(partial)
    rundir.save_config(partial, cfg)
    os.replace(partial, out)
    log(f"{label}: wrote run directory {out} ({total / 1e6:,.0f} MB at {progress.rate():.0f} MB/s); fine-tune it "
        f"with --config.checkpoint.init_from={out}")
    return {"tensors": n_tensors, "bytes": total, "dtype": m.param_dtype, "mb_per_s": progress.rate()}


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
    refuse_fixed_overrides(overrides, hf_dir)
    cfg = config_from_hf(hc, base_config)
    m = cfg.model
    layout = hf_layout(hc)
    table = tensor_table(m, layout)
    index = read_hf_index(hf_dir)
    problems = check_hf_tensors(index, table, layout)
    if problems:
        raise ConvertError(f"{hf_dir} does not match the {layout} layout of its config.json ({m.n_layers} layers, "
                           f"d_model {m.d_model}, {m.n_heads} heads, {m.n_kv_heads} kv heads, ffn {m.ffn_dim}, "
                           f"vocab {m.vocab_size}):\n  " + "\n  ".join(problems))
    codes = {index[t.name][1] for tensors in table.values() for t in tensors}
    dtype = _choose_dtype(dtype, codes, 0, hf_dir)
    m.param_dtype = m.dtype = dtype  # computing in another dtype is an explicit --config.model.dtype
    with cfg.unlocked():
        cfg.name = os.path.basename(os.path.normpath(hf_dir)) or cfg.name
    for key, text in overrides:
        config_lib.override(cfg, key, text)
    overridden = [k[len("tokens."):] for k, _ in overrides if k.startswith("tokens.")]
    sources = token_ids_from_hf(hf_dir, hc, gen, cfg.tokens, overridden)
    log("from-hf: token ids " + ", ".join(f"{role}={cfg.tokens[role]} ({source})" for role, source in sources.items()))

    def read(tensor, rows):
        return read_rows(index[tensor.name], *(rows or (0, tensor.hf[0])))

    return write_run(out, cfg, table, read, hf_dir, overwrite, log)
