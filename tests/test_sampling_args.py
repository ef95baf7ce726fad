"""One sampling schema: the config's `sampling` block, the CLI flags and the decoders' arguments are the fields,
defaults and "off" values of SamplingArgs; a run's config is read merged over the defaults."""
import dataclasses
import json

import pytest

from llada_jax import cli, config as config_lib, rundir
from llada_jax.sampling_args import FIELDS, SamplingArgs


def test_the_config_block_is_the_schema():
    block = config_lib.default_config().sampling
    assert block.to_dict() == dataclasses.asdict(SamplingArgs())
    assert SamplingArgs.from_config(block) == SamplingArgs()
    changed = SamplingArgs(gen_length=12, block_length=4, steps=6, threshold=0.9, cache="dual", cfg_scale=1.5)
    assert SamplingArgs.from_config(changed.to_config()) == changed


def test_off_values():
    assert not SamplingArgs().use_threshold and not SamplingArgs().cached
    assert not SamplingArgs(threshold=-1.0).use_threshold  # the "off" value runs of older versions saved
    assert SamplingArgs(threshold=0.9).use_threshold and SamplingArgs(cache="prefix").cached


@pytest.mark.parametrize("command", ["sample", "chat", "eval"])
def test_every_field_is_a_flag_of_the_run_commands(command, monkeypatch):
    seen = {}

    def fake_open(args, overrides):
        seen.update({n: getattr(args, n) for n in FIELDS})
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_open_run", fake_open)
    flags = [f"--{n}=1" for n in FIELDS]
    with pytest.raises(SystemExit):
        cli.main([command, "--workdir=x", "--prompt=a", *flags] if command == "sample" else
                 [command, "--workdir=x", *flags])
    assert seen == {n: "1" for n in FIELDS}


def test_a_run_of_an_older_version_reads_with_the_defaults(tmp_path):
    """A config.json without newer keys (here the whole `sampling` block and one key of `eval`) reads back merged
    over today's defaults; its own values win."""
    cfg = config_lib.default_config().to_dict()
    del cfg["sampling"], cfg["eval"]["elbo_samples"]
    cfg["train"]["steps"] = 7
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = rundir.load_config(str(tmp_path))
    assert loaded.train.steps == 7 and loaded.eval.elbo_samples == config_lib.default_config().eval.elbo_samples
    assert SamplingArgs.from_config(loaded.sampling) == SamplingArgs()
    with pytest.raises(AttributeError):  # locked like every config: typos fail
        loaded.sampling.gen_lenght = 3
