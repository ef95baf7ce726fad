"""A trained run ready for sampling, chat and evaluation: its config, params (on one device or sharded over a mesh),
text codec and token ids; prompt batching; the official chat-history rule.

    run = inference.load_run("runs/tiny", overrides=[("sampling.steps", "16")])
    out = run.sample(["12+34="])          # {"texts": [...], "tokens": ..., "order": ..., ...}
"""
import dataclasses
import os

import jax
import numpy as np

from llada_jax import (
    checkpoint,
    config as config_lib,
    model as model_lib,
    objectives,
    rundir,
    sampling,
    sampling_args,
    sharding,
)
from llada_jax.data import chat, sources, synthetic, tokenizer
from llada_jax.errors import LladaError


class InferenceError(LladaError):
    """A run or input that cannot be used; the message says what was wrong and how to fix it."""


# -- text <-> ids ---------------------------------------------------------------------------------------------------

class CharCodec:
    """The synthetic corpus's character vocabulary (runs trained with data.source = synthetic)."""

    def __init__(self):
        self.tok = synthetic.CharTokenizer()

    def encode(self, text):
        try:
            return self.tok.encode(text)
        except LladaError as e:
            raise InferenceError(f"{e} This run was trained on the synthetic corpus; write prompts in its "
                                 f"characters.") from None

    def decode(self, ids):
        return self.tok.decode(ids)


class SentencePieceCodec:
    def __init__(self, path):
        self.tok = tokenizer.Tokenizer.load(path)

    def encode(self, text):
        return list(self.tok.encode([text])[0])

    def decode(self, ids):
        return self.tok.decode(ids)


class HFCodec:
    """A Hugging Face tokenizer directory (the released 8B's tokenizer.json); needs `transformers`."""

    def __init__(self, path):
        try:
            from transformers import AutoTokenizer  # optional: only HF tokenizer directories need it
        except ImportError:
            raise InferenceError(f"--tokenizer={path} is a Hugging Face tokenizer directory, which needs "
                                 f"transformers: pip install 'llada-jax[hf]'.") from None
        try:
            self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        except Exception as e:  # a damaged or partial directory: JSON, OS or tokenizers errors
            raise InferenceError(f"tokenizer directory {path} cannot be read ({checkpoint.short_reason(e)}): it is "
                                 f"damaged or not a Hugging Face tokenizer. Restore it, or pass --tokenizer=PATH of "
                                 f"the one the run was trained with.") from None

    def encode(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=True)


