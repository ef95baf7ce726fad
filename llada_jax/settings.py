"""Typed views of the config's groups, checked when a config is loaded (before anything compiles or a directory is
written): `check(cfg)`.

Each view (Model, Train, Data, Optim, RL; the sampling block has sampling_args.SamplingArgs) names every key of its
group with its type, and the keys whose values are limited say which values are allowed. A wrong value is one line:
the key, the value and what is allowed. Checks that need the devices (mesh shapes, batch shards) stay with the run
(train.validate).
"""
import dataclasses
import typing

from llada_jax import attention, context_parallel, diffusion, model as model_lib, objectives, optim, rl
from llada_jax.data import sources, synthetic, tasks
from llada_jax.errors import LladaError


class SettingsError(LladaError):
    """A config value that is not allowed; the message names the key, the value and the allowed values."""


def one_of(values):
    """A key whose value is one of `values` (a tuple, or a callable giving them: a table's names)."""
    return dataclasses.field(metadata={"one_of": values})


def at_least(bound):
    return dataclasses.field(metadata={"at_least": bound})


DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Model:
    vocab_size: int = at_least(1)
    d_model: int = at_least(1)
    n_layers: int = at_least(1)
    n_heads: int = at_least(1)
    n_kv_heads: int = at_least(1)
    head_dim: int
    ffn_dim: int = at_least(1)
    max_seq_len: int = at_least(1)
    rope_theta: float
    norm_eps: float
    param_dtype: str = one_of(DTYPES)
    dtype: str = one_of(DTYPES)
    scan_layers: bool
    remat: str = one_of(lambda: tuple(model_lib.REMAT_POLICIES))
    attention: str = one_of(lambda: ("auto",) + tuple(attention.BACKENDS))
    context_parallel: str = one_of(context_parallel.STRATEGIES)
    loss_chunk: int = at_least(0)
    init_std: float
    tie_embeddings: bool
    shift_logits: bool


@dataclasses.dataclass(frozen=True)
class Train:
    steps: int = at_least(0)
    global_batch: int = at_least(1)
    seq_len: int = at_least(1)
    micro_batches: int = at_least(1)
    log_every: int = at_least(1)
    profile_steps: str
    nan_patience: int = at_least(1)
    nan_lr_factor: float
    lora_rank: int = at_least(0)
    lora_alpha: float


@dataclasses.dataclass(frozen=True)
class Data:
    source: str = one_of(lambda: tuple(sources.TABLE))
    random_length_prob: float
    synthetic_task: str = one_of(lambda: tuple(tasks.TASKS))
    synthetic_format: str = one_of(synthetic.FORMATS)
    path: str
    split: str = one_of(("train", "val"))
    weights: str
    seed: int
    document_mask: bool
    threads: int = at_least(0)
    workers: int = at_least(0)
    prefetch: int = at_least(1)
    tokenizer: str
    chat_template: str
    sft_overlong: str = one_of(("drop", "truncate"))


@dataclasses.dataclass(frozen=True)
class Optim:
    peak_lr: float
    b1: float
    b2: float
    adam_eps: float
    weight_decay: float
    decay_norms: bool
    decay_embeddings: bool
    clip_norm: float
    schedule: str = one_of(optim.SCHEDULES)
    warmup_steps: int = at_least(0)
    drop_tokens: float
    drop_lr: float
    decay_tokens: float
    decay_fraction: float
    total_tokens: float
    final_lr: float
    cosine_final_fraction: float


@dataclasses.dataclass(frozen=True)
class RL:
    algorithm: str = one_of(lambda: tuple(rl.ALGORITHMS))
    task: str = one_of(lambda: ("",) + tuple(tasks.TASKS))
    prompts_per_step: int = at_least(1)
    group_size: int = at_least(2)
    temperature: float
    inner_steps: int = at_least(1)
    beta: float
    clip_eps: float
    p_mask: float
    normalize: str = one_of(rl.NORMALIZE)
    scale_advantages: bool
    dpo_beta: float
    elbo_samples: int = at_least(1)
    prompt_width: int


VIEWS = {"model": Model, "train": Train, "data": Data, "optim": Optim, "rl": RL}
WANDB_MODES = ("off", "online", "offline")


def _fail(key, value, expected):
    raise SettingsError(f"{key}={value!r}; expected {expected}. Pass --config.{key}=VALUE with an allowed value.")


def view(cfg, group):
    """The typed view of `cfg.<group>`, every value checked against its field's type and allowed values."""
    cls, block = VIEWS[group], cfg[group]
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key, value, kind = f"{group}.{f.name}", block[f.name], hints[f.name]
        ok_type = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok_type = float(value), True
        if not ok_type:
            _fail(key, value, f"a {kind.__name__}")
        allowed = f.metadata.get("one_of")
        if allowed is not None:
            allowed = allowed() if callable(allowed) else allowed
            if value not in allowed:
                _fail(key, value, "one of " + ", ".join(repr(a) if a == "" else str(a) for a in allowed))
        if "at_least" in f.metadata and value < f.metadata["at_least"]:
            _fail(key, value, f"at least {f.metadata['at_least']}")
        values[f.name] = value
    return cls(**values)


def check(cfg):
    """Every group's view, then the rules that join keys; raises SettingsError with one line. Returns the views."""
    views = {group: view(cfg, group) for group in VIEWS}
    objectives.get(cfg)  # objective: one of the table's
    m, tr = views["model"], views["train"]
    if cfg.logging.wandb not in WANDB_MODES:
        _fail("logging.wandb", cfg.logging.wandb, "one of " + ", ".join(WANDB_MODES))
    if tr.profile_steps:
        start, _, count = tr.profile_steps.partition(":")
        if not (start.isdigit() and count.isdigit()):
            _fail("train.profile_steps", tr.profile_steps, "START:COUNT, e.g. 10:3 (\"\" = off)")
    if tr.lora_rank and tr.lora_alpha <= 0:
        _fail("train.lora_alpha", tr.lora_alpha, "> 0 with train.lora_rank > 0 (lora_rank=0 trains every weight)")
    if m.n_heads % m.n_kv_heads:
        _fail("model.n_kv_heads", m.n_kv_heads, f"a divisor of model.n_heads={m.n_heads} (GQA)")
    if m.d_model % m.n_heads and m.head_dim <= 0:
        _fail("model.head_dim", m.head_dim, f"> 0: model.d_model={m.d_model} is not divisible by model.n_heads="
                                            f"{m.n_heads}")
    unit = cfg.diffusion.block_size_schedule_unit
    if unit not in diffusion.SCHEDULE_UNITS:
        _fail("diffusion.block_size_schedule_unit", unit, "one of " + ", ".join(diffusion.SCHEDULE_UNITS))
    tasks.task_names(cfg.eval.tasks)  # each a built-in task
    return views
