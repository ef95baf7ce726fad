"""One sampling schema: the config's `sampling` block, the CLI flags and the decoders' arguments are the fields,
defaults and "off" values of SamplingArgs; a run's config is read merged over the defaults."""
import dataclasses
import json

import pytest

from llada_jax import cli, config as config_lib, inference, rundir, sampling, sampling_args
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


@pytest.mark.parametrize("run, given, block_size, want", [
    # the run's (gen_length, block_length, steps), the fields a command gives, the model's block size (block
    # diffusion) -> (block_length, steps) it samples with
    ((10, 10, 10), dict(gen_length=32), None, (32, 32)),  # configs/tiny.py: pure diffusion stays pure, 1 token/step
    ((10, 10, 10), dict(gen_length=32), 8, (32, 32)),  # a block run: 4 blocks of 8, 8 steps each
    ((10, 10, 10), dict(gen_length=20), 8, (20, 21)),  # 20 steps, rounded up to a multiple of 3 blocks
    ((10, 10, 10), dict(), 8, (10, 10)),  # the run's own: 2 blocks (10 rounded up to 16), 10 steps are valid
    ((10, 10, 10), dict(), 4, (10, 12)),  # 3 blocks of 4: the run's 10 steps rounded up to 12
    ((10, 10, 10), dict(gen_length=3), 8, (3, 3)),  # one block
    ((16, 16, 5), dict(gen_length=24), None, (24, 8)),  # 24 * 5 / 16 = 7.5 -> 8
    ((8, 4, 8), dict(gen_length=12), None, (4, 12)),  # semi-autoregressive blocks stay: 3 of 4
    ((32, 8, 16), dict(gen_length=64), None, (8, 32)),  # half a token per step: 64 * 16 / 32 over 8 blocks
    ((32, 8, 8), dict(gen_length=40), None, (8, 10)),  # 40 * 8 / 32 = 10 over 5 blocks
    ((10, 10, 10), dict(gen_length=32, steps=8), None, (32, 8)),  # given steps are kept (and checked)
    ((10, 10, 10), dict(gen_length=32, block_length=8), None, (8, 32)),
    ((10, 10, 10), dict(gen_length=32, block_length=7), None, (7, 10)),  # invalid: left for validate() to report
])
def test_steps_follow_gen_length(run, given, block_size, want):
    """Steps not given keep the run's tokens per step: gen_length * run steps / run gen_length rounded up to a
    positive multiple of the number of blocks (block diffusion: gen_length / block_size rounded up)."""
    g0, bl0, s0 = run
    own = SamplingArgs(gen_length=g0, block_length=bl0, steps=s0)
    got = sampling_args.follow(own, dataclasses.replace(own, **given), set(given), block_size)
    assert (got.gen_length, got.block_length, got.steps) == (given.get("gen_length", g0), *want)
    blocks = -(-got.gen_length // (block_size or got.block_length))
    if "steps" not in given and (block_size or got.gen_length % got.block_length == 0):
        # the smallest multiple of the blocks at or above the run's rate (the explicit computation)
        assert got.steps % blocks == 0 and got.steps - blocks < got.gen_length * s0 / g0 <= got.steps


def test_a_run_loaded_with_a_new_gen_length_follows_it():
    """inference.load_run's plumbing: --gen_length and --config.sampling.gen_length are the same override; only the
    fields it names count as given."""
    block_run = lambda: config_lib.build_config("configs/tiny.py", [("objective", "block"),
                                                                     ("diffusion.block_size", "8")])
    own = SamplingArgs.from_config(block_run().sampling)
    assert (own.gen_length, own.block_length, own.steps) == (10, 10, 10)

    def follow(overrides):
        cfg = inference.apply_overrides(block_run(), overrides)
        return SamplingArgs.from_config(inference.follow_sampling(cfg, own, overrides).sampling)

    assert follow([]) == own
    assert follow([("sampling.gen_length", "32")]).steps == 32
    assert follow([("sampling.gen_length", "32"), ("sampling.steps", "8")]).steps == 8
    assert follow([("sampling.gen_length", "20"), ("sampling.temperature", "0.5")]).steps == 21


def test_impossible_settings_say_what_to_change():
    with pytest.raises(sampling.SamplingError, match=r"gen_length=32 must be a multiple of block_length=10: set "
                       r"block_length=32 \(pure diffusion\) or a divisor of 32 such as 8, or gen_length=40\."):
        sampling.validate(SamplingArgs(gen_length=32, block_length=10, steps=32), None)
    with pytest.raises(sampling.SamplingError, match=r"steps=10 must be a positive multiple of the number of blocks "
                       r"\(gen_length / block_length = 32 / 8 = 4\): set steps=8 or 12, or leave steps out"):
        sampling.validate(SamplingArgs(gen_length=32, block_length=8, steps=10), None)
    with pytest.raises(sampling.SamplingError, match=r"steps=0 must be .* = 1\): set steps=1,"):
        sampling.validate(SamplingArgs(gen_length=8, block_length=8, steps=0), None)