class TokenizerJsonCodec:
    """A `tokenizer.json` file, read by the `tokenizers` library alone (`llada convert from-gguf` writes one):
    encodes without adding special tokens, decodes without them."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer  # optional: only tokenizer.json files need it
        except ImportError:
            raise InferenceError(f"--tokenizer={path} is a tokenizer.json file, which needs the tokenizers library: "
                                 f"pip install 'llada-jax[gguf]'.") from None
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises its own Exception for a damaged or foreign JSON file
            raise InferenceError(f"tokenizer file {path} cannot be read ({checkpoint.short_reason(e)}): it is "
                                 f"damaged or not a tokenizers tokenizer.json. Restore it (`llada convert from-gguf` "
                                 f"writes it again), or pass --tokenizer=PATH.") from None

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


def run_file(path, run_dir):
    """A file a run's config names (data.tokenizer, data.chat_template): `path`, or when a relative path is not found
    from here, the same path in `run_dir` (a run that keeps its files inside, as imports do, can move)."""
    inside = os.path.join(run_dir or "", path)
    if path and run_dir and not os.path.isabs(path) and not os.path.exists(path) and os.path.exists(inside):
        return inside
    return path


def make_codec(cfg, path=None, run_dir=None):
    """The codec of a run: `path` (a sentencepiece .model, a tokenizer.json file or an HF tokenizer directory), else
    the run's data.tokenizer (a relative path that is not found from here is looked up in `run_dir`: a run that
    keeps its tokenizer inside, as imports do, can move), else the synthetic character vocabulary for
    synthetic-corpus runs."""
    path = path or run_file(cfg.data.tokenizer, run_dir)
    if path:
        if not os.path.exists(path):
            raise InferenceError(f"tokenizer {path} not found; pass --tokenizer=PATH (a sentencepiece .model, a "
                                 f"tokenizer.json file or a Hugging Face tokenizer directory).")
        if os.path.isdir(path):
            return HFCodec(path)
        return TokenizerJsonCodec(path) if path.endswith(".json") else SentencePieceCodec(path)
    if sources.get(cfg).builtin:
        return CharCodec()
    raise InferenceError(f"the run (data.source={cfg.data.source!r}) names no tokenizer; pass --tokenizer=PATH "
                         f"(a sentencepiece .model or a Hugging Face tokenizer directory).")


# -- the run ------------------------------------------------------------------------------------------------------

# Keys a user may change when loading a trained run: how to sample and evaluate, and how to lay the model out.
LOAD_OVERRIDABLE = ("sampling.", "eval.", "mesh.", "sharding.inference_rules", "model.attention",
                    "model.context_parallel", "model.dtype",
                    "model.remat", "seed")


@dataclasses.dataclass
class Run:
    cfg: object
    model: model_lib.Model
    params: dict
    codec: object
    step: int
    template: object = None  # a model's own chat template (data.chat_template): chat.Template; None: the built-in

    @property
    def ids(self):
        return sampling.TokenIds.from_config(self.cfg)

    @property
    def sampling_args(self):
        """The run's `sampling` block (with its overrides) as SamplingArgs."""
        return sampling.SamplingArgs.from_config(self.cfg.sampling)

    def sample(self, prompts, key=None, args=None, prompt_ids=None, width=None):
        """Generates an answer for each prompt (texts, or token-id lists as prompt_ids) with the run's sampling.*
        settings (or `args`), the prompts left-padded to the longest (or to `width`). Returns generate()'s dict
        (numpy) plus texts (answers up to the first EOS)."""
        rows = prompt_ids if prompt_ids is not None else [self.codec.encode(p) for p in prompts]
        tokens, mask = sampling.left_pad(rows, self.cfg.tokens.pad_id, width)
        args = args or self.sampling_args
        key = jax.random.key(self.cfg.seed) if key is None else key
        obj = objectives.get(self.cfg)
        out = jax.device_get(obj.decode(self.model, self.params, tokens, mask, key, args, self.ids,
                                        obj.block_size(self.cfg)))
        out = {k: np.asarray(v) for k, v in out.items()}
        out["prompt_len"] = tokens.shape[1]
        out["texts"] = [self.codec.decode(sampling.answer_ids(row, tokens.shape[1], self.ids.eos_id))
                        for row in out["tokens"]]
        return out


def apply_overrides(cfg, overrides):
    for k, v in overrides:
        if not k.startswith(LOAD_OVERRIDABLE):
            raise InferenceError(f"--config.{k} cannot change for a trained run; only keys under "
                                 f"{', '.join(LOAD_OVERRIDABLE)} can (the rest is fixed by the checkpoint).")
        config_lib.override(cfg, k, v)
    return cfg


def follow_sampling(cfg, own, overrides):
    """Sets cfg.sampling (the run's block `own` with `overrides` applied) to what the run samples with: the fields
    the overrides do not name follow those they do (sampling_args.follow: steps keep the run's tokens per step)."""
    given = {k[len("sampling."):] for k, _ in overrides if k.startswith("sampling.")}
    obj = objectives.by_name(cfg.objective)
    args = sampling_args.follow(own, sampling.SamplingArgs.from_config(cfg.sampling), given, obj.block_size(cfg))
    cfg.sampling.update(dataclasses.asdict(args))
    return cfg


