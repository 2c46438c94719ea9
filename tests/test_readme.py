"""The README's examples print what the README shows.

A ```console block is a list of commands (lines starting with `$ `), each
followed by the lines it prints. A block runs when every nextterm-mlx
command in it works offline: it uses `--model tiny` or a folder given by
path (`--model ./folder`), converts the shipped tiny checkpoint
(`convert nextterm_mlx/models/tiny ...`), or needs no model
(`checkpoints`, `guess`, and `oeis` but for a download from oeis.org). A
block with a `--model tiny` command must run: it may not also hold a
command that needs the hub.

Each block runs in one bash, command after command, in a fresh folder that
holds `nextterm_mlx` (the installed package) as a source checkout does, with
`nextterm-mlx` the console script next to sys.executable, NEXTTERM_MLX_CACHE
a fresh folder, and the CPU pinned (conftest). What a command prints on
stdout and stderr is compared with the README, line by line, after this
normalisation:
- the notices only a model's first use prints (`nextterm-mlx: converting
  ...`, and mlx-lm's `Quantized model with ... bits per weight`) are
  dropped: they depend on what the cache already holds;
- floating-point numbers agree within 1e-3 (the tolerance the tests allow
  the logits), since the last digits move with the BLAS and the CPU;
- the figures of eval's `speed` line are not compared: they are timings.

The ```pycon blocks run as doctests on the same terms.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nextterm_mlx

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
CONSOLE_SCRIPT = Path(sys.executable).with_name("nextterm-mlx")

FIRST_USE_ONLY = ("nextterm-mlx: converting ", "nextterm-mlx: Quantized model with ")
FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
TIMINGS = ("speed ",)
MARK = "@@@ command done @@@"


def console_blocks() -> list[list[tuple[str, list[str]]]]:
    """Each console block as (command, expected output lines) pairs."""
    blocks = []
    for body in re.findall(r"^ *```console\n(.*?)\n *```", README, re.S | re.M):
        commands: list[tuple[str, list[str]]] = []
        for line in textwrap.dedent(body).splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            elif commands and commands[-1][0].endswith("\\"):
                commands[-1] = (commands[-1][0][:-1] + line, [])
            else:
                commands[-1][1].append(line)
        blocks.append(commands)
    return blocks


def nextterm_commands(command: str) -> list[list[str]]:
    """The arguments of each nextterm-mlx call in a shell command line."""
    words = shlex.split(command, comments=True)
    calls, current = [], None
    for word in words:
        if word == "nextterm-mlx":
            current = []
            calls.append(current)
        elif word in ("|", "&&", ";"):
            current = None
        elif current is not None:
            current.append(word)
    return calls


def uses_tiny(args: list[str]) -> bool:
    return any(a == "--model" and b == "tiny" for a, b in zip(args, args[1:]))


def offline(args: list[str]) -> bool:
    if not args:
        return False
    if args[0] in ("checkpoints", "guess"):
        return True
    if args[0] == "oeis":
        return args[1:2] != ["download"] or "--from" in args
    if args[0] == "convert":
        return len(args) > 1 and args[1].startswith("nextterm_mlx/models/tiny")
    model = next((b for a, b in zip(args, args[1:]) if a == "--model"), None)
    return model is not None and (model == "tiny" or model.startswith(("./", "/"))) and "--checkpoint" not in args


BLOCKS = console_blocks()
CALLS = [[args for command, _ in block for args in nextterm_commands(command)] for block in BLOCKS]
RUN = [block for block, calls in zip(BLOCKS, CALLS) if calls and all(offline(args) for args in calls)]


def test_the_readme_has_offline_examples_to_run():
    assert CONSOLE_SCRIPT.exists(), CONSOLE_SCRIPT
    assert len(RUN) >= 5
    assert sum(uses_tiny(args) for calls in CALLS for args in calls) >= 8


def test_every_block_with_a_tiny_example_runs_offline():
    mixed = [block[0][0] for block, calls in zip(BLOCKS, CALLS)
             if any(uses_tiny(args) for args in calls) and not all(offline(args) for args in calls)]
    assert mixed == []


def normalised(lines: list[str]) -> list[str]:
    return [line.rstrip() for line in lines if not line.startswith(FIRST_USE_ONLY)]


def same_line(expected: str, got: str) -> bool:
    if expected.startswith(TIMINGS):
        return NUMBER.sub("N", expected) == NUMBER.sub("N", got)
    if FLOAT.sub("F", expected) != FLOAT.sub("F", got):
        return False
    return all(abs(float(a) - float(b)) <= 1e-3 for a, b in zip(FLOAT.findall(expected), FLOAT.findall(got)))


def run_block(block: list[tuple[str, list[str]]], folder: Path, cache: Path) -> list[list[str]]:
    """Each command's output lines, run in turn in one bash in `folder`."""
    (folder / "nextterm_mlx").symlink_to(Path(nextterm_mlx.__file__).parent)
    script = ["exec 2>&1"]
    for command, _ in block:
        script += [command, f"status=$?; echo '{MARK}'; (exit $status)"]
    env = {**os.environ, "NEXTTERM_MLX_CACHE": str(cache),
           "PATH": f"{CONSOLE_SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)
    outputs = done.stdout.split(MARK + "\n")
    assert len(outputs) == len(block) + 1, done.stdout + done.stderr
    return [output.splitlines() for output in outputs[:-1]]


@pytest.mark.parametrize("block", RUN, ids=[block[0][0][:60] for block in RUN])
def test_example_prints_what_the_readme_shows(block, tmp_path_factory):
    folder, cache = tmp_path_factory.mktemp("example"), tmp_path_factory.mktemp("cache")
    for (command, expected), got in zip(block, run_block(block, folder, cache)):
        expected, got = normalised(expected), normalised(got)
        assert len(expected) == len(got) and all(map(same_line, expected, got)), (
            f"$ {command}\nREADME:\n" + "\n".join(expected) + "\ngot:\n" + "\n".join(got))


def test_the_python_examples_run():
    """`...` in an expected output matches anything."""
    examples = "\n\n".join(re.findall(r"```pycon\n(.*?)\n```", README, re.S))
    assert examples.count(">>>") >= 3
    test = doctest.DocTestParser().get_doctest(examples, {}, "README.md", str(ROOT / "README.md"), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries == len(test.examples)
