"""Checkpoints with orbax: asynchronous, atomic saves of the whole run; restores onto any mesh; params-only restores.

A checkpoint step holds four items: `params`, `train` (step, RNG key, optimizer state, NaN-guard counters), `data`
(the input pipeline's position, JSON) and `config` (the resolved config, JSON). Orbax writes each step into a
temporary directory and renames it when complete, so a crash during a save leaves the previous step restorable.
Restoring takes abstract arrays carrying the *current* run's shardings, so a checkpoint saved on one mesh restores
onto another (8 devices -> 2 -> 1) with identical values.

Every reader goes through `read_newest`: it takes the newest step that reads back completely, says which steps it
skipped and why, and errors clearly when none is readable. A writer (`llada train`) then sets the skipped steps
aside (`Checkpointer.set_aside`: renamed `STEP.unreadable.TIME`, never deleted) so that it can save those steps
again. docs/checkpoints.md lists the faults tested and what each one does.

`Tiers` adds a local tier on fast storage of each host (`checkpoint.local_dir`), saved more often; on several
processes each keeps the shards it holds in a directory of its own (`HostCheckpointer`).
"""
import json
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from jax.experimental import multihost_utils

from llada_jax import model as model_lib
from llada_jax.errors import LladaError

ITEMS = ("params", "train", "data", "config")
RESUME_ITEMS = ("params", "train", "data")  # what resuming a run reads (`config` is a copy of config.json)
JSON_ITEMS = ("data", "config", "layout")
HOST_ITEMS = (*RESUME_ITEMS, "layout")  # what resuming reads from a process's own local directory (HostCheckpointer)
CHUNK_BYTES = 64 << 20  # the storage chunk of params that are not stacked per layer


def _handlers():
    return {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}


class CheckpointError(LladaError):
    pass


class LayoutError(CheckpointError):
    """A local step of several processes whose arrays the processes now hold differently (HostCheckpointer)."""


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


def params_save_args(params, m, lora=None):
    """Storage chunks small enough to stream: one per layer for the stacked leaves of the model's table (a leading
    "layers" axis), <= CHUNK_BYTES otherwise, so a reader (conversion) decodes one layer at a time."""
    def args(p):
        stacked = p.axes[0] == "layers"
        return ocp.SaveArgs(shard_axes=(0,)) if stacked else ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES)
    return jax.tree.map(args, model_lib.params_like(params, m, lora), is_leaf=model_lib.is_param)


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


# -- reading back ------------------------------------------------------------------------------------------------

def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _kvstore(item_dir, name=""):
    """The key-value store of an orbax item (ocdbt, or plain files), at array `name` when given."""
    base = {"driver": "file", "path": os.path.abspath(item_dir) + "/"}
    if os.path.exists(os.path.join(item_dir, "manifest.ocdbt")):
        return {"driver": "ocdbt", "base": base, **({"path": name + "/"} if name else {})}
    return {"driver": "file", "path": os.path.join(os.path.abspath(item_dir), name, "")}


def open_array(item_dir, name, context):
    """The tensorstore of array `name` ("blocks.q_proj") in an orbax item directory (zarr or zarr3 over ocdbt or
    plain files); raises tensorstore's error when it cannot be opened."""
    error = None
    for driver in ("zarr", "zarr3"):
        try:
            return ts.open({"driver": driver, "kvstore": _kvstore(item_dir, name)}, open=True,
                           context=context).result()
        except ValueError as e:
            error = error or e
    raise error


def _array_names(item_dir):
    """The arrays of an orbax item, from its key-value store's listing (which reads the whole index)."""
    keys = [k.decode() for k in ts.KvStore.open(_kvstore(item_dir)).result().list().result()]
    return sorted({k.rsplit("/", 1)[0] for k in keys if k.endswith(("/.zarray", "/zarr.json"))})


def short_reason(e):
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:160]}"


