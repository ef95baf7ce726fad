"""The train state, the jitted sharded train step and the training loop."""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llada_jax import (
    checkpoint as ckpt_lib,
    diffusion,
    goodput,
    mfu,
    model as model_lib,
    objectives,
    optim,
    rundir,
    sharding,
)
from llada_jax.data import pipeline, sft, synthetic
from llada_jax.errors import LladaError

WANDB_MODES = ("off", "online", "offline")  # logging.wandb


class TrainError(LladaError):
    """A config that cannot train; the message says what is wrong and how to fix it."""


def validate(cfg, sharder):
    """Checks that would otherwise surface as a traceback deep inside JAX."""
    tr, m = cfg.train, cfg.model
    obj = objectives.get(cfg)
    if tr.seq_len > m.max_seq_len:
        raise TrainError(f"train.seq_len={tr.seq_len} exceeds model.max_seq_len={m.max_seq_len}; lower "
                         f"--config.train.seq_len or raise --config.model.max_seq_len.")
    shards = sharder.batch_size_multiple()
    if tr.global_batch % (shards * tr.micro_batches):
        raise TrainError(f"train.global_batch={tr.global_batch} must be divisible by the batch shards "
                         f"(mesh data x fsdp = {shards}) times train.micro_batches={tr.micro_batches}; "
                         f"use a multiple of {shards * tr.micro_batches}.")
    if tr.global_batch % jax.process_count():
        raise TrainError(f"train.global_batch={tr.global_batch} must be divisible by the {jax.process_count()} hosts.")
    if m.d_model % m.n_heads and m.head_dim <= 0:
        raise TrainError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
                         f"set model.head_dim.")
    if m.n_heads % m.n_kv_heads:
        raise TrainError(f"model.n_heads={m.n_heads} must be a multiple of model.n_kv_heads={m.n_kv_heads} (GQA).")
    if tr.lora_rank < 0 or (tr.lora_rank and tr.lora_alpha <= 0):
        raise TrainError(f"train.lora_rank={tr.lora_rank}, train.lora_alpha={tr.lora_alpha}: LoRA needs a rank > 0 "
                         f"and alpha > 0 (lora_rank=0 trains every weight).")
    schedule = cfg.diffusion.block_size_schedule
    unit = diffusion.schedule_unit(cfg)
    if unit not in diffusion.SCHEDULE_UNITS:
        raise TrainError(f"diffusion.block_size_schedule_unit={unit!r}; expected one of "
                         f"{', '.join(diffusion.SCHEDULE_UNITS)}.")
    if schedule and (not obj.blockwise or any(len(e) != 2 for e in schedule)
                     or [e[0] for e in schedule] != sorted({e[0] for e in schedule})):
        raise TrainError(f"diffusion.block_size_schedule={schedule!r}: expected [(until, block_size), ...] with "
                         f"increasing until (in {unit}: diffusion.block_size_schedule_unit), for a blockwise "
                         f"objective (objective=block; objective is {cfg.objective!r}).")
    if cfg.logging.wandb not in WANDB_MODES:
        raise TrainError(f"logging.wandb={cfg.logging.wandb!r}; expected one of {', '.join(WANDB_MODES)}.")
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
    """The data source of `cfg.data.source`: an iterator of host-local batches with get_state / set_state."""
    if cfg.data.source == "synthetic":
        corpus = synthetic.SyntheticCorpus(cfg.train.seq_len, cfg.seed, cfg.data.synthetic_task,
                                           cfg.data.synthetic_format)
        return synthetic.SyntheticSource(corpus, cfg.train.global_batch, jax.process_index(), jax.process_count())
    if cfg.data.source in ("store", "sft"):
        make = pipeline.make_pretrain_source if cfg.data.source == "store" else sft.make_sft_source
        try:
            return make(cfg)
        except (OSError, ValueError) as e:  # missing store, config/tokenizer mismatch, malformed data
            raise TrainError(f"data.source={cfg.data.source!r}: {e}") from e
    raise TrainError(f"unknown data.source={cfg.data.source!r}; expected 'synthetic', 'store' or 'sft'.")


