"""Config files, overrides and the clear errors of bad input."""
import json
import os
import subprocess
import sys

import pytest

from llada_jax import config as config_lib


def test_override_types_and_values():
    cfg = config_lib.build_config("configs/tiny.py", [("train.steps", "7"), ("optim.peak_lr", "1"),
                                                      ("model.remat", "full"), ("model.scan_layers", "false")])
    assert cfg.train.steps == 7 and cfg.optim.peak_lr == 1.0 and isinstance(cfg.optim.peak_lr, float)
    assert cfg.model.remat == "full" and cfg.model.scan_layers is False


def test_unknown_key_names_close_matches():
    with pytest.raises(config_lib.ConfigError, match=r"unknown config key --config.train.step\b.*--config.train.steps"):
        config_lib.build_config(None, [("train.step", "3")])


def test_wrong_type_is_explained():
    with pytest.raises(config_lib.ConfigError, match="expected a int"):
        config_lib.build_config(None, [("train.steps", "'many'")])


def test_config_files_cannot_invent_keys(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from llada_jax.config import default_config\n"
                    "def get_config():\n    c = default_config()\n    c.train.stepz = 3\n    return c\n")
    with pytest.raises(AttributeError):
        config_lib.load_config(str(path))


def test_missing_config_file_lists_the_built_in_ones():
    with pytest.raises(config_lib.ConfigError, match="llada_1b.py.*llada_8b.py.*small.py.*tiny.py"):
        config_lib.load_config("configs/nope.py")


def test_json_round_trip():
    cfg = config_lib.load_config("configs/llada_8b.py")
    again = config_lib.from_json(config_lib.to_json(cfg))
    assert again.model.d_model == 4096 and again.tokens.mask_id == 126336


def _llada(*args, env_extra=None):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--config.train.stepz=3"], "unknown config key --config.train.stepz. Did you mean: --config.train.steps"),
    (["--config.mesh.data=3", "--config.mesh.fsdp=2"], "has 6 devices but 8 are available"),
    (["--config.mesh.data=3"], "8 devices are not divisible by 3"),
    (["--config.train.global_batch=12"], "train.global_batch=12 must be divisible by the batch shards"),
    (["--config.train.seq_len=5000"], "train.seq_len=5000 exceeds model.max_seq_len=4096"),
])
def test_cli_errors_are_one_clear_line(tmp_path, args, message):
    out = _llada("train", f"--workdir={tmp_path}", *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_print_config():
    out = _llada("train", "--config=configs/llada_1b.py", "--config.train.global_batch=64", "--print_config")
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["model"]["n_kv_heads"] == 4 and cfg["train"]["global_batch"] == 64


@pytest.mark.parametrize("name, sizes, vocab", [
    ("small", (512, 8, 8, 4, 1408), 64), ("sft", (512, 8, 8, 4, 1408), 32000),
    ("pretrain_store", (512, 8, 8, 4, 1408), 32000), ("llada_1b", (2048, 22, 32, 4, 5634), 126464),
    ("llada_8b", (4096, 32, 32, 32, 12288), 126464),
])
def test_config_files_take_their_model_size_by_name(name, sizes, vocab):
    m = config_lib.load_config(f"configs/{name}.py").model
    assert (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, m.vocab_size) == (*sizes, vocab)
