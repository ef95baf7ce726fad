"""The `llada` command's error contract: a LladaError raised in any command is printed without a traceback and exits
non-zero; any other exception is a bug and keeps its traceback. Every error class of the package is a LladaError.
(test_config.test_cli_errors_are_one_clear_line checks the same through a real process.)"""
import importlib
import inspect

import jax
import numpy as np
import pytest
from test_imports import PACKAGE, module_names

from llada_jax import cli, errors


def test_every_error_class_of_the_package_is_a_llada_error():
    found = []
    for name in module_names(PACKAGE):
        if name.endswith(("lm_eval_adapter", "torch_model")):  # optional dependencies (lm_eval, torch)
            continue
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, Exception) and cls is not errors.LladaError:
                found.append(cls_name)
                assert issubclass(cls, errors.LladaError) or cls_name == "Preempted", f"{name}.{cls_name}"
    assert {"ConfigError", "TrainError", "DocumentError", "TaskError", "EvalError", "ConvertError"} <= set(found)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_a_llada_error_in_any_command_exits_with_its_message(command, monkeypatch):
    def fails(argv):
        raise errors.LladaError("x=3 is wrong; expected an even x; pass --x=4.")

    monkeypatch.setitem(cli.COMMANDS, command, fails)
    with pytest.raises(SystemExit) as e:
        cli.main([command])
    # A string exit code: Python prints it to stderr, without a traceback, and exits with status 1.
    assert e.value.code == f"llada {command}: x=3 is wrong; expected an even x; pass --x=4."
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_bug_keeps_its_traceback(monkeypatch):
    def buggy(argv):
        return {}["missing"]

    monkeypatch.setitem(cli.COMMANDS, "eval", buggy)
    with pytest.raises(KeyError, match="missing"):
        cli.main(["eval"])
    monkeypatch.setitem(cli.COMMANDS, "eval", lambda argv: int("not a number"))  # a bare ValueError is a bug too
    with pytest.raises(ValueError, match="invalid literal"):
        cli.main(["eval"])


def test_a_command_check_is_a_llada_error_too(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["sample", f"--workdir={tmp_path}"])
    assert e.value.code == "llada sample: no prompt; pass --prompt=TEXT (repeatable) or --prompt_file=FILE."


@pytest.mark.slow
def test_a_block_run_of_the_default_config_samples_with_the_readme_commands(tmp_path, capsys):
    """configs/tiny.py samples 10 tokens in 10 steps; a block run of it (blocks of 8) answers the README's
    `llada sample --prompt="12+34="` (10 tokens: 2 blocks, rounded up) and `--gen_length=32` alone (steps follow: 32),
    as `llada chat` and `llada eval` take the same flags; gen_length 10 gives the first 10 tokens of gen_length 16
    (10 rounded up to whole blocks) with the same 10 steps. An impossible setting says what to change."""
    from llada_jax import inference

    workdir = str(tmp_path / "block")
    assert cli.main(["train", f"--workdir={workdir}", "--config.objective=block", "--config.diffusion.block_size=8",
                     "--config.train.steps=2", "--config.train.global_batch=8", "--config.train.log_every=2",
                     "--config.checkpoint.every_steps=2"]) == 0
    capsys.readouterr()
    assert cli.main(["sample", f"--workdir={workdir}", "--prompt=12+34="]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("12+34=") and "[1 x 10 tokens in " in printed
    assert cli.main(["sample", f"--workdir={workdir}", "--prompt=12+34=", "--gen_length=32"]) == 0
    assert "[1 x 32 tokens in " in capsys.readouterr().out
    assert cli.main(["chat", f"--workdir={workdir}", "--message=12+34=", "--gen_length=32"]) == 0
    assert capsys.readouterr().out.startswith("user> 12+34=\nassistant> ")
    assert cli.main(["eval", f"--workdir={workdir}", "--gen_length=32", "--tasks=none", "--perplexity=0",
                     f"--out={tmp_path / 'eval.json'}"]) == 0

    run = inference.load_run(workdir)
    assert (run.sampling_args.gen_length, run.sampling_args.steps) == (10, 10)
    assert inference.load_run(workdir, [("sampling.gen_length", "32")]).sampling_args.steps == 32
    longer = inference.load_run(workdir, [("sampling.gen_length", "16"), ("sampling.steps", "10")])
    prompts, key = ["12+34=", "7+5="], jax.random.key(1)
    short, whole = run.sample(prompts, key=key), longer.sample(prompts, key=key)
    np.testing.assert_array_equal(short["tokens"], whole["tokens"][:, :6 + 10])
    np.testing.assert_array_equal(short["order"], whole["order"][:, :10])

    with pytest.raises(SystemExit) as e:
        cli.main(["sample", f"--workdir={workdir}", "--prompt=12+34=", "--gen_length=32", "--steps=10"])
    assert e.value.code.startswith("llada sample: steps=10 must be a positive multiple of the number of blocks "
                                   "(gen_length / the model's diffusion.block_size = 32 / 8, rounded up = 4): set "
                                   "steps=8 or 12, or leave steps out")
