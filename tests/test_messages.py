"""The library writes nothing to the terminal; the command shows its log
records and warnings as one line each on stderr, and only results on stdout."""

from __future__ import annotations

import logging
import shutil
import warnings

from conftest import FIXTURES, reference
from test_cli import run

PREFIX = "nextterm-mlx: "


def answer(name="untied-v4"):
    """A reference case whose first term is a well-formed integer, and that integer as text."""
    case = next(c for c in reference(name)["cases"] if c["max_new_tokens"] == 192 and c["generated"][0][-1] == 11
                and c["generated"][0][0] != 11)
    return case, "".join("-" if t == 10 else str(t) for t in case["generated"][0][:-1])


def test_conversion_on_first_use_is_one_line_on_stderr(capsys):
    case, value = answer()
    code, out, err = run(["predict", "--model", str(FIXTURES / "untied-v4"), *map(str, case["terms"])], capsys)
    assert (code, out) == (0, f"{value}\n"), err
    [line] = [line for line in err.splitlines() if "converting" in line]
    assert line.startswith(f"{PREFIX}converting ") and "cached as" in line
    assert all(line.startswith(PREFIX) or "it/s" in line or "tensor" in line for line in err.splitlines()), err


def test_a_damaged_cache_entry_is_a_warning_line(capsys, tmp_path):
    case, value = answer()
    argv = ["predict", "--model", str(FIXTURES / "untied-v4"), *map(str, case["terms"])]
    assert run(argv, capsys)[0] == 0
    [entry] = [p for p in (tmp_path / "nextterm-cache").iterdir() if not p.name.startswith(".")]
    (entry / "model.safetensors").unlink()
    code, out, err = run(argv, capsys)
    assert (code, out) == (0, f"{value}\n"), err
    lines = err.splitlines()
    assert any(line.startswith(f"{PREFIX}warning: cache entry {entry.name} is damaged (model.safetensors is missing)")
               for line in lines), err


def test_warnings_from_the_library_are_one_line(capsys, monkeypatch):
    import nextterm_mlx.predictor as predictor

    loaded = predictor.load

    def load_and_warn(*args, **kwargs):
        warnings.warn("a hand-made warning\u2014shown once", UserWarning)
        return loaded(*args, **kwargs)

    monkeypatch.setattr(predictor, "load", load_and_warn)
    case, value = answer("tiny")
    code, out, err = run(["predict", "--model", "tiny", *map(str, case["terms"])], capsys)
    assert (code, out) == (0, f"{value}\n"), err
    assert f"{PREFIX}warning: a hand-made warning\u2014shown once\n" in err


def test_quantizing_prints_nothing_on_stdout(capsys, tmp_path):
    source = shutil.copytree(FIXTURES / "untied-v5", tmp_path / "src")
    code, out, err = run(["convert", str(source), str(tmp_path / "q8"), "--q-bits", "8"], capsys)
    assert (code, out) == (0, ""), err
    assert f"{PREFIX}Quantized model with " in err, err
    assert (tmp_path / "q8" / "model.safetensors").exists()


def test_the_command_leaves_logging_and_warnings_as_it_found_them(capsys):
    logger = logging.getLogger("nextterm_mlx")
    before = (logger.level, logger.propagate, list(logger.handlers), warnings.showwarning)
    run(["checkpoints"], capsys)
    assert (logger.level, logger.propagate, list(logger.handlers), warnings.showwarning) == before
