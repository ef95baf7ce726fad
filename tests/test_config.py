"""Config files, overrides and the clear errors of bad input."""
import json
import re

import pytest

from llada_jax import cli, config as config_lib


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
    want = rf"get_config\(\) failed: AttributeError: .*stepz.* \(at {re.escape(str(path))}:4\)"
    with pytest.raises(config_lib.ConfigError, match=want):
        config_lib.load_config(str(path))


@pytest.mark.parametrize("text, message", [
    ("def get_config(arg):\n    return {'a': 1}[arg]\n", r"get_config\('b'\) failed: KeyError: 'b' \(at {path}:2\)"),
    ("def get_config(arg):\n    return 1 +\n", r"fails to load: SyntaxError: .* \(at {path}:2\)"),
    ("def get_config(arg):\n    return 3\n", r"returned a int; it must return an ml_collections.ConfigDict"),
])
def test_errors_inside_a_config_file_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", f"--config={path}:b", "--print_config"])
    assert re.search(message.format(path=re.escape(str(path))), str(e.value)) and "\n" not in str(e.value)


def test_text_small_takes_two_or_three_parts(tmp_path):
    """CORPUS,OBJECTIVE keeps the default size (it once read the objective's default as the size)."""
    (tmp_path / "prepared" / "train").mkdir(parents=True)
    meta = {"tokenizer": {"vocab_size": 300, "special_ids": {"mask_id": 2, "eos_id": 0}}}
    (tmp_path / "prepared" / "train" / "metadata.json").write_text(json.dumps(meta))
    arm = config_lib.load_config(f"configs/text_small.py:{tmp_path},arm")
    assert (arm.objective, arm.name, arm.model.d_model, arm.model.vocab_size) == ("arm", "text_small_arm_s", 256, 300)
    assert config_lib.load_config(f"configs/text_small.py:{tmp_path},block,m").model.d_model == 384
    with pytest.raises(config_lib.ConfigError, match="size 'xl'.*expected one of s, m, l"):
        config_lib.load_config(f"configs/text_small.py:{tmp_path},mdm,xl")
    with pytest.raises(config_lib.ConfigError, match="is not a prepared token store"):
        config_lib.load_config(f"configs/text_small.py:{tmp_path / 'nope'}")


def test_missing_config_file_lists_the_built_in_ones():
    with pytest.raises(config_lib.ConfigError, match="llada_1b.py.*llada_8b.py.*small.py.*tiny.py"):
        config_lib.load_config("configs/nope.py")


def test_json_round_trip():
    cfg = config_lib.load_config("configs/llada_8b.py")
    again = config_lib.from_json(config_lib.to_json(cfg))
    assert again.model.d_model == 4096 and again.tokens.mask_id == 126336


@pytest.mark.parametrize("args, message", [
    (["--config.train.stepz=3"], "unknown config key --config.train.stepz. Did you mean: --config.train.steps"),
    (["--config.mesh.data=3", "--config.mesh.fsdp=2"], "has 6 devices but 8 are available"),
    (["--config.mesh.data=3"], "8 devices are not divisible by 3"),
    (["--config.train.global_batch=12"], "train.global_batch=12 must be divisible by the batch shards"),
    (["--config.train.seq_len=5000"], "train.seq_len=5000 exceeds model.max_seq_len=4096"),
])
def test_cli_errors_are_one_clear_line(tmp_path, args, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", f"--workdir={tmp_path}", *args])
    assert message in str(e.value) and str(e.value).startswith("llada train: ")


def test_print_config(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--config=configs/llada_1b.py", "--config.train.global_batch=64", "--print_config"])
    assert e.value.code == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"]["n_kv_heads"] == 4 and cfg["train"]["global_batch"] == 64


@pytest.mark.parametrize("name, sizes, vocab", [
    ("small", (512, 8, 8, 4, 1408), 64), ("sft", (512, 8, 8, 4, 1408), 32000),
    ("pretrain_store", (512, 8, 8, 4, 1408), 32000), ("llada_1b", (2048, 22, 32, 4, 5634), 126464),
    ("llada_8b", (4096, 32, 32, 32, 12288), 126464), ("long_context_sft", (4096, 32, 32, 32, 12288), 126464),
])
def test_config_files_take_their_model_size_by_name(name, sizes, vocab):
    m = config_lib.load_config(f"configs/{name}.py").model
    assert (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, m.vocab_size) == (*sizes, vocab)


def test_long_context_sft_is_the_8b_at_32k_with_context_parallelism():
    from llada_jax import optim
    cfg = config_lib.load_config("configs/long_context_sft.py")
    assert (cfg.train.seq_len, cfg.model.max_seq_len, cfg.mesh.context, cfg.data.source) == (32768, 32768, 8, "sft")
    lr = optim.schedule(cfg)
    steps = cfg.train.steps
    assert float(lr(50)) == pytest.approx(2.5e-5) and float(lr(int(0.85 * steps))) == pytest.approx(2.5e-5)
    assert float(lr(steps)) == pytest.approx(2.5e-6, rel=1e-3)  # the SFT schedule over train.steps, not 2.3T tokens
