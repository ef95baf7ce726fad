"""Every test process sees 8 simulated CPU devices (for the sharding tests); tests that want one device say so.
The `llada` processes the tests start share one persistent compilation cache for the run (SUBPROCESS_CACHE)."""
import gc
import json
import os
import shutil
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

from llada_jax import config as config_lib  # noqa: E402

# Subprocesses (`llada train ...` and friends) compile the same few programs again and again: they share JAX's
# persistent compilation cache, emptied when a test run starts (by pytest-xdist's controller, or the only process).
# The test processes themselves do not use it (they are already imported; jax read its config then).
SUBPROCESS_CACHE = Path(__file__).resolve().parent.parent / ".jax-cache-tests"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests that take tens of seconds (still run in CI)")
    if "PYTEST_XDIST_WORKER" not in os.environ:
        shutil.rmtree(SUBPROCESS_CACHE, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=str(SUBPROCESS_CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Frees each module's compiled programs when it ends. Every XLA:CPU executable holds memory mappings, and Linux
    allows a process vm.max_map_count of them (65530 by default): the whole suite in one process reached 64,000 and
    segfaulted inside an XLA compile in tests/test_sampling.py. Clearing the caches after each module keeps the count
    near 1,000 between modules."""
    yield
    jax.clear_caches()
    gc.collect()


def tiny_config():
    """A very small model for unit tests (float32 everywhere)."""
    c = config_lib.default_config()
    m = c.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim = 48, 32, 2, 4, 2, 64
    c.train.seq_len, c.train.global_batch = 16, 8
    return c


@pytest.fixture
def tiny_cfg():
    return tiny_config()


@pytest.fixture
def one_device():
    return jax.devices()[:1]


def losses(workdir):
    """{step: loss} of a run directory's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


class Crash(Exception):
    pass


def crash_at(step):
    """A `log` for train.train that raises Crash when step `step` is logged (after that step ran)."""
    def log(msg):
        if msg.startswith(f"step {step}/"):
            raise Crash(msg)
    return log


# The 15 slowest modules of the run (summed set-up, call and tear-down time of their tests), after pytest's own
# summary: where CI's minutes go. Under pytest-xdist the controller sums its workers' reports.
_MODULE_SECONDS = {}


def pytest_runtest_logreport(report):
    module = report.nodeid.split("::")[0]
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _MODULE_SECONDS:
        return
    total = sum(_MODULE_SECONDS.values())
    terminalreporter.write_sep("=", f"slowest modules (test time, {total:.0f} s in all)")
    for module, seconds in sorted(_MODULE_SECONDS.items(), key=lambda kv: -kv[1])[:15]:
        terminalreporter.write_line(f"{seconds:8.1f} s  {module}")


# Modules that take the longest, first (measured: the summary above; BENCHMARKS.md, "Tests and reproducibility"):
# pytest-xdist hands each process a whole module at a time, in collection order, so the longest ones start while
# there is still other work to balance them against.
LONGEST_FIRST = ("test_readme.py", "test_checkpoint.py", "test_sampling.py", "test_rl_train.py", "test_gguf.py",
                 "test_convert.py", "test_sweep.py", "test_checkpoint_faults.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].rpartition("/")[2], len(rank)))
