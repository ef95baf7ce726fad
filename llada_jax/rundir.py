"""A run directory's own files: the writer's lock, `config.json`, `metrics.jsonl` and `wandb_id` (checkpoints/ is
checkpoint.py's, events.jsonl goodput.py's).

One `llada train` writes a run directory at a time. `RunLock` holds `llada.lock` (JSON: host, pid, start time, the
command) for as long as the run trains; a second writer is refused with a line naming the holder. A lock whose
process is gone is taken over with a warning: on the same host the pid (and its start time) tells; on another host
(a shared file system) the lock's heartbeat does: the holder touches the file every `HEARTBEAT_S` seconds, and a
lock untouched for `STALE_S` seconds is stale. Multi-host runs take the lock once, on process 0, and every host
follows process 0's verdict.

Damaged files are repaired where that is safe and reported in one line otherwise: `metrics.jsonl` rows that do not
parse (a torn last line after a crash) are dropped with a warning; a `config.json` that does not parse is replaced,
for readers, by the copy every checkpoint step keeps (a warning names the step).
"""
import json
import os
import socket
import sys
import threading
import time
import uuid

import jax
import numpy as np
from jax.experimental import multihost_utils

from llada_jax import checkpoint, config as config_lib
from llada_jax.errors import LladaError

LOCK_NAME = "llada.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0


class RunDirError(LladaError):
    """A run directory that is in use, damaged or not a run directory; the message says how to fix it."""


# -- the writer's lock -------------------------------------------------------------------------------------------

def _process_start(pid):
    """The start time of process `pid` in clock ticks since boot (Linux), to tell a reused pid apart; None when
    unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid, start):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return start is None or _process_start(pid) in (None, start)


def describe(holder):
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {started}, "
            f"command: {holder.get('command', '?')}")


class RunLock:
    """`with RunLock(run_dir, log):` the one-writer lock of a run directory (see the module docstring)."""

    def __init__(self, run_dir, log=print):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.log = log
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                     "process_start": _process_start(os.getpid()), "command": " ".join(sys.argv),
                     "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread = None

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # torn or empty: judged by its age

    def _stale(self, holder):
        """Why the lock `holder` is stale (a line), or None while its process may still run."""
        try:
            age = time.time() - os.path.getmtime(self.path)
        except OSError:
            return "it is gone"
        if not holder:
            return "it does not parse" if age > 5 else None  # a writer may be between creating and writing it
        if holder.get("host") == self.info["host"]:
            if not _pid_alive(int(holder.get("pid", -1)), holder.get("process_start")):
                return f"its process {holder.get('pid')} is gone"
            return None
        if age > STALE_S:
            return f"its heartbeat stopped {age:.0f} s ago (host {holder.get('host')}; stale after {STALE_S:.0f} s)"
        return None

    def _try_create(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self):
        """Takes the lock or raises RunDirError naming the holder."""
        for _ in range(100):
            if self._try_create():
                self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="llada-lock-heartbeat")
                self._thread.start()
                return self
            holder = self._read()
            if holder is None:
                continue  # released meanwhile
            why = self._stale(holder)
            if why is None:
                if not holder:
                    time.sleep(0.2)
                    continue
                raise RunDirError(
                    f"{os.path.dirname(self.path)} is in use by another `llada train` ({describe(holder)}). Stop "
                    f"that run first, or train into another --workdir. If that process is gone (a dead node), delete "
                    f"{self.path} and rerun.")
            stale = f"{self.path}.stale.{self.info['token']}"
            try:
                os.rename(self.path, stale)  # atomic: of two writers taking over, one wins and the other retries
            except FileNotFoundError:
                continue
            os.remove(stale)
            self.log(f"warning: took over the stale lock {self.path} ({why}; it was {describe(holder)})")
        raise RunDirError(f"could not take the lock {self.path}; delete it if no `llada train` uses "
                          f"{os.path.dirname(self.path)} and rerun.")

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self):
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        holder = self._read()
        if holder and holder.get("token") == self.info["token"]:
            os.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class HostsLock:
    """RunLock taken by process 0 alone; every host raises when process 0 could not take it."""

    def __init__(self, run_dir, log=print):
        self.lock = RunLock(run_dir, log) if jax.process_index() == 0 else None

    def __enter__(self):
        error = None
        if self.lock is not None:
            try:
                self.lock.acquire()
            except RunDirError as e:
                error = e
        if jax.process_count() > 1:
            refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
            if refused and error is None:
                error = RunDirError("process 0 could not take the run directory's lock; see its message.")
        if error is not None:
            raise error
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.release()


# -- config.json -------------------------------------------------------------------------------------------------

def _write_atomically(path, text):
    """Writes `text` to `path` through a temporary file: a crash mid-write leaves the old file whole."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def save_config(run_dir, cfg):
    """A run directory's config.json: the resolved config (what load_config reads back)."""
    _write_atomically(os.path.join(run_dir, "config.json"), config_lib.to_json(cfg))


