"""Every command the README and docs/cli.md show runs as written: the README's ```bash blocks, then docs/cli.md's, in
order, in one scratch directory (docs/cli.md's examples use what the README's made, e.g. the trained run runs/tiny).

The default `llada train` runs in full, and the first run's answer must be the one the README prints. Later
`llada train` commands run a few steps (SHORTEN), and a few inputs are cut to keep CI short; nothing else changes.
The set-up commands (`pip install ...`, the test command) are the ones CI runs (.ci/run), not run again here.
`llada compile` for a GPU target runs only where JAX's CUDA plugin (the `gpu` extra) is installed; CI has none.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from llada_jax import aot

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CLI = (ROOT / "docs" / "cli.md").read_text()  # the per-command reference; its examples run after the README's

# What a command runs with in this test, on top of what it says: few steps, small inputs.
SHORTEN = [
    (r"^llada train .+", ["--config.train.steps=3", "--config.train.log_every=1", "--config.checkpoint.every_steps=3"]),
    (r"^llada compile ", ["--config.model.n_layers=1", "--config.train.global_batch=8"]),
]
REPLACE = [(r"--max_files=\d+", "--max_files=60"), (r"--n=\d+", "--n=4"), (r"--vocab_size=2048", "--vocab_size=512"),
           (r"--config.train.steps=\d+", "--config.train.steps=3"), (r"--perplexity=\d+", "--perplexity=4")]


def blocks(kind, text=README):
    return re.findall(rf"```{kind}\n(.*?)```", text, re.S)


def commands(which=None, text=README):
    """A page's shell commands in order (of the bash blocks `which`, default all; the README unless `text`):
    continuation lines joined, comments dropped, `a && b` split."""
    out = []
    for block in blocks("bash", text)[which] if which is not None else blocks("bash", text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append(shlex.join(words[:cut]))
                words = words[cut + 1:]
    return out


def shown_commands():
    """What test_every_readme_command_runs runs, before SHORTEN / REPLACE: the README's commands, then docs/cli.md's."""
    return commands() + commands(text=CLI)


def process_argv(words):
    """How this test runs a shown command (split into words), or None for one it does not know."""
    if words[0] == "llada":
        return [sys.executable, "-m", "llada_jax.cli", *words[1:]]
    if words[:2] == ["python", "launch/local_multiprocess.py"]:
        return [sys.executable, str(ROOT / words[1]), *words[2:]]
    return None


def test_every_shown_command_is_one_this_test_runs():
    """Fast: docs/cli.md has its examples, and each shown command is set-up or one the slow test knows how to run."""
    assert len(commands(text=CLI)) >= 15
    for command in shown_commands():
        assert command.startswith(("pip ", "python -m pytest")) or process_argv(shlex.split(command)), command


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = commands(slice(1, 2))  # the second block of "Set up": install the test dependencies, run the tests
    assert setup[-1] == "python -m pytest tests -q -n auto --maxprocesses=4 --dist loadfile" and len(setup) == 3
    assert " && ".join(setup).replace("'", '"') in ci


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    """As a user runs them: each command in its own process on one CPU device, in a scratch directory."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    answers = [line for block in blocks("text") for line in block.splitlines() if re.fullmatch(r"\d+\+\d+=\d+", line)]
    first_train, ran = True, 0
    for command in shown_commands():
        if command.startswith(("pip ", "python -m pytest")):
            continue
        if re.search(r"--topology=h[12]00", command) and aot.cuda_plugin() is None:
            continue  # a GPU target needs the `gpu` extra (JAX's CUDA plugin), which CI does not install;
            # tests/test_aot_gpu.py compiles it where the plugin is installed
        if first_train and command == "llada train":
            first_train = False  # the newcomer's run, exactly as written
        else:
            for pattern, repl in REPLACE:
                command = re.sub(pattern, repl, command)
            for pattern, extra in SHORTEN:
                if re.match(pattern, command):
                    command = " ".join([command] + [e for e in extra if e.split("=")[0] + "=" not in command])
        words = shlex.split(command)
        if (argv := process_argv(words)) is None:
            pytest.fail(f"the README or docs/cli.md shows a command this test does not know how to run: {command}")
        out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
        if words == ["llada", "sample", "--prompt=12+34="]:  # the first run: the answer the README shows
            assert out.stdout.splitlines()[0] == answers[0], out.stdout
        ran += 1
    assert not first_train and ran >= 15