def step_problem(step_dir, items=RESUME_ITEMS):
    """Why the checkpoint step in `step_dir` cannot be read back (one short line), or None when it can: each of
    `items` is there, its metadata files parse and each of its arrays opens (its index and metadata read). Only
    metadata is read, so the check is cheap at any size; damage inside an array's chunks surfaces in the restore."""
    for item in items:
        item_dir = os.path.join(step_dir, item)
        if not os.path.isdir(item_dir):
            return f"its {item} item is missing"
        try:
            if item in JSON_ITEMS:
                _read_json(os.path.join(item_dir, "metadata"))
                continue
            meta_files = [os.path.join(item_dir, "_METADATA"), os.path.join(item_dir, "_sharding")]
            meta_dir = os.path.join(item_dir, "array_metadatas")
            if os.path.isdir(meta_dir):
                meta_files += [os.path.join(meta_dir, f) for f in sorted(os.listdir(meta_dir))]
            for path in meta_files:
                if os.path.exists(path):
                    _read_json(path)
            names = _array_names(item_dir)
            if not names:
                return f"{item}: no arrays"
            context = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
            for name in names:
                open_array(item_dir, name, context)
        except Exception as e:  # any damage: JSON, tensorstore, OS errors
            return f"{item}: {short_reason(e)}"
    return None


def _agreed_problem(step_dir, items):
    """step_problem as process 0 sees it, the same verdict on every host (each host may see the files differently,
    and hosts that disagree on the step would restore different states)."""
    problem = step_problem(step_dir, items) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
        bad = multihost_utils.broadcast_one_to_all(np.int32(problem is not None))
        problem = problem or ("unreadable on process 0" if int(bad) else None)
    return problem


def read_newest(directory, read, step=None, items=RESUME_ITEMS, log=print, above=None):
    """(step, read(step), skipped) for the newest step of an orbax directory that reads back completely: `step`
    only, when given, else every saved step from the newest down. A step is skipped, with a warning line saying which
    and why, when step_problem finds damage or when `read` fails with anything but a CheckpointError (on one host;
    on several, a failure there is fatal, since the hosts could not agree). skipped: [(step, reason)], newest first.
    above: only steps newer than it are tried (the local tier against the persistent tier's newest step).

    Returns None when the directory holds no step; raises CheckpointError when no step can be read back."""
    steps = [s for s in saved_steps(directory) if above is None or s > above]
    if not steps:
        return None
    if step is not None:
        _check_step(step, steps, directory)
    candidates = [step] if step is not None else steps[::-1]
    skipped = []
    for i, s in enumerate(candidates):
        step_dir = os.path.join(directory, str(s))
        problem = _agreed_problem(step_dir, items)
        if problem is None:
            try:
                return s, read(s), skipped
            except CheckpointError:
                raise
            except Exception as e:  # damage inside the arrays' chunks
                if jax.process_count() > 1:
                    raise CheckpointError(f"checkpoint step {s} in {directory} cannot be read back on process "
                                          f"{jax.process_index()} ({short_reason(e)}); move {step_dir} aside (e.g. to "
                                          f"{step_dir}.unreadable) and rerun to resume from the previous step.") from e
                problem = short_reason(e)
        skipped.append((s, problem))
        if step is None:
            then = f"trying step {candidates[i + 1]}" if i + 1 < len(candidates) else "no older step"
            log(f"warning: checkpoint step {s} in {directory} cannot be read back ({problem}); {then}.")
    if step is not None:
        raise CheckpointError(f"checkpoint step {step} in {directory} cannot be read back ({skipped[0][1]}); omit "
                              f"--step to use the newest step that reads back.")
    raise CheckpointError(f"no checkpoint step in {directory} can be read back (tried {steps[::-1]}; step "
                          f"{skipped[0][0]}: {skipped[0][1]}). Restore the files from a copy, or move {directory} "
                          f"away to start the run afresh.")


def _found(found, directory):
    if found is None:
        raise CheckpointError(f"no checkpoint in {directory}; train first, or pass the run directory of a trained "
                              f"model (--workdir).")
    return found


