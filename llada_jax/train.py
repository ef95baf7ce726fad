"""The train state, the jitted sharded train step, and `llada train`'s step function for the loop (loop.py)."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llada_jax import diffusion, loop, mfu, model as model_lib, objectives, optim, settings, sharding
from llada_jax.data import sources
from llada_jax.errors import LladaError


class TrainError(LladaError):
    """A config that cannot train; the message says what is wrong and how to fix it."""


def validate(cfg, sharder):
    """The settings (settings.check: every value, at load), then what needs the mesh or joins groups: checks that
    would otherwise surface as a traceback deep inside JAX."""
    settings.check(cfg)
    tr, m = cfg.train, cfg.model
    obj = objectives.get(cfg)
    if tr.seq_len > m.max_seq_len:
        raise TrainError(f"train.seq_len={tr.seq_len} exceeds model.max_seq_len={m.max_seq_len}; lower "
                         f"--config.train.seq_len or raise --config.model.max_seq_len.")
    if sharder is not None:
        shards = sharder.batch_size_multiple()
        if tr.global_batch % (shards * tr.micro_batches):
            raise TrainError(f"train.global_batch={tr.global_batch} must be divisible by the batch shards "
                             f"(mesh data x fsdp = {shards}) times train.micro_batches={tr.micro_batches}; "
                             f"use a multiple of {shards * tr.micro_batches}.")
    if tr.global_batch % jax.process_count():
        raise TrainError(f"train.global_batch={tr.global_batch} must be divisible by the {jax.process_count()} hosts.")
    schedule = cfg.diffusion.block_size_schedule
    unit = cfg.diffusion.block_size_schedule_unit
    if schedule and (not obj.blockwise or any(len(e) != 2 for e in schedule)
                     or [e[0] for e in schedule] != sorted({e[0] for e in schedule})):
        raise TrainError(f"diffusion.block_size_schedule={schedule!r}: expected [(until, block_size), ...] with "
                         f"increasing until (in {unit}: diffusion.block_size_schedule_unit), for a blockwise "
                         f"objective (objective=block; objective is {cfg.objective!r}).")
    if obj.blockwise:
        for size in diffusion.block_sizes(cfg):
            if size > tr.seq_len or tr.seq_len % size:
                raise TrainError(f"train.seq_len={tr.seq_len} must be a multiple of diffusion.block_size={size} "
                                 f"(objective=block); use a divisor of {tr.seq_len}, or -1 for one block of the "
                                 f"whole sequence.")


def split_trainable(params, lora):
    """(trainable, frozen) parts of params: everything trains (frozen {}) unless LoRA, where only the adapters do."""
    if lora is None:
        return params, {}
    blocks = params["blocks"]
    return ({"blocks": {k: v for k, v in blocks.items() if "_lora_" in k}},
            {**params, "blocks": {k: v for k, v in blocks.items() if "_lora_" not in k}})


def join_trainable(trainable, frozen):
    """The inverse of split_trainable."""
    return {**frozen, **trainable, "blocks": {**frozen["blocks"], **trainable["blocks"]}} if frozen else trainable


class Setup:
    """Everything static a run needs: mesh, model, optimizer, shardings and the compiled step."""

    def __init__(self, cfg, devices=None):
        self.cfg = cfg
        self.mesh = sharding.make_mesh(cfg.mesh, devices)
        self.sharder = sharding.Sharder(self.mesh, cfg.sharding.rules)
        validate(cfg, self.sharder)
        self.lora = model_lib.lora_of(cfg)
        self.model = model_lib.Model(cfg.model, sharder=self.sharder, lora=self.lora)
        self.objective = objectives.get(cfg)
        self.tx, self.lr = optim.make_optimizer(cfg)
        self.param_sharding = self.sharder.tree(self.model.param_axes())
        abstract_params = split_trainable(self.model.abstract_params(), self.lora)[0]
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        opt_sharding = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, split_trainable(self.param_sharding, self.lora)[0],
            transform_non_params=lambda _: self.sharder.replicated)
        rep = self.sharder.replicated
        self.state_sharding = {"step": rep, "rng": rep, "params": self.param_sharding, "opt_state": opt_sharding,
                               **{k: rep for k in self.guard_init()}}
        self.batch_sharding = self.sharder.named(("batch", None))
        # The batch keeps the sharding put_batch gave it (tokens [B, L] and per-row [B] arrays differ in rank).
        self.step_fn = jax.jit(self._train_step, in_shardings=(self.state_sharding, None),
                               out_shardings=(self.state_sharding, rep), donate_argnums=(0,),
                               static_argnums=(2,))  # the block size of a block_size_schedule

    def split(self, params):
        """split_trainable under this run's LoRA."""
        return split_trainable(params, self.lora)

    def join(self, trainable, frozen):
        return join_trainable(trainable, frozen)

    # -- state -------------------------------------------------------------------------------------------------
    def init_state(self, seed=None):
        seed = self.cfg.seed if seed is None else seed

        def init(key):
            k_params, k_rng = jax.random.split(key)
            params = self.model.init(k_params)
            return {"step": jnp.zeros((), jnp.int32), "rng": k_rng, "params": params,
                    "opt_state": self.tx.init(split_trainable(params, self.lora)[0]), **self.guard_init()}

        return jax.jit(init, out_shardings=self.state_sharding)(jax.random.key_data(jax.random.key(seed)))

    @staticmethod
    def guard_init():
        """NaN-guard state: consecutive non-finite steps, the LR multiplier and the number of rollbacks so far."""
        return {"nan_streak": jnp.zeros((), jnp.int32), "lr_scale": jnp.ones((), jnp.float32),
                "rollbacks": jnp.zeros((), jnp.int32)}

    def abstract_state(self):
        """Shapes, dtypes and shardings of the train state (for restoring onto this run's mesh)."""
        shapes = jax.eval_shape(self.init_state)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                            self.state_sharding)

    def put_batch(self, local_batch):
        """Host-local numpy rows -> one global array per key, sharded over the batch axes."""
        return {k: jax.make_array_from_process_local_data(
            self.batch_sharding if v.ndim == 2 else self.sharder.named(("batch",)), v)
            for k, v in local_batch.items()}

    # -- the step ----------------------------------------------------------------------------------------------
    def loss_and_grads(self, params, batch, key, block_size=None):
        """Mean loss and gradients of the trainable params (split_trainable) over `train.micro_batches`
        micro-batches (gradient accumulation). The noise is drawn once for the whole batch, so accumulation changes
        only the summation order, not the estimate. block_size: objective=block's (a Python int; default
        diffusion.block_size)."""
        n = self.cfg.train.micro_batches
        noise = objectives.draw_noise(key, batch, self.cfg, block_size)
        params, frozen = split_trainable(params, self.lora)
        grad_fn = jax.value_and_grad(
            lambda p, b, z: objectives.loss_given_noise(self.model, join_trainable(p, frozen), b, z, self.cfg,
                                                        block_size), has_aux=True)
        if n == 1:
            (loss, aux), grads = grad_fn(params, batch, noise)
            return loss, aux, grads
        split = lambda x: self.sharder.constrain(x.reshape((n, x.shape[0] // n) + x.shape[1:]),
                                                 (None, "batch") + (None,) * (x.ndim - 1))  # rows stay sharded
        micro = jax.tree.map(split, (batch, noise))

        def body(acc, xs):
            out = grad_fn(params, *xs)
            return jax.tree.map(jnp.add, acc, out), None

        first = jax.tree.map(lambda x: x[0], micro)
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, *first))
        ((loss, aux), grads), _ = jax.lax.scan(body, zeros, micro)
        return loss / n, jax.tree.map(lambda a: a / n, aux), jax.tree.map(lambda g: g / n, grads)

    def block_size_at(self, step):
        """The block size diffusion.block_size_schedule gives training step `step` (a Python int; step_fn compiles
        once per distinct size), or None without a schedule."""
        if self.objective.blockwise and self.cfg.diffusion.block_size_schedule:
            return self.objective.block_size(self.cfg, step)
        return None

    def step(self, state, batch, step):
        """step_fn at training step `step`, with its block size (block_size_at)."""
        size = self.block_size_at(step)
        return self.step_fn(state, batch) if size is None else self.step_fn(state, batch, size)

    def apply_grads(self, state, loss, grads):
        """One optimizer update of `state` (a train state) with the gradients of its trainable params: (new_state,
        grad_norm, finite). The NaN guard: a non-finite loss or gradient leaves params and optimizer state untouched
        and is counted in nan_streak; the step counter advances either way."""
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        trainable, frozen = split_trainable(state["params"], self.lora)
        updates, opt_state = self.tx.update(grads, state["opt_state"], trainable)
        updates = jax.tree.map(lambda u: u * state["lr_scale"].astype(u.dtype), updates)  # AdamW is linear in LR
        params = join_trainable(optax.apply_updates(trainable, updates), frozen)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = {**state, "step": state["step"] + 1, "params": keep(params, state["params"]),
                     "opt_state": keep(opt_state, state["opt_state"]),
                     "nan_streak": jnp.where(finite, 0, state["nan_streak"] + 1)}
        return new_state, grad_norm, finite

    def _train_step(self, state, batch, block_size=None):
        step = state["step"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
        loss, aux, grads = self.loss_and_grads(state["params"], batch, key, block_size)
        new_state, grad_norm, finite = self.apply_grads(state, loss, grads)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": self.lr(step) * state["lr_scale"],
                   "skipped": 1 - finite.astype(jnp.int32), **aux}
        return new_state, metrics


