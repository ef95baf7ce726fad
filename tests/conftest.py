"""Every test process sees 8 simulated CPU devices (for the sharding tests); tests that want one device say so."""
import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

from llada_jax import config as config_lib  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests that take tens of seconds (still run in CI)")


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