def find_step(run_dir, step=None, items=("params",), log=print):
    """(orbax directory, step) of a run directory: `step` if it was saved and reads back, by default the newest
    step that reads back (read_newest)."""
    directory = checkpoints_dir(run_dir)
    return directory, _found(read_newest(directory, lambda s: None, step, items, log), directory)[0]


class Checkpointer:
    """One orbax directory of a run: the persistent tier (the run directory's `checkpoints/`: save every
    `checkpoint.every_steps`, keep the last `checkpoint.keep`, plus every `checkpoint.keep_period`-th step when > 0)
    or the local tier (`checkpoint.local_dir`: every `checkpoint.local_every_steps`, keep `checkpoint.local_keep`).
    The writer of a run (it holds rundir.RunLock), so it also removes the temporary directories of saves a crash
    interrupted (never a committed step)."""

    shared = True  # one directory every process sees, which orbax writes collectively (HostCheckpointer: not)

    def __init__(self, directory, cfg, local=False):
        ck = cfg.checkpoint
        self.every = ck.local_every_steps if local else ck.every_steps
        keep, period = (ck.local_keep, 0) if local else (ck.keep, ck.keep_period)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep > 0 else None, keep_period=period if period > 0 else None,
            enable_async_checkpointing=ck.async_save, cleanup_tmp_directories=True, **self._manager_options())
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=self._item_handlers())
        self.unreadable = []  # [(step, reason)] skipped by the last restore

    # -- what HostCheckpointer changes: orbax's handlers and options, the array items' args, an extra item --------
    def _item_handlers(self):
        return _handlers()

    def _manager_options(self):
        return {"create": True}

    def _save_tree(self, tree, save_args=None):
        return ocp.args.StandardSave(tree, save_args=save_args)

    def _restore_tree(self, abstract_tree):
        return ocp.args.StandardRestore(abstract_tree)

    def _extra_items(self, state):
        return {}

    def _save_params(self, params, cfg):
        return self._save_tree(params, save_args=params_save_args(params, cfg.model, model_lib.lora_of(cfg)))

    def all_steps(self):
        return sorted(self.manager.all_steps())

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, data_state, cfg, force=False):
        params, rest = _split(state)
        return self.manager.save(step, args=ocp.args.Composite(
            params=self._save_params(params, cfg), train=self._save_tree(rest), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(cfg.to_dict()), **self._extra_items(state)), force=force)

    def save_params(self, step, params, cfg):
        """A step of params and config only (an imported model: fine-tuning, sampling and export read it)."""
        return self.manager.save(step, args=ocp.args.Composite(
            params=self._save_params(params, cfg), config=ocp.args.JsonSave(cfg.to_dict())), force=True)

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
            params=self._restore_tree(params), train=self._restore_tree(rest), data=ocp.args.JsonRestore()))
        return {"params": out["params"], **out["train"]}, out["data"]

    def restore(self, abstract_state, step=None, log=print, above=None):
        """(state, data_state) of `step` (default: the newest step, above `above` if given, that reads back), or
        None when there is no checkpoint. The steps skipped as unreadable are kept in `self.unreadable` for
        set_aside; a shape mismatch is fatal."""
        found = read_newest(self.directory, lambda s: self._restore_step(s, abstract_state), step, log=log,
                            above=above)
        if found is None:
            self.unreadable = []
            return None
        _, restored, self.unreadable = found
        return restored

    def set_aside(self, log=print):
        """Renames the steps the last restore skipped as unreadable to STEP.unreadable.TIME (never deletes them), so
        that this run can save those steps again."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for step, reason in self.unreadable:
            source = os.path.join(self.directory, str(step))
            target = f"{source}.unreadable.{stamp}"
            if not self.shared or jax.process_index() == 0:
                os.rename(source, target)
            log(f"set aside the unreadable checkpoint step {step} as {target} ({reason}); it is not deleted: "
                f"remove it when you no longer need it.")
        if self.unreadable:
            if self.shared and jax.process_count() > 1:
                multihost_utils.sync_global_devices("llada_set_aside")
            self.manager.reload()
        self.unreadable = []

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def layout(tree):
    """The part of each array of `tree` (arrays, or abstract arrays with shardings) that this process holds:
    {"processes": N, "process": i, "arrays": {path: sorted "[[start, stop] per dimension]" of its shards}}."""
    arrays = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if hasattr(leaf, "sharding"):
            indices = leaf.sharding.addressable_devices_indices_map(leaf.shape).values()
            arrays[_path_name(path)] = sorted({json.dumps([s.indices(n)[:2] for s, n in zip(index, leaf.shape)])
                                               for index in indices})
    return {"processes": jax.process_count(), "process": jax.process_index(), "arrays": arrays}


def _gathered(values):
    """[values of process 0, values of process 1, ...]: each process's list of ints >= 0, gathered on every one."""
    longest = int(np.max(multihost_utils.process_allgather(np.int32(len(values)))))
    row = np.full(longest + 1, -1, np.int32)
    row[:len(values)] = values
    return [[int(v) for v in r if v >= 0] for r in multihost_utils.process_allgather(row)]


