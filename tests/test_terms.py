"""The one set of term rules (nextterm_mlx.terms), and the three readers that use it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from nextterm_mlx.cli import parse_terms as cli_terms
from nextterm_mlx.errors import UserError
from nextterm_mlx.sequence_files import read_sequence_file
from nextterm_mlx.terms import NoTerms, check_terms, parse_term, parse_text, parse_values

TEXTS = [
    ("1 2 3", [1, 2, 3]),
    ("1,2,3", [1, 2, 3]),
    ("1, 2; 3", [1, 2, 3]),
    (" 10 ,20;30\t40 ", [10, 20, 30, 40]),
    (",0,1,1,2,", [0, 1, 1, 2]),
    ("-1 +2 \u22123 \u20134 \ufe635 \uff0d6", [-1, 2, -3, -4, -5, -6]),
    ("007 -00", [7, 0]),
    ("9" * 60, [int("9" * 60)]),
]
NOT_TERMS = ["1.5", "a", "1e3", "0x10", "1/2", "--5", "+-5", "1-2", "5-", "1_000", "\u0661", "\uff11", "-", "+"]


@pytest.mark.parametrize("text,terms", TEXTS)
def test_text_is_read_by_the_rules(text, terms):
    assert parse_text(text) == terms


@pytest.mark.parametrize("word", NOT_TERMS)
def test_words_that_are_no_integer_are_named(word):
    with pytest.raises(ValueError, match="is not an integer") as raised:
        parse_text(f"1 {word} 2")
    assert repr(word) in str(raised.value)


@pytest.mark.parametrize("text", ["", "  ", ", ;,", "\n"])
def test_text_without_terms_is_refused(text):
    with pytest.raises(NoTerms):
        parse_text(text)


def test_values_are_ints_or_strings_that_spell_one_term():
    assert parse_values([1, -2, np.int64(3), np.uint8(4), "5", "\u22126", "+7", 2**70]) == [1, -2, 3, 4, 5, -6, 7, 2**70]
    assert all(type(t) is int for t in parse_values([np.int32(1), "2"]))
    for value in (True, False, 2.5, 5.0, np.float64(1.0), None, [1], "1,2", " 5", "1.0"):
        with pytest.raises(ValueError, match="is not an integer"):
            parse_values([1, value])
    with pytest.raises(NoTerms):
        parse_values([])
    assert parse_term("-12") == -12


@pytest.mark.parametrize("text,terms", TEXTS)
def test_the_cli_the_files_and_the_api_read_the_same_text_alike(text, terms, tmp_path):
    assert cli_terms([text]) == terms
    assert cli_terms(text.split(" ")) == terms  # as a shell splits it
    assert check_terms(text) == terms
    plain = tmp_path / "plain.txt"
    plain.write_text(f"# header\n{text}\n")
    assert [s.terms for s in read_sequence_file(plain, "plain").sequences] == [terms]
    oeis = tmp_path / "oeis.txt"
    oeis.write_text(f"A000001 ,{','.join(map(str, terms))},\n")
    assert [s.terms for s in read_sequence_file(oeis).sequences] == [terms]
    jsonl = tmp_path / "s.jsonl"
    words = [w for w in re.split(r"[\s,;]+", text) if w]  # each word as a JSON string
    jsonl.write_text(json.dumps({"seq": words}) + "\n")
    assert [s.terms for s in read_sequence_file(jsonl).sequences] == [terms]


@pytest.mark.parametrize("word", NOT_TERMS)
def test_the_cli_the_files_and_the_api_refuse_the_same_words(word, tmp_path):
    with pytest.raises(UserError, match=re.escape(f"{word!r} is not an integer")):
        cli_terms(["1", word])
    with pytest.raises(UserError, match="is not an integer"):
        check_terms(["1", word])
    with pytest.raises(UserError, match="is not an integer"):
        check_terms(f"1 {word}")
    plain = tmp_path / "plain.txt"
    plain.write_text(f"1 2\n1 {word}\n")
    assert read_sequence_file(plain, "plain").problems == [f"line 2: {word!r} is not an integer"]
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text(json.dumps({"seq": [1, word]}) + "\n")
    assert read_sequence_file(jsonl).problems == [f"line 1: {word!r} is not an integer"]


def test_no_terms_is_one_clear_error_everywhere():
    for call in (lambda: cli_terms([" , "]), lambda: check_terms([]), lambda: check_terms("")):
        with pytest.raises(UserError, match="no terms given"):
            call()
