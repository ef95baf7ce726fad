"""The training loop of every run: `llada train` and `llada rl` are step functions plugged into one Loop.

A step function (train.TrainStep, rl_train.RLStep) says how to run one step, what its checkpoints carry besides the
train state, and how a logged row reads. The loop owns everything else, the same for every run:
- the run directory's lock, restore-or-init (`start_state`), the resolved config, metrics rows of steps that run
  again cut off;
- its hooks, each with its own cadence: the profiler (train.profile_steps), metrics (train.log_every: metrics.jsonl,
  TensorBoard, W&B), goodput events (events.jsonl, goodput.py), both checkpoint tiers (checkpoint.Tiers.due),
  preemption (SIGTERM: save, then exit), the NaN guard's rollback (train.nan_patience), and hooks added with
  `add_hook(fn, every=N)`.
"""
import json
import os
import time

import jax
import jax.numpy as jnp

from llada_jax import checkpoint as ckpt_lib, goodput, rundir
from llada_jax.errors import LladaError


class LoopError(LladaError):
    """A run that cannot go on; the message says what is wrong and how to fix it."""


class Preempted(SystemExit):
    pass


def fmt_time(seconds):
    """`1h02m` or `3m04s`."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Profiler:
    """`train.profile_steps="START:COUNT"`: a jax.profiler trace of steps START..START+COUNT-1 in WORKDIR/profile.
    The spec is checked when the config is loaded (config_views)."""

    def __init__(self, spec, workdir, log):
        self.start = self.stop = -1
        self.dir, self.log, self.active = os.path.join(workdir, "profile"), log, False
        if spec:
            start, count = (int(x) for x in spec.split(":"))
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
        raise LoopError(f"logging.wandb={lg.wandb!r} needs the wandb package: pip install wandb (or pip install "
                        f"\"llada-jax[wandb]\"); or pass --config.logging.wandb=off.") from None
    return wandb.init(project=lg.wandb_project, name=lg.wandb_run_name or os.path.basename(os.path.abspath(workdir)),
                      dir=workdir, mode=lg.wandb, config=cfg.to_dict(), resume="allow", id=rundir.wandb_id(workdir))


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
            abstract = setup.split(abstract)[1]
        params, from_step = ckpt_lib.restore_params(cfg.checkpoint.init_from, abstract, log=log)
        if setup.lora:
            params = setup.join(setup.split(state["params"])[0], params)
        state = {**state, "params": params}
        log(f"initialised params from {cfg.checkpoint.init_from} (step {from_step}); fresh optimizer state")
    return state, None, 0.0


def rollback(setup, ckpt, state, cfg, log):
    """The NaN guard's last resort: the last good checkpoint (state, data_state), with the LR multiplier lowered by
    `train.nan_lr_factor` and the rollback counted."""
    ckpt.wait()
    bad_step = int(state["step"])
    restored = ckpt.restore(setup.abstract_state(), log=log)
    if restored is None:
        raise LoopError(f"{cfg.train.nan_patience} consecutive non-finite steps at step {bad_step} and no "
                        f"checkpoint to roll back to; lower optim.peak_lr or check the data.")
    new_state, data_state = restored
    rep = setup.sharder.replicated
    new_state["lr_scale"] = jax.device_put(state["lr_scale"] * cfg.train.nan_lr_factor, rep)
    new_state["rollbacks"] = jax.device_put(state["rollbacks"] + 1, rep)
    new_state["nan_streak"] = jax.device_put(jnp.zeros((), jnp.int32), rep)
    ckpt.set_aside(log)
    return new_state, data_state


class Loop:
    """Runs `stepper` (a step function) from the run's newest checkpoint to train.steps with the hooks around it.

    A step function has:
      name                       how a step is called in messages ("step", "RL step")
      resume(state, data_state)  -> the loop's step: where a fresh or restored state starts (data_state None: fresh)
      begin(state)               once the state is known (e.g. the reference policy of RL)
      fetch(clock)               the step's host inputs (timed as data), or None
      compile_key(step)          {field: value} that selects the compiled program (a new key compiles: timed alone)
      run(state, inputs, step)   -> (state, metrics): one step
      data_state(step)           the JSON-able state a checkpoint of `step` carries besides the train state
      report(fetched, step, steps_done, elapsed, state) -> (row, line): the metrics row and the progress line
    """

    def __init__(self, setup, stepper, workdir, log=print, started=None):
        self.setup, self.stepper, self.workdir, self.cfg = setup, stepper, workdir, setup.cfg
        self.log = log if jax.process_index() == 0 else (lambda *a, **k: None)
        self.started = time.time() if started is None else started
        self.hooks = []

    def add_hook(self, fn, every=1):
        """Calls fn(state, step) after every `every`-th step; fn may return a new state (None keeps it)."""
        self.hooks.append((fn, every))

    def run(self):
        """Trains under the run directory's lock (rundir.HostsLock). Returns (state, history: the logged rows)."""
        os.makedirs(self.workdir, exist_ok=True)
        with rundir.HostsLock(self.workdir, self.log):
            return self._run()

    def _run(self):
        setup, stepper, cfg, workdir, log = self.setup, self.stepper, self.cfg, self.workdir, self.log
        tr = cfg.train
        ckpt = ckpt_lib.Tiers(workdir, cfg)
        state, data_state, restore_seconds = start_state(setup, cfg, ckpt, log)
        step = stepper.resume(state, data_state)
        events = goodput.EventLog(workdir, jax.process_index() == 0)
        events.emit("start", at=self.started, step=step)
        if data_state is not None:
            events.emit("checkpoint_restore", seconds=restore_seconds, step=step)
        rundir.truncate_metrics(workdir, step, log)  # rows of steps that run again, torn lines
        if jax.process_index() == 0:  # after the restore: a config that cannot resume leaves the run untouched
            rundir.save_config(workdir, cfg)
        stepper.begin(state)
        writer, preemption = MetricsWriter(workdir, cfg), ckpt_lib.Preemption()
        history, pending, compiled = [], [], set()  # compiled: the step programs run in this process
        t_last, step_last = time.perf_counter(), step
        clock = goodput.StepClock(events, step)
        profiler = Profiler(tr.profile_steps, workdir, log)
        try:
            while step < tr.steps:
                profiler.before(step)
                inputs = stepper.fetch(clock)
                fields = stepper.compile_key(step)
                key = tuple(sorted(fields.items()))
                if key in compiled:
                    state, metrics = stepper.run(state, inputs, step)
                else:  # compiles: timed alone, once the steps queued before it have finished
                    jax.block_until_ready(state)
                    with clock.timed("compile", step=step + 1, **fields):
                        state, metrics = jax.block_until_ready(stepper.run(state, inputs, step))
                    compiled.add(key)
                step += 1
                pending.append(metrics)
                for fn, every in self.hooks:
                    if step % every == 0:
                        new = fn(state, step)
                        state = state if new is None else new
                log_now = step % tr.log_every == 0 or step == tr.steps
                save_to = ckpt.due(step, step == tr.steps)
                save_now = ckpt.persistent in save_to
                preempted = preemption.reached(step)
                if (log_now or save_to or preempted) and int(state["nan_streak"]) >= tr.nan_patience:
                    clock.steps_done(step)  # recorded, so that the summary counts them as run again
                    t_rollback, bad_step = time.perf_counter(), step
                    state, data_state = rollback(setup, ckpt, state, cfg, log)
                    step = stepper.resume(state, data_state)
                    rundir.truncate_metrics(workdir, step, log)
                    log(f"NaN guard: {tr.nan_patience} consecutive non-finite steps up to {stepper.name} "
                        f"{bad_step}; restored the checkpoint of {stepper.name} {step} and set the LR multiplier to "
                        f"{float(state['lr_scale']):g}")
                    events.emit("rollback", from_step=bad_step, to_step=step, seconds=time.perf_counter() - t_rollback)
                    clock.restart(step)
                    pending, t_last, step_last = [], time.perf_counter(), step
                    continue
                if log_now and pending:
                    fetched = jax.device_get(pending)
                    clock.steps_done(step)
                    pending = []
                    now = time.perf_counter()
                    row, line = stepper.report(fetched, step, step - step_last, now - t_last, state)
                    writer.write(step, row)
                    history.append({"step": step, **row})
                    log(line)
                    t_last, step_last = now, step
                    clock.restart(step)  # the logging above is not step time
                elif preempted:  # the steps since the last log point: saved below, so productive
                    jax.block_until_ready(state)
                    clock.steps_done(step)
                if preempted and not save_now:
                    save_to = (ckpt.persistent,)
                for tier in save_to:
                    with clock.timed("checkpoint_save_local" if tier is ckpt.local else "checkpoint_save", step=step):
                        tier.save(step, state, stepper.data_state(step), cfg, force=True)
                    writer.checkpoint_saved(step)
                if save_now:
                    writer.goodput(step, workdir)
                if preempted:
                    with clock.timed("checkpoint_save", step=step):
                        ckpt.wait()
                    events.emit("end", step=step, reason="preempted")
                    raise Preempted(f"preempted (SIGTERM): saved the checkpoint of {stepper.name} {step} in "
                                    f"{ckpt.directory}; rerun the same command to resume.")
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


def eta(steps_left, elapsed, steps_done):
    """` | eta 3m04s` at the pace of the last log interval."""
    return f" | eta {fmt_time(steps_left * elapsed / max(steps_done, 1))}"