def _processes_where(flag):
    """The processes on which `flag` (each process's own) is true."""
    return np.flatnonzero(multihost_utils.process_allgather(np.int32(flag))).tolist()


class HostCheckpointer(Checkpointer):
    """The local tier on several processes (hosts). Every process saves the shards of the state that it holds, and
    its own data-iterator state, to a directory of its own (`checkpoint.local_dir/process_N`, on its own disk), with
    the handlers orbax's emergency checkpoint manager uses for its local saves: no primary host, each process writes
    its own shards, and no barrier with the other processes, so a local save never waits for another host. A step is
    complete on a process when orbax has committed it there; its `layout` item records which part of each array
    that process holds.

    A restore takes the newest step, newer than `above`, that is complete and reads back on every process (they
    agree over jax.distributed); a step that any process lacks is passed over by all of them, with a line saying
    which processes lack it. A local step restores only onto the layout it was saved with (the same processes,
    mesh and sharding rules): it never reshards, and another layout is a LayoutError."""

    shared = False

    def _item_handlers(self):
        options = self._manager_options()["multiprocessing_options"]
        arrays = ocp.type_handlers.create_type_handler_registry((jax.Array, ocp.type_handlers.ArrayHandler(
            primary_host=None, replica_id=None, use_replica_parallel=False)))

        def tree():
            return ocp.PyTreeCheckpointHandler(multiprocessing_options=options, type_handler_registry=arrays)

        def json_():
            return ocp.JsonCheckpointHandler(multiprocessing_options=options)
        return {"params": tree(), "train": tree(), "data": json_(), "config": json_(), "layout": json_()}

    def _manager_options(self):  # the directory exists (Tiers claims it): orbax creates none with active_processes
        i = jax.process_index()
        return {"multiprocessing_options": ocp.options.MultiprocessingOptions(
                    primary_host=None, active_processes={i}, barrier_sync_key_prefix=f"llada_local_{i}"),
                "enable_per_process_directory_creation": True, "create": False}

    def _save_tree(self, tree, save_args=None):
        return ocp.args.PyTreeSave(tree, save_args=save_args)

    def _restore_tree(self, abstract_tree):
        return ocp.args.PyTreeRestore(abstract_tree, restore_args=ocp.checkpoint_utils.construct_restore_args(
            abstract_tree))

    def _extra_items(self, state):
        return {"layout": ocp.args.JsonSave(layout(state))}

    def _check_layout(self, step, abstract_state):
        """Raises LayoutError on every process when any process now holds other parts of the arrays than it saved."""
        saved, now = _read_json(os.path.join(self.directory, str(step), "layout", "metadata")), layout(abstract_state)
        if (saved["processes"], saved["process"]) != (now["processes"], now["process"]):
            diff = [f"saved as process {saved['process']} of {saved['processes']}, now {now['process']} of "
                    f"{now['processes']}"]
        else:
            diff = [f"{k}: saved {saved['arrays'].get(k, 'missing')}, now {now['arrays'].get(k, 'missing')}"
                    for k in sorted(set(saved["arrays"]) | set(now["arrays"]))
                    if saved["arrays"].get(k) != now["arrays"].get(k)]
        differ = _processes_where(bool(diff))
        if differ:
            local_dir = os.path.dirname(self.directory)
            here = f" (here {len(diff)} differ, e.g. {diff[0]})" if diff else ""
            raise LayoutError(
                f"local checkpoint step {step} in {local_dir} was saved with another layout of the state: "
                f"process(es) {differ} now hold other parts of the arrays{here}. A local step restores only onto "
                f"the layout it was saved with: rerun with the same processes, mesh.* and sharding rules, or move "
                f"{local_dir} aside on every host to resume from the persistent tier.")

    def restore(self, abstract_state, log=print, above=None):
        """(state, data_state) of the newest local step, newer than `above`, that every process has complete and
        reads back; None when there is none (every process then uses the persistent tier). Each process keeps its
        own steps newer than the one restored in `self.unreadable`, with why, for set_aside."""
        mine = [s for s in self.all_steps() if above is None or s > above]
        problems = {s: step_problem(os.path.join(self.directory, str(s)), HOST_ITEMS) for s in mine}
        everyone = _gathered([s for s in mine if problems[s] is None])
        candidates = sorted(set().union(*everyone), reverse=True)
        passed = {}  # step -> why every process passed it over

        def reason(t):  # why this process sets its own step t aside
            return problems[t] or passed.get(t, "not complete on every process")

        for i, s in enumerate(candidates):
            lacking = [p for p, steps in enumerate(everyone) if s not in steps]
            here = problems.get(s, "missing") if jax.process_index() in lacking else None
            if not lacking:
                self._check_layout(s, abstract_state)
                try:
                    restored = self._restore_step(s, abstract_state)
                except CheckpointError:
                    raise
                except Exception as e:  # damage inside the arrays' chunks: every process passes this step over
                    here = short_reason(e)
                lacking = _processes_where(here is not None)
                if not lacking:
                    self.unreadable = [(t, reason(t)) for t in mine if t > s]
                    return restored
            passed[s] = f"missing or unreadable on process(es) {lacking}" + (f"; here: {here}" if here else "")
            then = f"trying step {candidates[i + 1]}" if i + 1 < len(candidates) else "using the persistent tier"
            log(f"warning: local checkpoint step {s} in {os.path.dirname(self.directory)} is not complete on every "
                f"process ({passed[s]}); {then}.")
        self.unreadable = [(t, reason(t)) for t in mine]
        return None


