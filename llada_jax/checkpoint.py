"""Checkpoints with orbax: asynchronous, atomic saves of the whole run; restores onto any mesh; params-only restores.

A checkpoint step holds four items: `params`, `train` (step, RNG key, optimizer state, NaN-guard counters), `data`
(the input pipeline's position, JSON) and `config` (the resolved config, JSON). Orbax writes each step into a
temporary directory and renames it when complete, so a crash during a save leaves the previous step restorable.
Restoring takes abstract arrays carrying the *current* run's shardings, so a checkpoint saved on one mesh restores
onto another (8 devices -> 2 -> 1) with identical values.
"""
import os
import signal

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from llada_jax import config as config_lib, model as model_lib
from llada_jax.errors import LladaError

ITEMS = ("params", "train", "data", "config")
CHUNK_BYTES = 64 << 20  # the storage chunk of params that are not stacked per layer


def _handlers():
    return {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}


class CheckpointError(LladaError):
    pass


def _split(state):
    return state["params"], {k: v for k, v in state.items() if k != "params"}


def _path_name(path):
    """'/'-joined keys, the same for a dict, a namedtuple or a list (orbax metadata turns the latter into dicts)."""
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def _leaf_shapes(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_name(path): tuple(leaf.shape) for path, leaf in flat if hasattr(leaf, "shape")}


def mismatched_leaves(saved, wanted):
    """Human-readable differences between the shapes of two pytrees ({} when they agree)."""
    a, b = _leaf_shapes(saved), _leaf_shapes(wanted)
    out = {}
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out[k] = f"checkpoint {a.get(k, 'missing')} vs config {b.get(k, 'missing')}"
    return out


def params_save_args(params, m):
    """Storage chunks small enough to stream: one per layer for the stacked leaves of the model's table (a leading
    "layers" axis), <= CHUNK_BYTES otherwise, so a reader (conversion) decodes one layer at a time."""
    def args(p):
        stacked = p.axes[0] == "layers"
        return ocp.SaveArgs(shard_axes=(0,)) if stacked else ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES)
    return jax.tree.map(args, model_lib.params_like(params, m), is_leaf=model_lib.is_param)


def _save_params(params, cfg):
    return ocp.args.StandardSave(params, save_args=params_save_args(params, cfg.model))


def checkpoints_dir(run_dir):
    """The orbax directory of a run directory: its checkpoints/ (or `run_dir` itself when it holds the steps)."""
    directory = os.path.join(run_dir, "checkpoints")
    return directory if os.path.isdir(directory) else run_dir


def saved_steps(directory):
    """The sorted steps saved in an orbax directory ([] when it does not exist)."""
    if not os.path.isdir(directory):
        return []
    manager = ocp.CheckpointManager(os.path.abspath(directory), options=ocp.CheckpointManagerOptions(read_only=True))
    steps = sorted(manager.all_steps())
    manager.close()
    return steps


def _check_step(step, steps, directory):
    if step not in steps:
        raise CheckpointError(f"no checkpoint step {step} in {directory}; available: {steps}.")


def find_step(run_dir, step=None):
    """(orbax directory, step) of a run directory: `step` if it was saved, by default the latest."""
    directory = checkpoints_dir(run_dir)
    steps = saved_steps(directory)
    if not steps:
        raise CheckpointError(f"no checkpoint in {directory}; train first, or pass the run directory of a trained "
                              f"model (--workdir).")
    if step is None:
        return directory, steps[-1]
    _check_step(step, steps, directory)
    return directory, step


