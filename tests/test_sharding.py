"""Sharded training on 8 simulated CPU devices equals the single-device run; meshes and their errors."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import losses, tiny_config

from llada_jax import sharding, train
from llada_jax.data import synthetic


def _cfg(cfg, data=1, fsdp=1, tensor=1, micro=1, context=1):
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.mesh.context = data, fsdp, tensor, context
    cfg.train.micro_batches = micro
    cfg.data.random_length_prob = 0.5  # exercise key masks under sharding too
    return cfg


def _run(cfg, devices, steps=2):
    setup = train.Setup(cfg, devices)
    state = setup.init_state()
    corpus = synthetic.SyntheticCorpus(cfg.train.seq_len, 0)
    batch = setup.put_batch(corpus.batch(0, cfg.train.global_batch))
    key = jax.random.key(7)
    grads_fn = jax.jit(lambda p, b: setup.loss_and_grads(p, b, key),
                       in_shardings=(setup.param_sharding, None),
                       out_shardings=(setup.sharder.replicated, setup.sharder.replicated, setup.param_sharding))
    loss, _, grads = grads_fn(state["params"], batch)
    losses = []
    for step in range(steps):
        state, metrics = setup.step_fn(state, setup.put_batch(corpus.batch(step, cfg.train.global_batch)))
        losses.append(float(metrics["loss"]))
    return setup, float(loss), jax.device_get(grads), state, losses


@pytest.fixture
def single(tiny_cfg, one_device):
    return _run(_cfg(tiny_cfg), one_device)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [dict(fsdp=4, tensor=2), dict(data=2, fsdp=4)])
def test_sharded_loss_grads_and_steps_equal_single_device(tiny_cfg, single, mesh):
    _, loss1, grads1, state1, losses1 = single
    setup, loss, grads, state, losses = _run(_cfg(tiny_cfg, **mesh), jax.devices())
    assert dict(setup.mesh.shape) == {"data": 1, "fsdp": 1, "context": 1, "tensor": 1, **mesh}
    np.testing.assert_allclose(loss, loss1, rtol=1e-5)
    for g, g1 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads1)):
        np.testing.assert_allclose(g, g1, rtol=1e-5, atol=1e-5 * np.abs(g1).max())
    np.testing.assert_allclose(losses, losses1, rtol=1e-5)
    for p, p1 in zip(jax.tree.leaves(jax.device_get(state["params"])),
                     jax.tree.leaves(jax.device_get(state1["params"]))):
        np.testing.assert_allclose(p, p1, rtol=1e-5, atol=1e-6)
    # params really are sharded: q_proj [layers, embed, heads, head_dim] over (None, fsdp, tensor, None)
    q = state["params"]["blocks"]["q_proj"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, ("fsdp", "context"), "tensor", None)
    n_shards = len({tuple((s.start, s.stop) for s in idx) for idx in q.sharding.devices_indices_map(q.shape).values()})
    assert n_shards == mesh["fsdp"] * mesh.get("tensor", 1)
    assert q.addressable_shards[0].data.shape == (2, 32 // mesh["fsdp"], 4 // mesh.get("tensor", 1), 8)
    # Adam moments follow their parameters' sharding
    mu = state["opt_state"][1][0].mu["blocks"]["q_proj"]
    assert mu.sharding.spec == q.sharding.spec


@pytest.mark.slow
def test_gradient_accumulation_is_exact_without_random_length(tiny_cfg):
    cfg = _cfg(tiny_cfg)
    cfg.data.random_length_prob = 0.0
    _, loss1, grads1, _, _ = _run(cfg, jax.devices()[:1], steps=0)
    cfg.train.micro_batches = 4
    _, loss4, grads4, _, _ = _run(cfg, jax.devices()[:1], steps=0)
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
    for g, g1 in zip(jax.tree.leaves(grads4), jax.tree.leaves(grads1)):
        np.testing.assert_allclose(g, g1, rtol=1e-5, atol=1e-5 * np.abs(g1).max())


@pytest.mark.slow
@pytest.mark.parametrize("objective, attention", [("mdm", "flash"), ("arm", "flash"), ("block", "flash"),
                                                  ("mdm", "xla"), ("block", "xla"),
                                                  ("mdm", "ring"), ("arm", "ring"), ("block", "ring")])
def test_context_parallel_equals_single_device(objective, attention, one_device):
    """mesh.context=4 x data=2: every activation split over the sequence (the pair [x_t ; x_0] for block
    diffusion), attention gathering keys and values (flash, xla) or passing them around the ring (ring; causal and
    block masks in zig-zag order); random lengths pad rows. Losses and gradients equal the single-device run to
    1e-5."""
    def config():
        cfg = tiny_config()
        cfg.objective, cfg.diffusion.block_size = objective, 4
        if attention == "ring":
            cfg.model.attention, cfg.model.context_parallel = "flash", "ring"
        else:
            cfg.model.attention = attention
        return cfg

    _, loss1, grads1, _, losses1 = _run(_cfg(config()), one_device)
    setup, loss, grads, _, losses = _run(_cfg(config(), data=2, context=4), jax.devices())
    assert dict(setup.mesh.shape)["context"] == 4
    assert setup.sharder.spec(("batch", "act_seq", "act_embed")) == jax.sharding.PartitionSpec(
        ("data", "fsdp"), "context", None)
    np.testing.assert_allclose(loss, loss1, rtol=1e-5)
    for g, g1 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads1)):
        np.testing.assert_allclose(g, g1, rtol=1e-5, atol=1e-5 * np.abs(g1).max())
    np.testing.assert_allclose(losses, losses1, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("objective, strategy", [("mdm", "allgather"), ("block", "allgather"), ("mdm", "ring"),
                                                 ("block", "ring")])
def test_llada_train_with_context_parallelism_equals_one_device(objective, strategy, tmp_path):
    """`llada train --config.mesh.context=4 --config.mesh.data=2` on 8 simulated devices: the losses of 10 steps
    equal those of the same command on 1 device (1e-4 relative), for both strategies."""
    args = [sys.executable, "-m", "llada_jax.cli", "train", f"--config.objective={objective}",
            f"--config.model.context_parallel={strategy}",
            "--config.diffusion.block_size=4", "--config.train.steps=10", "--config.train.log_every=1",
            "--config.data.random_length_prob=0.5", "--config.checkpoint.every_steps=10"]
    runs = {"one": ("", []), "context": ("--xla_force_host_platform_device_count=8",
                                         ["--config.mesh.context=4", "--config.mesh.data=2", "--config.mesh.fsdp=1"])}
    for name, (flags, extra) in runs.items():
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
        out = subprocess.run(args + extra + [f"--workdir={tmp_path / name}"], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    assert "mesh {'data': 2, 'fsdp': 1, 'context': 4, 'tensor': 1} on 8 cpu devices" in out.stdout
    one, ctx = losses(tmp_path / "one"), losses(tmp_path / "context")
    assert sorted(one) == list(range(1, 11)) and sorted(ctx) == sorted(one)
    np.testing.assert_allclose([ctx[s] for s in sorted(ctx)], [one[s] for s in sorted(one)], rtol=1e-4)


def test_hybrid_mesh_for_multi_slice(tiny_cfg):
    mc = tiny_cfg.mesh
    mc.data, mc.fsdp, mc.tensor, mc.dcn_data = 1, 2, 2, 2
    mesh = sharding.make_mesh(mc, jax.devices())
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
    # the data axis crosses slices: its two halves are the two slices of 4 consecutive devices
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    assert set(ids[0].ravel()) == {0, 1, 2, 3} and set(ids[1].ravel()) == {4, 5, 6, 7}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 4


def test_mesh_fill_and_errors(tiny_cfg):
    mc = tiny_cfg.mesh
    mc.data, mc.fsdp, mc.tensor = 2, -1, 2
    assert dict(sharding.make_mesh(mc, jax.devices()).shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
    mc.data, mc.fsdp, mc.tensor = 3, 1, 2
    with pytest.raises(sharding.MeshError, match="has 6 devices but 8 are available"):
        sharding.make_mesh(mc, jax.devices())
    mc.data, mc.fsdp = -1, -1
    with pytest.raises(sharding.MeshError, match="at most one"):
        sharding.make_mesh(mc, jax.devices())


def test_batch_not_divisible_is_a_clear_error(tiny_cfg):
    cfg = _cfg(tiny_cfg, data=2, fsdp=4)
    cfg.train.global_batch = 12
    with pytest.raises(train.TrainError, match="must be divisible by the batch shards .mesh data x fsdp = 8."):
        train.Setup(cfg, jax.devices())


def test_sequence_longer_than_model_is_a_clear_error(tiny_cfg, one_device):
    tiny_cfg.model.max_seq_len = 8
    with pytest.raises(train.TrainError, match="train.seq_len=16 exceeds model.max_seq_len=8"):
        train.Setup(tiny_cfg, one_device)