class Tiers:
    """A run's checkpoints: the persistent tier (WORKDIR/checkpoints) and, with `checkpoint.local_dir`, a local tier
    on fast storage of each host (RAM disk, local SSD), saved more often (docs/checkpoints.md#the-local-tier): on one
    process a Checkpointer of `local_dir`, on several a HostCheckpointer of `local_dir/process_N` per process.
    A step that is due in both goes to the persistent tier only. On restart the newest step of either tier that
    reads back wins: a local step newer than the persistent tier's newest (on several processes: one that every
    process has), else the persistent tier's newest."""

    def __init__(self, workdir, cfg):
        self.persistent = Checkpointer(os.path.join(workdir, "checkpoints"), cfg)
        self.local = None
        if cfg.checkpoint.local_dir:
            if cfg.checkpoint.local_every_steps <= 0:
                raise CheckpointError(f"checkpoint.local_every_steps={cfg.checkpoint.local_every_steps}: with "
                                      f"checkpoint.local_dir set it must be a positive number of steps, e.g. 50.")
            if jax.process_count() > 1:  # each process keeps the shards it holds
                directory = os.path.join(cfg.checkpoint.local_dir, f"process_{jax.process_index()}")
                self.local = HostCheckpointer(_claim_local_dir(directory, workdir), cfg, local=True)
            else:
                self.local = Checkpointer(_claim_local_dir(cfg.checkpoint.local_dir, workdir), cfg, local=True)
        self.directory = self.persistent.directory
        self.restored_from = None  # the tier of the last restore: "persistent" | "local"

    def due(self, step, final):
        """The tiers to save at `step`: persistent at its cadence and at the final step, else local at its own."""
        if step % self.persistent.every == 0 or final:
            return (self.persistent,)
        if self.local is not None and step % self.local.every == 0:
            return (self.local,)
        return ()

    def restore(self, abstract_state, log=print):
        """(state, data_state) of the newest step of either tier that reads back, or None without any; says which
        tier it came from in `restored_from` and a line."""
        if self.local is not None:
            persistent = saved_steps(self.persistent.directory)
            above = persistent[-1] if persistent else None
            try:
                found = self.local.restore(abstract_state, log=log, above=above)
            except LayoutError:
                raise
            except CheckpointError as e:  # every newer local step is damaged: the persistent tier decides
                log(f"warning: no local checkpoint step newer than the persistent tier's reads back; using the "
                    f"persistent tier ({e})")
                newer = [s for s in saved_steps(self.local.directory) if above is None or s > above]
                self.local.unreadable, found = [(s, "unreadable") for s in newer[::-1]], None
            if found is not None:
                self.restored_from = "local"
                return found
        self.restored_from = "persistent"
        return self.persistent.restore(abstract_state, log=log)

    def set_aside(self, log=print):
        for tier in self._tiers():
            tier.set_aside(log)

    def wait(self):
        for tier in self._tiers():
            tier.wait()

    def close(self):
        for tier in self._tiers():
            tier.close()

    def _tiers(self):
        return [t for t in (self.persistent, self.local) if t is not None]


