"""settings.py: the typed views name every key of their groups, a wrong value is one line with the allowed values
(at load, before a directory is written), and a variant's name is compared only in its table."""
import os
import re
import subprocess
import sys

import pytest
from conftest import tiny_config

from llada_jax import config as config_lib, settings

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "llada_jax")


@pytest.mark.parametrize("group", sorted(settings.VIEWS))
def test_each_view_names_every_key_of_its_group(group):
    fields = [f.name for f in settings.dataclasses.fields(settings.VIEWS[group])]
    assert sorted(fields) == sorted(config_lib.default_config()[group].keys())


def test_the_default_and_built_in_configs_pass():
    for name in ("tiny", "tiny_pretrain", "tiny_task", "small", "llada_1b", "llada_8b", "sft", "rl_addition",
                 "long_context_sft"):
        views = settings.check(config_lib.load_config(f"configs/{name}.py"))
        assert views["train"].steps == config_lib.load_config(f"configs/{name}.py").train.steps


@pytest.mark.parametrize("key, value, message", [
    ("data.source", "nope", "data.source='nope'; expected one of synthetic, store, sft."),
    ("rl.algorithm", "nope", "rl.algorithm='nope'; expected one of grpo, vrpo."),
    ("model.remat", "some", "model.remat='some'; expected one of none, full, save_dots, save_dots_no_batch."),
    ("model.attention", "fast", "model.attention='fast'; expected one of auto, xla, flash, cudnn, splash."),
    ("optim.schedule", "linear", "optim.schedule='linear'; expected one of wsd, cosine, constant."),
    ("data.synthetic_task", "sums", "data.synthetic_task='sums'; expected one of "),
    ("train.micro_batches", "0", "train.micro_batches=0; expected at least 1."),
    ("rl.group_size", "1", "rl.group_size=1; expected at least 2."),
    ("logging.wandb", "on", "logging.wandb='on'; expected one of off, online, offline."),
    ("train.profile_steps", "10", "train.profile_steps='10'; expected START:COUNT"),
    ("model.n_kv_heads", "3", "model.n_kv_heads=3; expected a divisor of model.n_heads=4 (GQA)."),
])
def test_a_wrong_value_is_one_line_naming_the_key_the_value_and_what_is_allowed(key, value, message):
    cfg = tiny_config()
    config_lib.override(cfg, key, value)
    with pytest.raises(settings.SettingsError) as e:
        settings.check(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_wrong_type_from_a_config_file_is_refused():
    cfg = config_lib.from_json(config_lib.to_json(tiny_config()).replace('"steps": 600', '"steps": "600"'))
    with pytest.raises(settings.SettingsError, match=r"train.steps='600'; expected a int"):
        settings.check(cfg)


@pytest.mark.parametrize("override", ["--config.data.source=nope", "--config.rl.algorithm=nope"])
def test_the_command_line_refuses_at_load_before_writing_anything(tmp_path, override):
    workdir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "llada_jax.cli", "train", override, f"--workdir={workdir}"],
                       capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 1 and not workdir.exists()
    assert r.stderr.strip().count("\n") == 0 and "expected one of" in r.stderr


VARIANTS = {r"objective": "objectives.py", r"data\.source": os.path.join("data", "sources.py"),
            r"rl\.algorithm|\br\.algorithm": "rl.py"}


@pytest.mark.parametrize("name, table", sorted(VARIANTS.items()))
def test_no_module_but_the_table_compares_a_variant_name(name, table):
    """`cfg.objective`, `cfg.data.source` and `cfg.rl.algorithm` are looked up once in their tables; nothing else
    branches on a name."""
    pattern = re.compile(rf"({name})\s*(==|!=|not in|in\s*\()")
    offenders = []
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            path = os.path.join(root, f)
            if f.endswith(".py") and os.path.relpath(path, PACKAGE) != table:
                for n, line in enumerate(open(path), 1):
                    if pattern.search(line.split("#")[0]):
                        offenders.append(f"{os.path.relpath(path, PACKAGE)}:{n}: {line.strip()}")
    assert not offenders, offenders


def test_the_name_check_finds_a_comparison():
    pattern = lambda name: re.compile(rf"({name})\s*(==|!=|not in|in\s*\()")
    assert pattern(r"data\.source").search('    if cfg.data.source == "synthetic":')
    assert pattern(r"rl\.algorithm|\br\.algorithm").search('    if r.algorithm in ("grpo", "vrpo"):')
    assert not pattern(r"data\.source").search("    source = sources.get(cfg)")