class Checkpointer:
    """The run directory's `checkpoints/`: save every `checkpoint.every_steps`, keep the last `checkpoint.keep`
    (plus every `checkpoint.keep_period`-th step when > 0)."""

    def __init__(self, directory, cfg):
        ck = cfg.checkpoint
        self.every = ck.every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=ck.keep if ck.keep > 0 else None,
            keep_period=ck.keep_period if ck.keep_period > 0 else None,
            enable_async_checkpointing=ck.async_save, create=True)
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

    def all_steps(self):
        return sorted(self.manager.all_steps())

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, data_state, cfg, force=False):
        params, rest = _split(state)
        return self.manager.save(step, args=ocp.args.Composite(
            params=_save_params(params, cfg), train=ocp.args.StandardSave(rest),
            data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(cfg.to_dict())), force=force)

    def save_params(self, step, params, cfg):
        """A step of params and config only (an imported model: fine-tuning, sampling and export read it)."""
        return self.manager.save(step, args=ocp.args.Composite(
            params=_save_params(params, cfg), config=ocp.args.JsonSave(cfg.to_dict())), force=True)

    def _restore_step(self, step, abstract_state):
        params, rest = _split(abstract_state)
        meta = self.manager.item_metadata(step)
        bad = {}
        for name, want in (("params", params), ("train", rest)):
            saved = meta[name] if meta is not None and name in meta else None
            if saved is not None:
                bad.update({f"{name}/{k}": v for k, v in mismatched_leaves(saved, want).items()})
        if bad:
            lines = "\n".join(f"  {k}: {v}" for k, v in list(bad.items())[:20])
            if len(bad) > 20:
                lines += f"\n  ... and {len(bad) - 20} more"
            raise CheckpointError(f"checkpoint step {step} in {self.directory} does not match this config's shapes:\n"
                                  f"{lines}\nRestore with the config the run was trained with "
                                  f"(its config.json), or start a new run directory.")
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params), train=ocp.args.StandardRestore(rest),
            data=ocp.args.JsonRestore()))
        return {"params": out["params"], **out["train"]}, out["data"]

    def restore(self, abstract_state, step=None, log=print):
        """(state, data_state) of `step` (default: the latest readable one), or None when there is no checkpoint.

        An unreadable step is reported by number and the previous one is tried; a shape mismatch is fatal."""
        steps = self.all_steps()
        if step is not None:
            _check_step(step, steps, self.directory)
            steps = [s for s in steps if s <= step]
        for s in reversed(steps):
            try:
                return self._restore_step(s, abstract_state)
            except CheckpointError:
                raise
            except Exception as e:  # corrupt or partial files
                log(f"warning: checkpoint step {s} in {self.directory} is unreadable ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); falling back to the previous step.")
        if steps:
            raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps {steps}).")
        return None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def restore_params(run_dir, abstract_params, step=None):
    """Params only (fine-tuning from a pre-trained run with a fresh optimizer, sampling, conversion)."""
    directory, step = find_step(run_dir, step)
    manager = ocp.CheckpointManager(os.path.abspath(directory), item_handlers=_handlers(),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    meta = manager.item_metadata(step)
    if meta is not None and meta.get("params") is not None:
        bad = mismatched_leaves(meta["params"], abstract_params)
        if bad:
            lines = "\n".join(f"  params/{k}: {v}" for k, v in bad.items())
            raise CheckpointError(f"params of step {step} in {directory} do not match the model config:\n{lines}")
    out = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    manager.close()
    return out["params"], step


def save_run_config(run_dir, cfg):
    """A run directory's config.json: the resolved config (what load_run_config reads back)."""
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))


def load_run_config(run_dir):
    """The resolved config a run was trained with (its config.json)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{path} not found: {run_dir} is not a llada run directory.")
    with open(path) as f:
        return config_lib.from_json(f.read())


class Preemption:
    """SIGTERM -> save at a step every host agrees on, then exit. Multi-host runs use JAX's preemption sync
    service (it catches SIGTERM itself); a single process catches SIGTERM here."""

    def __init__(self):
        self.flag = False
        self.multihost = jax.process_count() > 1
        if not self.multihost:
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        self.flag = True

    def reached(self, step):
        if self.multihost:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # preemption service disabled
                return False
        return self.flag

    def close(self):
        if not self.multihost:
            signal.signal(signal.SIGTERM, self._previous)
