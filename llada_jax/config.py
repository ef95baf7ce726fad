"""The default config, config files (`get_config(arg)`) and `--config.a.b=value` overrides.

Every key any module reads is defined here, so a typo in an override is caught by name (with close matches).
"""
import ast
import difflib
import importlib.util
import json
import traceback
from pathlib import Path

import ml_collections

from llada_jax.errors import LladaError
from llada_jax.sampling_args import SamplingArgs

PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"  # `configs/` ships inside the package
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # ... and sits beside it in a checkout


class ConfigError(LladaError):
    """A config file or override is wrong; the message says what, what was expected and how to fix it."""


def default_config():
    """All keys with their defaults: the tiny CPU model on the built-in synthetic corpus."""
    c = ml_collections.ConfigDict()
    c.name = "tiny"
    c.seed = 0
    c.objective = "mdm"  # "mdm" (masked diffusion, the paper), "arm" (autoregressive baseline) or "block" (BD3-LM)

    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = 64
    m.d_model = 128
    m.n_layers = 4
    m.n_heads = 4
    m.n_kv_heads = 2
    m.head_dim = -1  # -1: d_model // n_heads
    m.ffn_dim = 384
    m.max_seq_len = 4096
    m.rope_theta = 500000.0
    m.norm_eps = 1e-5
    m.param_dtype = "float32"
    m.dtype = "float32"  # compute dtype of matmuls; "bfloat16" on accelerators
    m.scan_layers = False  # True: one lax.scan over stacked layers (fast compiles; the accelerator configs); XLA:CPU
    #                          runs the unrolled loop about 1.2x faster (benchmarks/vs_torch.py)
    m.remat = "none"  # none | full | save_dots | save_dots_no_batch
    # auto (splash on TPU, cuDNN on GPU in bf16, flash on CPU, else xla) | xla | flash | cudnn | splash
    m.attention = "auto"
    # with mesh.context > 1: allgather (each device's queries over the gathered keys and values) | ring (key/value
    # chunks passed around the context devices; causal and block masks in zig-zag order). docs/architecture.md
    m.context_parallel = "allgather"
    m.loss_chunk = 512  # > 0: output head + loss this many tokens at a time, skipping positions without loss; 0: off
    m.init_std = -1.0  # -1: the release's "mitchell" init (std 1/sqrt(fan_in)); > 0: a plain truncated normal
    m.tie_embeddings = False  # True: no lm_head; the output head is wte transposed (GGUF / Llama tied heads)
    m.shift_logits = False  # True: the logits at position i come from position i - 1, as an AR head's (model.shift;
    #                         adapting an autoregressive model to diffusion); position 0 is then never masked

    # Token ids by role. A model trained with its own vocabulary reserves its own ids; only the 8B layout uses
    # the released tokenizer's ids (docs/architecture.md, "Token ids by role").
    c.tokens = t = ml_collections.ConfigDict()
    t.pad_id = 0
    t.bos_id = 1
    t.eos_id = 0  # EOS doubles as padding, as in the release
    t.mask_id = 2
    t.eot_id = 3
    t.start_header_id = 4
    t.end_header_id = 5

    c.diffusion = d = ml_collections.ConfigDict()
    d.eps = 1e-3  # p = (1 - eps) t + eps
    d.block_size = -1  # objective=block: positions per block (train.seq_len a multiple of it); -1: train.seq_len
    # objective=block, LLaDA 2.0's schedule over the block size: [(until_step, block_size), ...] in increasing
    # until_step; a step before until_step uses that entry's size (the first that applies), later steps
    # diffusion.block_size. E.g. warm up 1 -> 4 -> 32 -> seq_len, hold, decay back to 32: [(1000, 1), (2000, 4),
    # (3000, 32), (90000, 4096)] with block_size 32. The step compiles once per distinct size.
    d.block_size_schedule = []
    d.block_size_schedule_unit = "steps"  # what until counts: "steps" or "tokens" (training tokens before the step)

    c.train = tr = ml_collections.ConfigDict()
    tr.steps = 600
    tr.global_batch = 32
    tr.seq_len = 64
    tr.micro_batches = 1  # gradient accumulation: the global batch is split into this many micro-batches
    tr.log_every = 25
    tr.profile_steps = ""  # "START:COUNT": a jax.profiler trace of these steps in WORKDIR/profile ("" = off)
    tr.nan_patience = 5  # after this many consecutive non-finite steps, restore the last good checkpoint
    tr.nan_lr_factor = 1.0  # ... and multiply the learning rate by this factor (the paper resumed at a lower LR)
    tr.lora_rank = 0  # > 0: LoRA adapters of this rank on the blocks' projections train, everything else is frozen
    tr.lora_alpha = 16.0  # LoRA's scale is lora_alpha / lora_rank (docs/adaptation.md#lora)

    c.optim = o = ml_collections.ConfigDict()
    o.peak_lr = 3e-3
    o.b1 = 0.9
    o.b2 = 0.95
    o.adam_eps = 1e-8
    o.weight_decay = 0.1
    o.decay_norms = False
    o.decay_embeddings = False
    o.clip_norm = 1.0
    o.schedule = "wsd"  # wsd | cosine | constant
    o.warmup_steps = 50
    # Warmup-Stable-Decay (paper section 2.3), milestones in tokens (step * global_batch * seq_len).
    o.drop_tokens = -1.0  # after this many tokens the LR drops to drop_lr (-1: never)
    o.drop_lr = 1e-4
    o.decay_tokens = -1.0  # the linear decay to final_lr runs over the last decay_tokens of total_tokens
    o.decay_fraction = 0.2  # ... or, when decay_tokens is -1, over this fraction of total_tokens
    o.total_tokens = -1.0  # -1: train.steps * tokens per step
    o.final_lr = 3e-4
    o.cosine_final_fraction = 0.1  # cosine: final LR as a fraction of the peak

    c.mesh = ms = ml_collections.ConfigDict()
    ms.data = 1
    ms.fsdp = -1  # -1: all remaining devices
    ms.context = 1  # context parallelism: the sequence of the activations split over this many devices
    ms.tensor = 1
    ms.dcn_data = 1  # multi-slice: sizes of the mesh axes across slices (data-centre network)
    ms.dcn_fsdp = 1
    ms.dcn_context = 1
    ms.dcn_tensor = 1

    # Logical axis -> mesh axes (MaxText vocabulary). Parameters and activations name logical axes only.
    c.sharding = sh = ml_collections.ConfigDict()
    sh.rules = [
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", ("fsdp", "context")),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("head_dim", None),
        ("layers", None),
        ("norm", None),
        ("act_seq", "context"),
        ("act_embed", None),
    ]
    # The rule set of inference (inference.load_run: `llada sample / chat / eval`, sweeps): params laid out as in
    # training, the batch replicated, so that prompt batches of any size fit the mesh.
    # The sequence splits over mesh.context as in training (sampling and the likelihood of long sequences).
    sh.inference_rules = [(name, None if name in ("batch", "act_embed") else axes) for name, axes in sh.rules]

    c.data = da = ml_collections.ConfigDict()
    # synthetic (the built-in corpus) | store (token stores, data/pipeline.py) | sft (chat JSONL)
    da.source = "synthetic"
    da.random_length_prob = 0.01  # fraction of sequences cut to a random length in {1..seq_len}
    da.synthetic_task = "arithmetic"
    da.synthetic_format = "packed"  # packed (pre-training) | sft (one prompt/answer per row, EOS-padded; SFT loss)
    da.path = ""  # store: prepared dirs (`llada data prepare --out`), comma-separated; sft: JSONL files / globs
    da.split = "train"  # store: which split of a prepared dir (train | val)
    da.weights = ""  # store: mixture weights of the data.path stores, comma-separated ("" = proportional to size)
    da.seed = -1  # shuffle seed; -1: the run's seed
    da.document_mask = False  # store: add segment_ids so attention stays within documents (the paper: False)
    da.threads = 4  # grain prefetch threads per process
    da.workers = 0  # grain prefetch worker processes (batches do not depend on it)
    da.prefetch = 8  # batches buffered ahead
    da.tokenizer = ""  # sft: the sentencepiece .model
    # "": the built-in chat template (Llama-3 style, from tokens.*); else a model's own Jinja template (e.g. the ChatML
    # of a GGUF; data/chat.py), used by SFT data and `llada chat`; relative paths are also looked up in the run dir
    da.chat_template = ""
    da.sft_overlong = "drop"  # sft: examples longer than train.seq_len are dropped or truncated (answer tail)

    # The reverse process: the fields, defaults and "off" values of sampling_args.SamplingArgs.
    c.sampling = SamplingArgs().to_config()

    # `llada eval` (and sweeps): likelihood settings and the built-in synthetic tasks.
    c.eval = ev = ml_collections.ConfigDict()
    # comma-separated built-in tasks scored by their reward ("" = none); `llada eval` scores those the run trained
    # on (evaluate.trained_tasks: data.synthetic_task of the synthetic corpus, rl.task; none for an imported run,
    # whose checkpoint is step 0), every one when named on its command line (--tasks / --config.eval.tasks)
    ev.tasks = "arithmetic"
    ev.n_examples = 128  # examples per task
    ev.batch = 32  # prompts sampled at once
    ev.mc_samples = 128  # Monte Carlo samples of the likelihood estimator (Algorithm 3)
    ev.mc_batch = 16  # ... per mini-batch (stratified mask counts within it)
    ev.heldout = ""  # held-out text for the perplexity: "" = the val split of data.path's first store; else a
    #                  prepared dir or store, PATH[:SPLIT] (split default train: a `prepare --val_fraction=0` output)
    ev.elbo_samples = 1  # Monte Carlo draws of (t, mask) per held-out sequence for the ELBO bound
    # `llada eval --text`: tokens per scored row; -1: train.seq_len for a run trained here, the model's context
    # (model.max_seq_len, at most 2048) for an imported run (`llada convert`: checkpoint step 0; evaluate.context_len)
    ev.text_len = -1

    # `llada rl` (docs/rl.md): reinforcement learning of a trained run (checkpoint.init_from) on a built-in task's
    # reward; train.steps counts RL steps (one batch of rollouts each), checkpoint.every_steps too.
    c.rl = rl = ml_collections.ConfigDict()
    rl.algorithm = "grpo"  # grpo (d1's diffu-GRPO) | vrpo (LLaDA 1.5: DPO on ELBO estimates)
    rl.task = ""  # the built-in task whose training prompts and reward are used ("": data.synthetic_task)
    rl.prompts_per_step = 16  # prompts per RL step (a multiple of the batch shards, mesh data x fsdp)
    rl.group_size = 8  # completions sampled per prompt (G), with the sampling.* settings at rl.temperature
    rl.temperature = 1.0  # of the rollouts (evaluation keeps sampling.temperature)
    rl.inner_steps = 1  # optimizer updates per batch of rollouts (mu); each draws new masks
    rl.beta = 0.04  # grpo: weight of the k3 KL to the reference (0: no reference pass)
    rl.clip_eps = 0.5  # grpo: PPO clip range (d1: 0.5)
    rl.p_mask = 0.15  # grpo: probability of masking each prompt token in the mean-field pass (d1)
    rl.normalize = "sequence"  # grpo: sequence (each completion's token mean, then the mean) | token
    rl.scale_advantages = True  # grpo: divide the group-centred rewards by the group's std (False: d1's trainer)
    rl.dpo_beta = 0.1  # vrpo: DPO's beta
    rl.elbo_samples = 8  # vrpo: timesteps per ELBO estimate, one mask each (n_t = n, n_mask = 1)
    rl.prompt_width = -1  # prompts are left-padded to this many tokens (-1: train.seq_len - sampling.gen_length)

    c.checkpoint = ck = ml_collections.ConfigDict()
    ck.every_steps = 200
    ck.keep = 3  # keep the last K checkpoints ...
    ck.keep_period = 0  # ... plus every M-th step when > 0
    ck.async_save = True
    ck.init_from = ""  # a run directory: start from its params with a fresh optimizer (fine-tuning, SFT)
    ck.local_dir = ""  # a local tier on fast storage of each host (e.g. /dev/shm/llada/RUN), saved more often;
    #                    the newest step of either tier resumes (docs/checkpoints.md#the-local-tier)
    ck.local_every_steps = 50
    ck.local_keep = 2

    # Where the metrics go besides metrics.jsonl and TensorBoard (always written); docs/operations.md.
    c.logging = lg = ml_collections.ConfigDict()
    lg.wandb = "off"  # off | online | offline: a Weights & Biases run (pip install wandb), files in WORKDIR/wandb
    lg.wandb_project = "llada-jax"
    lg.wandb_run_name = ""  # "": the run directory's name
    c.lock()  # config files may change values but not invent keys: typos fail loudly
    return c