class MetricsWriter:
    """metrics.jsonl plus TensorBoard events in the run directory, and a Weights & Biases run unless
    logging.wandb="off"; only process 0 writes. metrics.jsonl is opened for each row, so a rewrite of the file
    (rundir.truncate_metrics after a rollback) is never written past."""

    def __init__(self, workdir, cfg):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = self.wandb = None
        if self.active:
            try:
                from tensorboardX import SummaryWriter  # lazily: ~2 s to import; only process 0 writes
                self.tb = SummaryWriter(workdir)
            except ImportError:  # TensorBoard is optional; metrics.jsonl always exists
                pass
            if cfg.logging.wandb != "off":
                self.wandb = _wandb_init(workdir, cfg)

    def write(self, step, metrics):
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._series(step, metrics)

    def _series(self, step, series):
        """Scalars {name: value} of `step` to TensorBoard and W&B."""
        if self.tb:
            for k, v in series.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb:
            self.wandb.log(series, step=step)

    def goodput(self, step, workdir):
        """The run's goodput so far (goodput.summarize of its events.jsonl) as `goodput/*` series: goodput (a
        fraction of the wall time) and badput_<cause> (fractions); written at persistent saves and at the end."""
        if not (self.active and (self.tb or self.wandb)):
            return
        s = goodput.summarize(workdir)
        total = s["total_seconds"] or 1.0
        self._series(step, {"goodput/goodput": s["goodput"],
                            **{f"goodput/badput_{cause}": seconds / total for cause, seconds in s["badput"].items()}})

    def checkpoint_saved(self, step):
        """Marks step `step` as saved: W&B's `checkpoint_step` metric (its last value in the run summary)."""
        if self.wandb:
            self.wandb.log({"checkpoint_step": step}, step=step)

    def close(self):
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _wandb_init(workdir, cfg):
    """The W&B run of a run directory (logging.wandb = online | offline), its files under WORKDIR/wandb. Its id is
    kept in the run directory (rundir.wandb_id), so a resumed run continues the same W&B run."""
    lg = cfg.logging
    try:
        import wandb  # lazily: an optional dependency (the `wandb` extra)
    except ImportError:
        raise TrainError(f"logging.wandb={lg.wandb!r} needs the wandb package: pip install wandb (or pip install "
                         f"\"llada-jax[wandb]\"); or pass --config.logging.wandb=off.") from None
    return wandb.init(project=lg.wandb_project, name=lg.wandb_run_name or os.path.basename(os.path.abspath(workdir)),
                      dir=workdir, mode=lg.wandb, config=cfg.to_dict(), resume="allow", id=rundir.wandb_id(workdir))


