"""predict --score, --explain and --hybrid, and eval --hybrid, on the tiny model.

The model's probabilities are checked against transformers' teacher-forced
log-probabilities (test_beam's reference); the fits against formulas
written by hand; the hybrid against the Python API's own predictions.
"""

from __future__ import annotations

import json

import pytest

from nextterm_mlx.vocab import SEP, encode_prompt, encode_term

from test_beam import sequence_logprob
from test_cli import run

torch = pytest.importorskip("torch")

NO_FORMULA = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


@pytest.mark.parametrize("terms, values", [
    ([1, 2, 3, 4], [5, 6, 50, -5, 123456]),
    ([1, 1, 2, 3, 5, 8], [13, 0, -1]),
    ([-3, 9, -27], [81, -81]),
])
def test_scores_are_transformers_teacher_forced_logprobs(tiny, reference_model, terms, values):
    for candidate in tiny.score(terms, values):
        tokens = encode_term(candidate.value) + [SEP]
        assert candidate.tokens == tokens
        assert candidate.logprob == pytest.approx(sequence_logprob(reference_model, encode_prompt(terms), tokens),
                                                  abs=1e-4)


@pytest.mark.parametrize("strict", [False, True])
def test_scores_are_the_beam_search_candidates_scores(tiny, strict):
    found = tiny.candidates([2, 4, 6, 8], beams=6, strict=strict).candidates
    scores = tiny.score([2, 4, 6, 8], [c.value for c in found], strict=strict)
    assert [s.logprob for s in scores] == pytest.approx([c.logprob for c in found], abs=1e-5)


def test_predict_score_json(capsys, reference_model):
    code, out, _ = run(["predict", "--model", "tiny", "--json", "--score", "5,7", "1", "2", "3", "4"], capsys)
    scores = json.loads(out)["scores"]
    assert code == 0 and [s["value"] for s in scores] == [5, 7]
    for s in scores:
        expected = sequence_logprob(reference_model, encode_prompt([1, 2, 3, 4]), encode_term(s["value"]) + [SEP])
        assert s["logprob"] == pytest.approx(expected, abs=1e-4)
        assert s["prob"] == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-4)


