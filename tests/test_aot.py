"""`llada compile`: the real train step compiled for TPU topologies on this CPU machine (needs libtpu)."""
import json
import os
import subprocess
import sys

import pytest

from llada_jax import aot, cli, config as config_lib

pytest.importorskip("libtpu", reason="libtpu is installed by the README's test command")


def test_topology_names_count_chips_or_cores():
    assert aot.parse_topology("v5p-128") == ("v5p", "v5p:4x4x4", 64)  # TensorCores: 64 chips
    assert aot.parse_topology("v4-32") == ("v4", "v4:2x2x4", 16)
    assert aot.parse_topology("v5e-256") == ("v5e", "v5e:16x16", 256)  # chips
    assert aot.parse_topology("v6e-8") == ("v6e", "v6e:2x4", 8)
    assert aot.parse_topology("v5e:2x2") == ("v5e", "v5e:2x2", 4)
    with pytest.raises(aot.CompileError, match="unknown topology"):
        aot.parse_topology("v3-8")


def test_installed_libtpu_is_the_one_jax_pins():
    """A newer libtpu compiles, but this jaxlib cannot read back its optimized HLO for v5p/v6e (RET_CHECK
    "async-update instruction should have 1 operands but sees 3" with libtpu 0.0.51 under JAX 0.10.2)."""
    assert aot.libtpu_mismatch() is None


def test_unreadable_hlo_leaves_the_memory_report():
    class Compiled:
        def as_text(self):
            raise RuntimeError("INTERNAL: RET_CHECK failure ... async-update instruction should have 1 operands")
    assert aot._collectives(Compiled()) is None
    r = {"topology": "v6e:2x2", "devices": 4, "device_kind": "TPU v6 lite", "mesh": {"fsdp": 4}, "global_batch": 4,
         "seq_len": 8, "per_device_batch": 1, "micro_batches": 1, "remat": "full", "argument_bytes": 1,
         "output_bytes": 1, "alias_bytes": 1, "temp_bytes": 1, "code_bytes": 0, "total_bytes": 1, "hbm_bytes": 2,
         "fits": True, "model_flops_per_step": 1.0, "compiled_flops_per_device": 1.0, "collectives": None,
         "compile_seconds": 1.0, "libtpu_mismatch": "libtpu 0.0.51 is installed but jax 0.10.2 pins ..."}
    text = aot.format_report(r)
    assert "collectives: not available" in text and "fits" in text and "warning: libtpu 0.0.51" in text


def _report(**overrides):
    cfg = config_lib.build_config("configs/tiny.py", [(k, str(v)) for k, v in overrides.items()])
    return aot.compile_step(cfg, "v5e:2x2")


@pytest.mark.slow
def test_tiny_compiles_and_memory_moves_the_right_way():
    base = _report(**{"model.dtype": "bfloat16", "train.global_batch": 64, "train.seq_len": 256})
    assert base["devices"] == 4 and base["device_kind"] == "TPU v5 lite" and base["fits"]
    assert base["mesh"] == {"data": 1, "fsdp": 4, "context": 1, "tensor": 1}
    assert base["collectives"]["all-gather"] > 0  # FSDP gathers weights
    # params + Adam moments (float32) sharded 4 ways: 3 x 4 bytes x params / 4, plus the batch, plus TPU tile
    # padding of the small per-device blocks (last two dims padded to 8 x 128)
    n = 803968
    assert 3 * 4 * n / 4 <= base["argument_bytes"] <= 2 * 3 * 4 * n / 4
    remat = _report(**{"model.dtype": "bfloat16", "train.global_batch": 64, "train.seq_len": 256,
                       "model.remat": "full"})
    assert remat["temp_bytes"] < base["temp_bytes"]
    bigger = _report(**{"model.dtype": "bfloat16", "train.global_batch": 128, "train.seq_len": 256})
    assert bigger["temp_bytes"] > base["temp_bytes"]


@pytest.mark.slow
def test_llada_compile_1b_width_on_v5e_2x2():
    """The 1B config's real widths (d 2048, GQA 32/4 heads, FFN 5634, vocab 126464), 2 layers to keep CI fast."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "llada_jax.cli", "compile", "--config=configs/llada_1b.py",
                          "--topology=v5e:2x2", "--config.model.n_layers=2", "--config.train.global_batch=4",
                          "--config.train.seq_len=1024", "--json"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout[out.stdout.index("{"):])
    assert r["fits"] and r["devices"] == 4 and r["mesh"]["fsdp"] == 4
    # embeddings + head (2 x 126464 x 2048) and 2 layers, float32 params + 2 Adam moments, sharded 4 ways
    params = 2 * 126464 * 2048 + 2 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 5634 + 2 * 2048) + 2048
    assert 0 <= r["argument_bytes"] - 12 * params / 4 < 0.05 * 12 * params / 4  # tile padding only


@pytest.mark.slow
def test_not_fitting_is_a_clear_non_zero_exit():
    with pytest.raises(SystemExit) as e:
        cli.main(["compile", "--topology=v5e:2x2", "--config.train.seq_len=4096", "--config.train.global_batch=256",
                  # the XLA reference attention and unchunked logits materialise [B, H, T, T] scores and
                  # [B, T, vocab] logits: tens of GiB per chip (splash and the chunked loss would fit)
                  "--config.model.attention=xla", "--config.model.loss_chunk=0"])
    # the TPU compiler itself refuses (compile-time HBM OOM), or the report says it: one clear line either way
    assert str(e.value).startswith("llada compile: the step does not fit")


def test_a_tpu_mesh_on_this_cpu_host_traces_the_real_splash_kernel(tiny_cfg):
    """attention=auto follows the mesh's devices, not the host's backend: the step lowered for TPU devices of a
    topology description calls the Mosaic splash kernel (interpret mode would inline it as plain HLO)."""
    import jax
    import jax.numpy as jnp

    from llada_jax import train
    _, _, _, devices = aot.topology_devices("v5e:2x2")
    tiny_cfg.train.seq_len, tiny_cfg.train.global_batch = 128, 4
    setup = train.Setup(tiny_cfg, devices)
    batch = {"tokens": jax.ShapeDtypeStruct((4, 128), jnp.int32, sharding=setup.batch_sharding)}
    text = setup.step_fn.lower(setup.abstract_state(), batch).as_text()
    assert "tpu_custom_call" in text
    # sequences shorter than splash's 128-token tiles (the default config's 16) get the XLA reference instead
    tiny_cfg.train.seq_len = 16
    setup = train.Setup(tiny_cfg, devices)
    batch = {"tokens": jax.ShapeDtypeStruct((4, 16), jnp.int32, sharding=setup.batch_sharding)}
    assert "tpu_custom_call" not in setup.step_fn.lower(setup.abstract_state(), batch).as_text()