def load_run(workdir, overrides=(), step=None, tokenizer=None, devices=None):
    """Loads a run directory (a `llada train` run or a `llada convert from-hf` import) for inference: params are
    sharded over the mesh of mesh.* (default: fsdp over all devices) and activations stay replicated over the
    batch (prompt batches of any size); with no -1 among mesh.*, only the first devices that fill it are used.
    sampling.* fields the overrides do not set follow those they do (follow_sampling). Raises InferenceError /
    checkpoint.CheckpointError with what to do."""
    if not os.path.isdir(workdir):
        raise InferenceError(f"run directory {workdir} does not exist; pass --workdir=DIR of a trained run.")
    try:
        cfg = rundir.load_config(workdir)
        own = sampling.SamplingArgs.from_config(cfg.sampling)
        cfg = apply_overrides(cfg, overrides)
    except config_lib.ConfigError as e:
        raise InferenceError(str(e)) from None
    follow_sampling(cfg, own, overrides)
    devices = list(devices or jax.devices())
    sizes = [cfg.mesh[k] for a in sharding.AXES for k in (a, f"dcn_{a}")]
    if min(sizes) > 0:  # fixed sizes: inference may use fewer devices than the host has (e.g. mesh.fsdp=1)
        devices = devices[:int(np.prod(sizes))]
    mesh = sharding.make_mesh(cfg.mesh, devices)
    sharder = sharding.Sharder(mesh, cfg.sharding.inference_rules)
    lora = model_lib.lora_of(cfg)  # a LoRA run's adapters are merged into its weights (model.merge_lora)
    stored = model_lib.Model(cfg.model, sharder=sharder, lora=lora)
    shardings = sharder.tree(stored.param_axes())
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), stored.abstract_params(),
                            shardings)
    params, step = checkpoint.restore_params(workdir, abstract, step)
    model = model_lib.Model(cfg.model, sharder=sharder)
    if lora:
        merge = jax.jit(lambda p: model_lib.merge_lora(p, lora), out_shardings=sharder.tree(model.param_axes()))
        params = merge(params)
    template = chat.Template(run_file(cfg.data.chat_template, workdir)) if cfg.data.chat_template else None
    return Run(cfg, model, params, make_codec(cfg, tokenizer, workdir), int(step), template)


# -- chat -------------------------------------------------------------------------------------------------------

class Chat:
    """Multi-turn chat. With the built-in template, the official rules (docs/architecture.md, "Chat template"): the
    first turn starts with BOS; each user message is `<|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>`
    followed by the assistant header; after each answer the whole sequence so far (prompt + answer) is kept with
    every EOS removed (EoT kept), and the next user turn is appended without a second BOS. With the run's own
    template (data.chat_template, e.g. ChatML), the conversation's messages are rendered by it each turn, an answer
    being the generated text up to its first end of turn (tokens.eot_id) or EOS."""

    def __init__(self, run):
        self.run, self.history, self.turns = run, [], []
        t = run.cfg.tokens
        if run.template is not None:
            if isinstance(run.codec, (SentencePieceCodec, CharCodec)):
                raise InferenceError(f"data.chat_template={run.template.path} names special tokens in its text, which "
                                     f"only a tokenizer.json or Hugging Face tokenizer parses; this run's is not one.")
        elif min(t.bos_id, t.eot_id, t.start_header_id, t.end_header_id) < 0:
            raise InferenceError("this run's tokens.* has no chat roles (bos, eot, start/end header); chat needs a "
                                 "tokenizer with the chat pieces (`llada data tokenizer` reserves them).")

    def prompt_ids(self, message):
        t, encode = self.run.cfg.tokens, self.run.codec.encode
        if self.run.template is not None:
            return encode(self.run.template.render(self.turns + [("user", message)], add_generation_prompt=True))
        first = [t.bos_id] if not self.history else []
        head, body = chat.message("user", message, encode, t)
        return self.history + first + head + body + chat.header("assistant", encode, t)

    def say(self, message, key=None):
        """One turn: returns (answer text, the sample dict)."""
        prompt = self.prompt_ids(message)
        if len(prompt) + self.run.cfg.sampling.gen_length > self.run.cfg.model.max_seq_len:
            raise InferenceError(f"the conversation ({len(prompt)} tokens) plus sampling.gen_length exceeds "
                                 f"model.max_seq_len={self.run.cfg.model.max_seq_len}; start a new chat.")
        out = self.run.sample(None, key=key, prompt_ids=[prompt])
        row, ids = out["tokens"][0], self.run.ids
        if self.run.template is not None:
            answer = []
            for i in map(int, row[out["prompt_len"]:]):
                if i in (ids.eos_id, ids.eot_id):
                    break
                answer += [] if i == ids.mask_id else [i]
            text = self.run.codec.decode(answer)
            self.turns += [("user", message), ("assistant", text)]
            return text, out
        self.history = [int(i) for i in row if int(i) != ids.eos_id]
        answer = [int(i) for i in row[out["prompt_len"]:] if int(i) not in (ids.eos_id, ids.eot_id, ids.mask_id)]
        return self.run.codec.decode(answer), out


def generated_tokens(out, row=0):
    """The generated ids of one row (all of gen_length) and the step at which each was committed."""
    return out["tokens"][row, out["prompt_len"]:], out["order"][row]