def _fmt_time(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Preempted(SystemExit):
    pass


class Profiler:
    """`train.profile_steps="START:COUNT"`: a jax.profiler trace of steps START..START+COUNT-1 in WORKDIR/profile."""

    def __init__(self, spec, workdir, log):
        self.start = self.stop = -1
        self.dir, self.log, self.active = os.path.join(workdir, "profile"), log, False
        if spec:
            try:
                start, count = (int(x) for x in spec.split(":"))
            except ValueError:
                raise TrainError(f"train.profile_steps={spec!r}; expected START:COUNT, e.g. "
                                 f"--config.train.profile_steps=10:3.") from None
            self.start, self.stop = start, start + count

    def before(self, step):
        """Called before running step `step` (0-based)."""
        if step == self.start and not self.active:
            jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
            self.active = True
        elif step == self.stop:
            self.close()

    def close(self):
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
            self.log(f"profiler: trace of steps {self.start}..{self.stop - 1} written to {self.dir}")


def train(cfg, workdir, log=print, data=None, devices=None):
    """Trains `cfg` into `workdir`, resuming from its newest readable checkpoint if there is one (newer unreadable
    steps are set aside). Holds the run directory's lock (rundir.RunLock) throughout. Returns (state, history).
    `data`: the data source (default: make_data(cfg)), an iterator of host-local batches with get_state / set_state.
    `devices`: the mesh's devices (default: all). The loop's events (goodput.py) go to WORKDIR/events.jsonl."""
    started = time.time()
    log = log if jax.process_index() == 0 else (lambda *a, **k: None)
    setup = Setup(cfg, devices)
    os.makedirs(workdir, exist_ok=True)
    with rundir.HostsLock(workdir, log):
        return _train(setup, cfg, workdir, log, data, started)


def start_state(setup, cfg, ckpt, log):
    """The state a run starts from: (state, data_state, restore_seconds). The newest readable checkpoint of
    `ckpt` (a checkpoint.Tiers; unreadable newer steps are set aside) with its data state, else a fresh state
    (data_state None), its params from checkpoint.init_from when set (under LoRA: the base weights; the adapters
    start fresh)."""
    t_restore = time.perf_counter()
    restored = ckpt.restore(setup.abstract_state(), log=log)
    if restored is not None:
        state, data_state = restored
        ckpt.set_aside(log)
        tier = getattr(ckpt, ckpt.restored_from)
        log(f"resuming from the checkpoint of step {int(state['step'])} in {tier.directory} ({ckpt.restored_from} "
            f"tier)")
        return state, data_state, time.perf_counter() - t_restore
    state = setup.init_state()
    if cfg.checkpoint.init_from:
        abstract = setup.abstract_state()["params"]
        if setup.lora:
            abstract = split_trainable(abstract, setup.lora)[1]
        params, from_step = ckpt_lib.restore_params(cfg.checkpoint.init_from, abstract, log=log)
        if setup.lora:
            params = join_trainable(split_trainable(state["params"], setup.lora)[0], params)
        state = {**state, "params": params}
        log(f"initialised params from {cfg.checkpoint.init_from} (step {from_step}); fresh optimizer state")
    return state, None, 0.0


def _train(setup, cfg, workdir, log, data, started):
    m, tr = cfg.model, cfg.train
    log(f"model: {model_lib.count_params(m) / 1e6:.2f}M params ({model_lib.count_params(m, False) / 1e6:.2f}M "
        f"non-embedding); mesh {dict(setup.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices"
        f" in {jax.process_count()} process(es)")
    data = make_data(cfg) if data is None else data
    ckpt = ckpt_lib.Tiers(workdir, cfg)
    state, data_state, restore_seconds = start_state(setup, cfg, ckpt, log)
    if data_state is not None:
        data.set_state(data_state)
    step = int(state["step"])
    events = goodput.EventLog(workdir, jax.process_index() == 0)
    events.emit("start", at=started, step=step)
    if data_state is not None:
        events.emit("checkpoint_restore", seconds=restore_seconds, step=step)
    rundir.truncate_metrics(workdir, step, log)  # rows of steps that run again, torn lines
    if jax.process_index() == 0:  # after the restore: a config that cannot resume leaves the run untouched
        rundir.save_config(workdir, cfg)
    writer = MetricsWriter(workdir, cfg)
    preemption = ckpt_lib.Preemption()
    tokens_per_step, flops_per_step = optim.tokens_per_step(cfg), mfu.flops_per_step(cfg)
    peak = mfu.device_peak_flops()
    peak_total = peak * jax.device_count() if peak else None
    history, pending, compiled = [], [], set()  # compiled: the block sizes step_fn has run with in this process
    t_last, step_last = time.perf_counter(), step
    clock = goodput.StepClock(events, step)
    profiler = Profiler(tr.profile_steps, workdir, log)
    try:
        while step < tr.steps:
            profiler.before(step)
            batch = setup.put_batch(clock.next_batch(data))
            size = setup.block_size_at(step)
            if size in compiled:
                state, metrics = setup.step(state, batch, step)
            else:  # compiles: timed alone, once the steps queued before it have finished
                jax.block_until_ready(state)
                with clock.timed("compile", step=step + 1, block_size=size):
                    state, metrics = jax.block_until_ready(setup.step(state, batch, step))
                compiled.add(size)
            step += 1
            pending.append(metrics)
            log_now = step % tr.log_every == 0 or step == tr.steps
            save_to = ckpt.due(step, step == tr.steps)
            save_now = ckpt.persistent in save_to
            preempted = preemption.reached(step)
            if log_now or save_to or preempted:
                if int(state["nan_streak"]) >= tr.nan_patience:
                    clock.steps_done(step)  # recorded, so that the summary counts them as run again
                    t_rollback, bad_step = time.perf_counter(), step
                    state, step = _rollback(setup, ckpt, data, state, cfg, workdir, log)
                    events.emit("rollback", from_step=bad_step, to_step=step,
                                seconds=time.perf_counter() - t_rollback)
                    clock.restart(step)
                    pending, t_last, step_last = [], time.perf_counter(), step
                    continue
            if log_now and pending:
                fetched = jax.device_get(pending)
                clock.steps_done(step)
                pending = []
                now = time.perf_counter()
                elapsed, steps_done = now - t_last, step - step_last
                row = {"loss": float(np.mean([x["loss"] for x in fetched])), "lr": float(fetched[-1]["lr"]),
                       "grad_norm": float(fetched[-1]["grad_norm"]),
                       "tokens_per_sec": steps_done * tokens_per_step / elapsed,
                       "mfu": flops_per_step * steps_done / elapsed / peak_total if peak_total else None,
                       "skipped_steps": int(sum(int(x["skipped"]) for x in fetched)),
                       "rollbacks": int(state["rollbacks"]), "tokens": step * tokens_per_step}
                writer.write(step, row)
                history.append({"step": step, **row})
                eta = (tr.steps - step) * elapsed / max(steps_done, 1)
                mfu_txt = f" mfu {row['mfu']:.1%}" if row["mfu"] is not None else ""
                skip_txt = f" | skipped {row['skipped_steps']} non-finite" if row["skipped_steps"] else ""
                log(f"step {step}/{tr.steps} loss {row['loss']:.4f} lr {row['lr']:.2e} grad_norm "
                    f"{row['grad_norm']:.3f} | {row['tokens_per_sec']:,.0f} tok/s{mfu_txt} | eta {_fmt_time(eta)}"
                    f"{skip_txt}")
                t_last, step_last = now, step
                clock.restart(step)  # the logging above is not step time
            elif preempted:  # the steps since the last log point: saved below, so productive
                jax.block_until_ready(state)
                clock.steps_done(step)
            if preempted and not save_now:
                save_to = (ckpt.persistent,)
            for tier in save_to:
                with clock.timed("checkpoint_save_local" if tier is ckpt.local else "checkpoint_save", step=step):
                    tier.save(step, state, data.get_state(), cfg, force=True)
                writer.checkpoint_saved(step)
            if save_now:
                writer.goodput(step, workdir)
            if preempted:
                with clock.timed("checkpoint_save", step=step):
                    ckpt.wait()
                events.emit("end", step=step, reason="preempted")
                raise Preempted(f"preempted (SIGTERM): saved the checkpoint of step {step} in {ckpt.directory}; "
                                f"rerun the same command to resume.")
        if profiler.active:
            jax.block_until_ready(state)
        with clock.timed("checkpoint_save", step=step):
            ckpt.wait()
        events.emit("end", step=step, reason="done")
        writer.goodput(step, workdir)
    finally:
        profiler.close()
        preemption.close()
        writer.close()
        ckpt.close()
    return state, history


def _rollback(setup, ckpt, data, state, cfg, workdir, log):
    """The NaN guard's last resort: restore the last good checkpoint, lowering the LR by `train.nan_lr_factor`."""
    ckpt.wait()
    bad_step = int(state["step"])
    restored = ckpt.restore(setup.abstract_state(), log=log)
    if restored is None:
        raise TrainError(f"{cfg.train.nan_patience} consecutive non-finite steps at step {bad_step} and no "
                         f"checkpoint to roll back to; lower optim.peak_lr or check the data.")
    new_state, data_state = restored
    data.set_state(data_state)
    rep = setup.sharder.replicated
    new_state["lr_scale"] = jax.device_put(state["lr_scale"] * cfg.train.nan_lr_factor, rep)
    new_state["rollbacks"] = jax.device_put(state["rollbacks"] + 1, rep)
    new_state["nan_streak"] = jax.device_put(jnp.zeros((), jnp.int32), rep)
    ckpt.set_aside(log)
    step = int(new_state["step"])
    rundir.truncate_metrics(workdir, step, log)
    log(f"NaN guard: {cfg.train.nan_patience} consecutive non-finite steps up to step {bad_step}; restored the "
        f"checkpoint of step {step} and set the LR multiplier to {float(new_state['lr_scale']):g}")
    return new_state, step