@pytest.mark.parametrize("score", ["", "1,x", "2.5"])
def test_predict_score_refuses_bad_values_in_one_line(capsys, score):
    code, out, err = run(["predict", "--model", "tiny", "--score", score, "1", "2", "3"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "--score" in err


def test_predict_explain_json(capsys, tiny, reference_model):
    terms = [1, 2, 3, 4, 5, 6, 7, 8]
    code, out, _ = run(["predict", "--model", "tiny", "--json", "--explain", *map(str, terms)], capsys)
    record = json.loads(out)
    [fit] = record["explanations"]
    assert code == 0 and (fit["family"], fit["formula"], fit["next"]) == ("polynomial", "a(n) = n + 1 for n ≥ 0", [9])
    expected = sequence_logprob(reference_model, encode_prompt(terms), [9, SEP])
    assert fit["model_logprob"] == pytest.approx(expected, abs=1e-4)
    assert fit["agrees"] == (tiny.predict(terms).value == 9)


def test_predict_explain_plain_says_when_nothing_fits(capsys, tiny):
    code, out, _ = run(["predict", "--model", "tiny", "--explain", *map(str, NO_FORMULA)], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0] == str(tiny.predict(NO_FORMULA).value)
    assert lines[1].startswith(f"model    {tiny.predict(NO_FORMULA).value}  (prob ")
    assert lines[2].startswith("formula  none verified")


def test_predict_hybrid_takes_the_formula_where_one_fits(capsys):
    code, out, _ = run(["predict", "--model", "tiny", "--hybrid", "--terms", "2", "1", "1", "2", "3", "5", "8",
                                "13", "21"], capsys)
    assert code == 0 and out == "34 55  (from a(n) = a(n-1) + a(n-2) for n ≥ 2)\n"


def test_predict_hybrid_takes_the_model_where_none_fits(capsys, tiny):
    code, out, _ = run(["predict", "--model", "tiny", "--hybrid", "--json", *map(str, NO_FORMULA)], capsys)
    hybrid = json.loads(out)["hybrid"]
    assert code == 0 and hybrid == {"next": [tiny.predict(NO_FORMULA).value], "source": "model"}


def test_eval_hybrid_reports_the_three_answers(capsys, tmp_path, tiny):
    with_formula = {  # name: (given terms, the next term by hand)
        "A000001": ([3 * n + 1 for n in range(12)], 37),
        "A000002": ([2**n for n in range(12)], 4096),
        "A000003": ([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144], 233),
    }
    without = {"A000004": (NO_FORMULA, 31), "A000005": ([4, 1, 8, 2, 9, 9, 1, 5, 3, 7, 0, 6], 2)}
    lines = [f"{name} ,{','.join(map(str, given + [answer]))}," for name, (given, answer) in
             {**with_formula, **without}.items()]
    path = tmp_path / "sequences.txt"
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = run(["eval", "--model", "tiny", "--hybrid", "--json", str(path)], capsys)
    hybrid = json.loads(out)["hybrid"]
    model_right = {name: tiny.predict(given).value == answer for name, (given, answer) in
                   {**with_formula, **without}.items()}
    assert code == 0 and hybrid["spare"] == 3
    assert hybrid["guessers"]["answered"] == 3 and hybrid["guessers"]["correct"] == 3
    assert hybrid["guessers"]["precision"] == 1.0 and hybrid["guessers"]["coverage"] == pytest.approx(3 / 5)
    assert hybrid["model"]["correct"] == sum(model_right.values())
    assert hybrid["hybrid"]["correct"] == 3 + sum(model_right[name] for name in without)
    assert hybrid["agreement"] == pytest.approx(sum(model_right[name] for name in with_formula) / 3)


def test_eval_hybrid_refuses_beams(capsys, tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("A1 ,1,2,3,4,\n")
    code, out, err = run(["eval", "--model", "tiny", "--hybrid", "--beams", "4", str(path)], capsys)
    assert code == 2 and "--hybrid" in err and len(err.strip().splitlines()) == 1


def test_predict_explain_shows_the_local_oeis(capsys, tmp_path, tiny):
    files = tmp_path / "files"
    files.mkdir()
    (files / "stripped").write_text("A000027 ,1,2,3,4,5,6,7,8,9,\nA000290 ,0,1,4,9,16,25,36,\n"
                                    "A000001 ,7,1,2,3,4,5,6,40,\n")
    (files / "names").write_text("A000027 The positive integers.\nA000290 The squares.\n")
    cache = tmp_path / "cache"
    assert run(["oeis", "download", "--from", str(files), "--cache-dir", str(cache)], capsys)[0] == 0
    terms = [1, 2, 3, 4, 5, 6]
    code, out, _ = run(["predict", "--model", "tiny", "--json", "--explain", "--cache-dir", str(cache),
                        *map(str, terms)], capsys)
    oeis = json.loads(out)["oeis"]
    model_next = tiny.predict(terms).value
    # By hand: A000027 starts with the terms (next 7); A000001 holds them from offset 1 (next 40).
    assert code == 0 and [(m["id"], m["offset"], m["next"]) for m in oeis["matches"]] == [("A000027", 0, 7),
                                                                                          ("A000001", 1, 40)]
    assert [m["agrees"] for m in oeis["matches"]] == [model_next == 7, model_next == 40]
    assert "CC BY-SA 4.0" in oeis["license"]
    code, out, _ = run(["predict", "--model", "tiny", "--explain", "--cache-dir", str(cache), *map(str, terms)],
                       capsys)
    assert code == 0 and "oeis     A000027  offset 0  next 7  The positive integers." in out
    assert "CC BY-SA 4.0" in out


def test_predict_explain_without_an_index_shows_no_oeis(capsys):
    code, out, _ = run(["predict", "--model", "tiny", "--json", "--explain", "1", "2", "3"], capsys)
    assert code == 0 and "oeis" not in json.loads(out)
