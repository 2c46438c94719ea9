"""The command line: term parsing, output formats, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FIXTURES, reference
from nextterm_mlx.cli import main, parse_terms
from nextterm_mlx.errors import UserError


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        import io

        fake = io.StringIO(stdin)
        fake.isatty = lambda: False
        monkeypatch.setattr(sys, "stdin", fake)
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def case_value(case):
    """The integer the reference's first generated term spells, by hand."""
    text = "".join("-" if t == 10 else str(t) for t in case["generated"][0][:-1])
    return int(text)


def separator_cases(name):
    """Cases whose first generated term is a well-formed integer (checked by hand)."""
    import re

    def text(c):
        return "".join(str(t) if t < 10 else {10: "-", 11: ","}.get(t, "?") for t in c["generated"][0])

    return [c for c in reference(name)["cases"]
            if c["max_new_tokens"] == 192 and re.fullmatch(r"(0|-?[1-9][0-9]*),", text(c))]


@pytest.mark.parametrize(
    "words,terms",
    [
        (["1", "2", "3"], [1, 2, 3]),
        (["1,2,3"], [1, 2, 3]),
        (["1,", "2,", "3"], [1, 2, 3]),
        (["-1", "2", "-4", "8"], [-1, 2, -4, 8]),
        (["\u22125", "+5"], [-5, 5]),
        (["10 ,20;30"], [10, 20, 30]),
        (["9" * 60], [int("9" * 60)]),
    ],
)
def test_terms_are_parsed_as_typed(words, terms):
    assert parse_terms(words) == terms


@pytest.mark.parametrize("word", ["1.5", "a", "1e3", "0x10", "1/2", "--5", "1-2", "\u0661"])
def test_non_integers_are_refused(word):
    with pytest.raises(UserError, match="not an integer"):
        parse_terms(["1", word])


def test_predict_prints_the_reference_term(capsys, converted):
    case = separator_cases("untied-v5")[0]
    code, out, err = run(["predict", "--model", str(converted["untied-v5"]), *map(str, case["terms"])], capsys)
    assert code == 0, err
    assert out.strip() == str(case_value(case))


def test_predict_json_and_negative_terms(capsys, converted):
    case = next(c for c in separator_cases("untied-v5") if any(t < 0 for t in c["terms"]))
    code, out, err = run(["predict", "--json", "--model", str(converted["untied-v5"]), *map(str, case["terms"])], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["terms"] == case["terms"]
    assert record["predictions"][0]["tokens"] == case["generated"][0]
    assert record["predictions"][0]["value"] == case_value(case)
    assert record["predictions"][0]["stop"] == "separator"
    assert record["predictions"][0]["logprob"] == pytest.approx(case["logprobs"][0], abs=1e-3)


def test_predict_reads_sequences_from_stdin(capsys, converted, monkeypatch):
    cases = separator_cases("untied-v5")[:3]
    stdin = "\n".join(", ".join(map(str, c["terms"])) for c in cases) + "\n\n"
    code, out, err = run(["predict", "--model", str(converted["untied-v5"])], capsys, stdin, monkeypatch)
    assert code == 0, err
    assert out.split("\n")[:-1] == [str(case_value(c)) for c in cases]


def test_model_folder_in_hf_format_is_converted_once_into_the_cache(capsys, tmp_path, monkeypatch):
    case = separator_cases("untied-v4")[0]
    argv = ["predict", "--model", str(FIXTURES / "untied-v4"), *map(str, case["terms"])]
    code, out, err = run(argv, capsys)
    assert (code, out.strip()) == (0, str(case_value(case)))
    assert "converting" in err
    code, out, err = run(argv, capsys)
    assert (code, out.strip(), err) == (0, str(case_value(case)), "")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "--model", "/nonexistent/model", "1", "2"], "/nonexistent/model"),
        (["predict", "--model", "MODEL", "1", "x"], "'x' is not an integer"),
        (["predict", "--model", "MODEL", "--terms", "0", "1"], "--terms"),
        (["predict", "--model", "MODEL", "--max-new-tokens", "0", "1"], "--max-new-tokens"),
        (["predict", "--model", "MODEL", "--jsn", "1"], "--jsn"),
        (["convert", str(FIXTURES / "untied-v5"), str(FIXTURES / "untied-v4")], "--force"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message, converted):
    argv = [str(converted["untied-v5"]) if a == "MODEL" else a for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def test_a_term_that_is_no_integer_is_reported_not_printed(capsys, converted):
    case = reference("tied-v5")["cases"][0]
    assert case["generated"][0] == [11]  # the model wrote an empty term
    code, out, err = run(["predict", "--model", str(converted["tied-v5"]), *map(str, case["terms"])], capsys)
    assert (code, out.strip()) == (0, "(no term: malformed)")


def test_the_installed_command_runs(converted):
    case = separator_cases("untied-v5")[0]
    model = str(converted["untied-v5"])
    done = subprocess.run(["nextterm-mlx", "predict", "--model", model, *map(str, case["terms"])],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(case_value(case))
    done = subprocess.run(["nextterm-mlx", "predict", "--model", model], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and "no terms" in done.stderr and done.stderr.count("\n") == 1
