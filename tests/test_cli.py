"""The `llada` command's error contract: a LladaError raised in any command is printed without a traceback and exits
non-zero; any other exception is a bug and keeps its traceback. Every error class of the package is a LladaError.
(test_config.test_cli_errors_are_one_clear_line checks the same through a real process.)"""
import importlib
import inspect

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
