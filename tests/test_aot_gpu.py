"""`llada compile --topology=h100:8`: the real train step compiled for NVIDIA GPUs on this CPU machine, through JAX's
CUDA plugin and a description of the GPU (no driver, no GPU). The compiling tests need the plugin (`pip install
"jax[cuda12]"`, the `gpu` extra), which CI does not install: they skip there."""
import pytest

from llada_jax import aot, attention, config as config_lib, train


def test_gpu_topology_names_are_hosts_by_gpus():
    assert aot.parse_topology("h100:8") == ("h100", "h100:1x8", 8)
    assert aot.parse_topology("H200-8") == ("h200", "h200:1x8", 8)
    assert aot.parse_topology("h100:2x8") == ("h100", "h100:2x8", 16)  # 2 hosts of 8 GPUs
    with pytest.raises(aot.CompileError, match="1 to 8 GPUs per host"):
        aot.parse_topology("h100:16")


def test_gpu_target_config_is_the_gpu():
    text = aot.gpu_target_config("h200")
    assert "device_memory_size: 151397597184" in text and 'platform_name: "CUDA"' in text
    assert "major: 9" in text and "core_count: 132" in text and text.count("{") == text.count("}")


def _compile(topology, **overrides):
    if aot.cuda_plugin() is None:
        pytest.skip("JAX's CUDA plugin (the `gpu` extra) is not installed")
    cfg = config_lib.build_config("configs/tiny.py", [(k, str(v)) for k, v in overrides.items()])
    return aot.compile_step(cfg, topology)


@pytest.mark.slow
def test_tiny_compiles_for_8_h100_with_cudnn_attention():
    r = _compile("h100:8", **{"model.dtype": "bfloat16", "train.global_batch": 16, "train.seq_len": 256})
    assert r["devices"] == 8 and r["device_kind"] == "NVIDIA H100 80GB HBM3" and r["fits"]
    assert r["mesh"] == {"data": 1, "fsdp": 8, "context": 1, "tensor": 1}
    assert r["hbm_bytes"] == aot.GPUS["h100"]["memory"]
    assert r["usable_bytes"] < r["hbm_bytes"]  # JAX's allocator takes XLA_PYTHON_CLIENT_MEM_FRACTION of it
    assert r["cudnn_attention_calls"] > 0  # attention=auto in bfloat16 on GPU: cuDNN flash attention
    assert r["collectives"]["all-gather"] > 0  # FSDP gathers weights
    n = 803968  # float32 params + 2 Adam moments, sharded 8 ways (no TPU tile padding on GPU)
    assert 3 * 4 * n / 8 <= r["argument_bytes"] <= 1.1 * 3 * 4 * n / 8 + 16 * 256 * 4


@pytest.mark.slow
def test_two_hosts_of_h200():
    r = _compile("h200:2x8", **{"model.dtype": "bfloat16", "train.global_batch": 16, "train.seq_len": 256})
    assert r["devices"] == 16 and r["device_kind"] == "NVIDIA H200 141GB HBM3e" and r["mesh"]["fsdp"] == 16


def test_the_cuda_devices_pick_cudnn_attention(tiny_cfg):
    """attention=auto follows the mesh's devices (platform "gpu" for those of a topology description): cuDNN for
    16-bit compute, the XLA reference for float32. (The lowered program hides cuDNN behind JAX's custom
    partitioning; the compiled one names it: test_tiny_compiles_for_8_h100_with_cudnn_attention.)"""
    if aot.cuda_plugin() is None:
        pytest.skip("JAX's CUDA plugin (the `gpu` extra) is not installed")
    _, _, _, devices = aot.topology_devices("h100:8")
    assert devices[0].platform == "gpu"
    tiny_cfg.model.dtype = "bfloat16"
    assert train.Setup(tiny_cfg, devices).model.attention is attention.cudnn_attention
    tiny_cfg.model.dtype = "float32"
    assert train.Setup(tiny_cfg, devices).model.attention is attention.xla_attention