# The released 8B tokenizer (docs/architecture.md): its vocabulary size and its ids by role (the `tokens.*` keys).
RELEASE_VOCAB = 126464
RELEASE_TOKENS = {"mask_id": 126336, "bos_id": 126080, "eos_id": 126081, "pad_id": 126081, "eot_id": 126348,
                  "start_header_id": 126346, "end_header_id": 126347}


# Model sizes by name: (d_model, n_layers, n_heads, n_kv_heads, ffn_dim).
MODEL_SIZES = {
    "30m": (512, 8, 8, 4, 1408),  # configs/small.py, pretrain_store.py and sft.py
    "1b": (2048, 22, 32, 4, 5634),  # paper Table 5: GQA with 4 KV heads
    "8b": (4096, 32, 32, 32, 12288),  # paper Table 5, the released checkpoint's layout (MHA)
}


def set_model_size(c, size, vocab_size=None):
    """Sets c.model's sizes to MODEL_SIZES[size] (and its vocabulary, if given); returns c."""
    m = c.model
    m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = MODEL_SIZES[size]
    if vocab_size is not None:
        m.vocab_size = vocab_size
    return c


def paper_recipe(c):
    """The paper's pre-training recipe (section 2.3) and the released tokenizer's ids, for the paper-sized configs."""
    c.model.vocab_size = RELEASE_VOCAB
    c.model.max_seq_len = 4096
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.scan_layers = True
    c.tokens.update(RELEASE_TOKENS)
    c.train.seq_len = 4096
    c.train.global_batch = 1280
    c.train.steps = int(2.3e12 // (1280 * 4096)) + 1
    c.train.log_every = 10
    o = c.optim
    o.peak_lr, o.warmup_steps, o.weight_decay = 4e-4, 2000, 0.1
    o.drop_tokens, o.drop_lr = 1.2e12, 1e-4
    o.total_tokens, o.decay_tokens, o.final_lr = 2.3e12, 0.3e12, 1e-5
    c.checkpoint.every_steps = 1000
    return c


# ---------------------------------------------------------------------------------------------------------------
# Loading config files and applying overrides.

def find_file(path, folder=""):
    """The Python file `path` names (config and sweep files): the path itself, else its name (with or without .py)
    under `configs/<folder>` of the checkout or of the installed package; None if there is none."""
    p = Path(path)
    if p.exists():
        return p
    for root in (REPO_CONFIGS / folder, PACKAGED_CONFIGS / folder):
        for cand in (root / p, root / p.name, root / (p.name + ".py")):
            if cand.exists():
                return cand
    return None


def builtin_files(folder=""):
    """The names of the built-in files in `configs/<folder>` (for error messages)."""
    return sorted({q.name for root in (REPO_CONFIGS / folder, PACKAGED_CONFIGS / folder) for q in root.glob("*.py")
                   if not q.name.startswith("_")})


def load_module(path, prefix):
    """Executes the Python file `path` as a fresh module named `prefix_<stem>` and returns it."""
    spec = importlib.util.spec_from_file_location(f"{prefix}_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec="configs/tiny.py"):
    """Loads `path[:arg]`: a Python file whose `get_config(arg=None)` returns a ConfigDict."""
    path, _, arg = spec.partition(":")
    p = find_file(path)
    if p is None:
        raise ConfigError(f"config file {path!r} not found. Built-in configs: {', '.join(builtin_files())}. "
                          f"Pass --config=configs/NAME.py or a path to your own file defining get_config().")
    try:
        module = load_module(p, "llada_config")
    except Exception as e:
        raise ConfigError(f"config file {p} fails to load: {failure(e, p)}. Fix the file.") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{p} defines no get_config(); a config file must define get_config(arg=None).")
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except ConfigError:
        raise
    except Exception as e:  # a bad ARG or a bug in the file: one line that says where
        call = f"get_config({arg!r})" if arg else "get_config()"
        raise ConfigError(f"{p}: {call} failed: {failure(e, p)}. Check the argument after ':' against the file's "
                          f"docstring (`--config={path}:ARG`).") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"{p}: get_config() returned a {type(cfg).__name__}; it must return an "
                          f"ml_collections.ConfigDict (start from llada_jax.config.default_config()).")
    return cfg


def failure(error, path):
    """`Type: message (at PATH:LINE)` of an exception raised while running the file `path` (its innermost line
    in that file, if any)."""
    here = Path(path).resolve()
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == here]
    if isinstance(error, SyntaxError) and error.lineno:
        frames = [traceback.FrameSummary(str(path), error.lineno, "")]
    where = f" (at {path}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