def _claim_local_dir(local_dir, workdir):
    """`local_dir` (checkpoint.local_dir, or a process's directory in it) as an orbax directory of this run's local
    tier: a RUN file inside names the run directory, so that two runs never share one local directory (an error
    says so)."""
    os.makedirs(local_dir, exist_ok=True)
    marker, run = os.path.join(local_dir, "RUN"), os.path.abspath(workdir)
    if os.path.exists(marker):
        with open(marker) as f:
            owner = f.read().strip()
        if owner != run:
            raise CheckpointError(f"the local checkpoint directory {local_dir} holds the local checkpoints of the "
                                  f"run {owner}; give each run its own checkpoint.local_dir (e.g. "
                                  f"/dev/shm/llada/<run name>), or remove {local_dir} if that run is over.")
    else:
        with open(marker, "w") as f:
            f.write(run + "\n")
    return local_dir


def restore_params(run_dir, abstract_params, step=None, log=print):
    """Params only (fine-tuning from a pre-trained run with a fresh optimizer, sampling, conversion): of `step`, by
    default of the newest step whose params read back. Returns (params, step)."""
    directory = checkpoints_dir(run_dir)
    manager = ocp.CheckpointManager(os.path.abspath(directory), item_handlers=_handlers(),
                                    options=ocp.CheckpointManagerOptions(read_only=True))

    def read(s):
        meta = manager.item_metadata(s)
        if meta is not None and meta.get("params") is not None:
            bad = mismatched_leaves(meta["params"], abstract_params)
            if bad:
                lines = "\n".join(f"  params/{k}: {v}" for k, v in bad.items())
                raise CheckpointError(f"params of step {s} in {directory} do not match the model config:\n{lines}")
        return manager.restore(s, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))

    try:
        found = read_newest(directory, read, step, ("params",), log)
    finally:
        manager.close()
    step, out, _ = _found(found, directory)
    return out["params"], step


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