def load_config(run_dir, log=print):
    """The resolved config a run was trained with, merged over the default config (a run written by an older
    version may lack newer keys; they take their defaults), locked like every config. It is read from config.json,
    or when that does not parse, from the copy kept by the newest checkpoint step that has one readable (with a
    warning)."""
    return _over_defaults(_read_config(run_dir, log))


def _over_defaults(loaded):
    cfg = config_lib.default_config()
    with cfg.unlocked():
        cfg.update_from_flattened_dict(_flatten(loaded))
    return cfg


def _flatten(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if hasattr(v, "items") and not isinstance(v, (list, tuple)):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _read_config(run_dir, log):
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise RunDirError(f"{path} not found: {run_dir} is not a llada run directory (pass --workdir=DIR of a "
                          f"trained run).")
    try:
        with open(path) as f:
            return config_lib.from_json(f.read())
    except ValueError as e:
        damage = checkpoint.short_reason(e)
    directory = checkpoint.checkpoints_dir(run_dir)
    for step in reversed(checkpoint.saved_steps(directory)):
        copy = os.path.join(directory, str(step), "config", "metadata")
        try:
            with open(copy) as f:
                cfg = config_lib.from_json(f.read())
        except (OSError, ValueError):
            continue
        log(f"warning: {path} is damaged ({damage}); using the copy of the config kept by checkpoint step {step} "
            f"({copy}). To repair the run directory: cp {copy} {path}")
        return cfg
    raise RunDirError(f"{path} is damaged ({damage}) and no checkpoint step keeps a readable copy; write the "
                      f"config the run was trained with there (`llada train --config=... --print_config > {path}`).")


# -- metrics.jsonl -----------------------------------------------------------------------------------------------

def read_metrics(run_dir, log=None):
    """The rows of a run's metrics.jsonl ([] without one); rows that do not parse (a torn last line) are dropped,
    with a warning through `log` when given."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows, torn = [], []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError("no step")
                rows.append(row)
            except ValueError:
                torn.append(i)
    if torn and log:
        log(f"warning: dropped {len(torn)} line(s) of {path} that do not parse (line {', '.join(map(str, torn[:5]))}"
            f"{', ...' if len(torn) > 5 else ''}): torn by a crash mid-write.")
    return rows


def truncate_metrics(run_dir, step, log=print):
    """Before (re)starting at `step`: keep the rows of steps <= `step` that parse, drop the rest (steps to be run
    again, torn lines). Process 0 only."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    rows = [r for r in read_metrics(run_dir, log) if r["step"] <= step]
    _write_atomically(path, "".join(json.dumps(r) + "\n" for r in rows))


# -- wandb_id ----------------------------------------------------------------------------------------------------

def wandb_id(run_dir):
    """The Weights & Biases run id of a run directory, kept in its `wandb_id` file (created on first use), so that
    every process that trains the directory logs to the same W&B run. Process 0 only."""
    path = os.path.join(run_dir, "wandb_id")
    try:
        with open(path) as f:
            run_id = f.read().strip()
    except FileNotFoundError:
        run_id = ""
    if not run_id:  # new, or emptied by a crash mid-write
        run_id = uuid.uuid4().hex[:16]
        _write_atomically(path, run_id)
    return run_id