def _all_keys(cfg, prefix=""):
    out = []
    for k, v in cfg.items():
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out += _all_keys(v, prefix + k + ".")
    return out


def _parse_value(text, old):
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(old, bool):
            low = text.lower()
            if low in ("true", "false"):
                return low == "true"
        raise ConfigError(f"could not parse {text!r}; expected a {type(old).__name__} like {old!r}.") from None
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
        value = type(old)(value)
    if old is not None and not isinstance(value, type(old)):
        raise ConfigError(f"{text!r} is a {type(value).__name__}; expected a {type(old).__name__} like {old!r}.")
    return value


def override(cfg, dotted, text):
    """Sets `cfg.<dotted>` from the command-line string `text`, typed after the existing value."""
    keys = _all_keys(cfg)
    if dotted not in keys:
        close = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join('--config.' + k for k in close)}?" if close else ""
        raise ConfigError(f"unknown config key --config.{dotted}.{hint} (`llada train --print_config` lists all keys.)")
    *parents, leaf = dotted.split(".")
    node = cfg
    for k in parents:
        node = node[k]
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigError(f"--config.{dotted} is a group of keys, not a value; set one of its keys instead.")
    try:
        value = _parse_value(text, node[leaf])
    except ConfigError as e:
        raise ConfigError(f"--config.{dotted}={text}: {e}") from None
    with node.unlocked():
        node[leaf] = value
    return cfg


def build_config(spec=None, overrides=()):
    """Config file (default: the tiny config) plus `[(dotted_key, text), ...]` overrides."""
    cfg = load_config(spec or "configs/tiny.py")
    for k, v in overrides:
        override(cfg, k, v)
    return cfg


def to_json(cfg):
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text):
    return ml_collections.ConfigDict(json.loads(text))
