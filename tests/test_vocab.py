"""The vocabulary against the model card's examples and hand-made cases."""

from hypothesis import given
from hypothesis import strategies as st

from nextterm_mlx.vocab import decode_term, encode_prompt, encode_term


def test_model_card_examples():
    assert encode_prompt([1, 2, 3]) == [12, 1, 11, 2, 11, 3, 11]
    assert encode_term(-12) == [10, 1, 2]
    assert encode_prompt([0, -7]) == [12, 0, 11, 10, 7, 11]


def test_huge_terms_are_exact():
    term = int("7" * 150 + "3" * 150)
    assert encode_term(term) == [7] * 150 + [3] * 150
    assert decode_term(encode_term(-term)) == -term


def test_malformed_terms_have_no_value():
    for tokens in ([], [10], [0, 5], [10, 0], [10, 0, 1], [1, 10, 2], [12], [1, 15], [13], [1, 11]):
        assert decode_term(tokens) is None, tokens
    assert decode_term([0]) == 0
    assert decode_term([1, 0]) == 10
    assert decode_term([10, 1, 0]) == -10


@given(st.integers(min_value=-(10**300), max_value=10**300))
def test_round_trip(n):
    assert decode_term(encode_term(n)) == n
    assert str(n) == "".join("-" if t == 10 else str(t) for t in encode_term(n))
