"""Goodput accounting: where a run's wall time went, read from the events the training loop appends to
WORKDIR/events.jsonl (process 0; `llada goodput` prints the summary).

One JSON object per line: `time` (time.time()), `event` and its fields.

    start               a process starts training from `step`; `time` is when the process began (before set-up)
    compile             the first step of each compiled step function (compilation plus that step): seconds, step
    steps               productive step time from one log point to the next: first_step, last_step, seconds
    data_wait           time spent waiting for batches over the same steps: seconds
    checkpoint_save     time a save, or waiting for one to finish, blocked the loop: seconds, step
    checkpoint_save_local  the same for a save to the local tier (checkpoint.local_dir)
    checkpoint_restore  time resuming from a checkpoint took: seconds, step
    rollback            the NaN guard restored an older checkpoint: from_step, to_step, seconds (of the restore)
    end                 a clean finish or a preemption: step, reason

A crash writes no `end`: the process's time ends at its last event, and the steps it ran after its last log point
are never recorded (their time is lost with the process). Each line is flushed as it is written, so a crash loses at
most a torn last line, which reading skips.
"""
import json
import os
import time
from contextlib import contextmanager

from llada_jax.errors import LladaError

EVENTS = "events.jsonl"
# causes timed by events of that name
TIMED = ("compile", "data_wait", "checkpoint_save", "checkpoint_save_local", "checkpoint_restore")
CAUSES = TIMED + ("recomputed_steps", "other")  # other: start-up, logging, steps a crash lost, idle


class GoodputError(LladaError):
    """A run directory without training events; the message says why."""


class EventLog:
    """Appends events to WORKDIR/events.jsonl; only the `active` process (process 0) writes."""

    def __init__(self, workdir, active=True):
        self.path = os.path.join(workdir, EVENTS)
        self.active = active
        if active and os.path.exists(self.path) and os.path.getsize(self.path):
            with open(self.path, "rb+") as f:  # a line torn by a crash must not swallow this process's first event
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def emit(self, event, at=None, **fields):
        """Appends one event, at wall-clock time `at` (default now), and flushes it."""
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps({"time": time.time() if at is None else at, "event": event, **fields}) + "\n")


class StepClock:
    """Times the training loop of one process for its EventLog. Step time is measured between log points, with the
    device synchronised there, minus what the loop spent compiling, waiting for data and saving in between."""

    def __init__(self, events, step):
        self.events = events
        self.restart(step)

    def restart(self, step):
        """Starts a new interval after step `step` (a start, a log point, a rollback)."""
        self.first, self.t, self.excluded, self.data_wait = step + 1, time.perf_counter(), 0.0, 0.0

    @contextmanager
    def timed(self, event, **fields):
        """Times the block as `event` (compile, checkpoint_save): recorded at once, left out of step time."""
        t = time.perf_counter()
        yield
        seconds = time.perf_counter() - t
        self.excluded += seconds
        self.events.emit(event, seconds=seconds, **fields)

    def next_batch(self, data):
        t = time.perf_counter()
        batch = next(data)
        seconds = time.perf_counter() - t
        self.data_wait += seconds
        self.excluded += seconds
        return batch

    def steps_done(self, step):
        """Records the interval's steps up to `step` (the device must have finished them) and starts the next."""
        if step >= self.first:
            seconds = time.perf_counter() - self.t - self.excluded
            self.events.emit("steps", first_step=self.first, last_step=step, seconds=seconds)
            self.events.emit("data_wait", seconds=self.data_wait)
        self.restart(step)


def read_events(workdir):
    """The events of a run directory, in order; lines that do not parse (torn by a crash) are skipped."""
    path = os.path.join(workdir, EVENTS)
    if not os.path.exists(path):
        raise GoodputError(f"{path} not found: no training events in {workdir} (`llada train` writes them; runs "
                           f"trained before goodput accounting have none). Pass --workdir of a training run.")
    events = []
    with open(path) as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event and "time" in event:
                events.append(event)
    return events


def summarize(workdir):
    """Goodput and badput of a run directory's events.jsonl, as a dict:

    total_seconds: the sum of the processes' lifetimes (each `start` to the process's last event);
    productive_seconds: step time of the steps whose result the run kept (productive_steps of them);
    goodput: productive_seconds / total_seconds;
    badput: seconds by cause (CAUSES); recomputed_steps is the step time of steps a restart or a rollback ran again
    (a restart from step R discards the recorded steps after R), `other` the rest of the wall time;
    recomputed_steps: how many steps ran again; processes, rollbacks: counts."""
    badput = dict.fromkeys(CAUSES, 0.0)
    kept, recomputed, rollbacks = [], 0, 0  # kept: [first, last, seconds] of recorded steps not run again (yet)

    def discard_after(step):
        nonlocal recomputed
        for span in kept:
            first, last, seconds = span
            lost = last - max(first - 1, step)
            if lost > 0:  # the last `lost` steps of the span; their time in proportion
                share = seconds * lost / (last - first + 1)
                badput["recomputed_steps"] += share
                recomputed += lost
                span[1:] = [last - lost, seconds - share]
        kept[:] = [span for span in kept if span[1] >= span[0]]

    processes = []
    for event in read_events(workdir):
        if event["event"] == "start":
            processes.append([event])
        elif processes:
            processes[-1].append(event)
    for event in (e for p in processes for e in p):
        kind = event["event"]
        if kind == "start":
            discard_after(event["step"])
        elif kind == "rollback":
            discard_after(event["to_step"])
            badput["checkpoint_restore"] += event["seconds"]
            rollbacks += 1
        elif kind == "steps":
            kept.append([event["first_step"], event["last_step"], event["seconds"]])
        elif kind in TIMED:
            badput[kind] += event["seconds"]
    total = sum(p[-1]["time"] - p[0]["time"] for p in processes)
    productive = sum(span[2] for span in kept)
    badput["other"] = total - productive - sum(v for k, v in badput.items() if k != "other")
    return {"total_seconds": total, "productive_seconds": productive, "goodput": productive / total if total else 0.0,
            "badput": badput, "productive_steps": sum(span[1] - span[0] + 1 for span in kept),
            "recomputed_steps": recomputed, "processes": len(processes), "rollbacks": rollbacks}


def format_summary(s):
    """`llada goodput`'s report: the goodput line, then one line per badput cause (seconds, share of the total)."""
    share = lambda x: x / s["total_seconds"] if s["total_seconds"] else 0.0
    lines = [f"goodput: {s['goodput']:.1%} ({s['productive_seconds']:.1f} s of productive steps in "
             f"{s['total_seconds']:.1f} s of wall time; {s['productive_steps']} steps kept, {s['recomputed_steps']} "
             f"recomputed; {s['processes']} process(es), {s['rollbacks']} rollback(s))"]
    lines += [f"  {cause:<22} {seconds:10.1f} s {share(seconds):7.1%}" for cause, seconds in s["badput"].items()]
    return "\n".join(lines)