def make_data(cfg):
    """The training batches of `cfg.data.source` (data/sources.py): an iterator of host-local batches with
    get_state / set_state."""
    source = sources.get(cfg)
    try:
        return source.make(cfg, jax.process_index(), jax.process_count())
    except (OSError, ValueError) as e:  # missing store, config/tokenizer mismatch, malformed data
        raise TrainError(f"data.source={cfg.data.source!r}: {e}") from e


class TrainStep:
    """`llada train`'s step function for loop.Loop: a batch of `data` (an iterator of host-local batches with
    get_state / set_state) through Setup's jitted step; checkpoints carry the data iterator's state."""
    name = "step"

    def __init__(self, setup, data):
        self.setup, self.data, self.cfg = setup, data, setup.cfg
        self.tokens_per_step, self.flops_per_step = optim.tokens_per_step(self.cfg), mfu.flops_per_step(self.cfg)
        peak = mfu.device_peak_flops()
        self.peak_total = peak * jax.device_count() if peak else None

    def resume(self, state, data_state):
        if data_state is not None:
            self.data.set_state(data_state)
        return int(state["step"])

    def begin(self, state):
        pass

    def fetch(self, clock):
        return self.setup.put_batch(clock.next_batch(self.data))

    def compile_key(self, step):
        return {"block_size": self.setup.block_size_at(step)}

    def run(self, state, batch, step):
        return self.setup.step(state, batch, step)

    def data_state(self, step):
        return self.data.get_state()

    def report(self, fetched, step, steps_done, elapsed, state):
        steps = self.cfg.train.steps
        row = {"loss": float(np.mean([x["loss"] for x in fetched])), "lr": float(fetched[-1]["lr"]),
               "grad_norm": float(fetched[-1]["grad_norm"]),
               "tokens_per_sec": steps_done * self.tokens_per_step / elapsed,
               "mfu": self.flops_per_step * steps_done / elapsed / self.peak_total if self.peak_total else None,
               "skipped_steps": int(sum(int(x["skipped"]) for x in fetched)),
               "rollbacks": int(state["rollbacks"]), "tokens": step * self.tokens_per_step}
        mfu_txt = f" mfu {row['mfu']:.1%}" if row["mfu"] is not None else ""
        skip_txt = f" | skipped {row['skipped_steps']} non-finite" if row["skipped_steps"] else ""
        line = (f"step {step}/{steps} loss {row['loss']:.4f} lr {row['lr']:.2e} grad_norm {row['grad_norm']:.3f} | "
                f"{row['tokens_per_sec']:,.0f} tok/s{mfu_txt}{loop.eta(steps - step, elapsed, steps_done)}{skip_txt}")
        return row, line


def train(cfg, workdir, log=print, data=None, devices=None, hooks=()):
    """Trains `cfg` into `workdir` (loop.Loop with TrainStep), resuming from its newest readable checkpoint if there
    is one (newer unreadable steps are set aside). Returns (state, history).
    `data`: the data source (default: make_data(cfg)), an iterator of host-local batches with get_state / set_state.
    `devices`: the mesh's devices (default: all). `hooks`: (fn, every) pairs for Loop.add_hook."""
    started = time.time()
    log = log if jax.process_index() == 0 else (lambda *a, **k: None)
    setup = Setup(cfg, devices)
    log(f"model: {model_lib.count_params(cfg.model) / 1e6:.2f}M params "
        f"({model_lib.count_params(cfg.model, False) / 1e6:.2f}M non-embedding); mesh {dict(setup.mesh.shape)} on "
        f"{jax.device_count()} {jax.devices()[0].platform} devices in {jax.process_count()} process(es)")
    runner = loop.Loop(setup, TrainStep(setup, make_data(cfg) if data is None else data), workdir, log, started)
    for fn, every in hooks:
        runner.add_hook(fn, every)
    return runner.run()
