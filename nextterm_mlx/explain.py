"""The model's answer beside the exact fits and the OEIS: `predict --explain` and `--hybrid`.

Each verified fit (nextterm_mlx.guess) is shown with the probability the
model gives its next term, and whether the two agree; where a local OEIS
index exists, so are the sequences that hold the terms, with the OEIS's
next term. The hybrid answer is the simplest fit's when one is verified,
the model's otherwise: a verified fit is rarely wrong, and the model
answers where no formula does.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .decode import Prediction
from .guess import DEFAULT_BUDGET, DEFAULT_SPARE, Guesses, guess
from .oeis import ATTRIBUTION, Index
from .predictor import Predictor

# How many OEIS sequences an explanation shows.
OEIS_MATCHES = 5


def explained(
    predictor: Predictor,
    terms: Sequence[int],
    predictions: list[Prediction],
    spare: int = DEFAULT_SPARE,
    strict: bool = False,
    explain: bool = True,
    hybrid: bool = True,
    index: Optional[Index] = None,
) -> dict[str, Any]:
    """What `predict --explain` (`explanations`, `guess_complete`, and with
    an OEIS `index`, `oeis`) and `--hybrid` (`hybrid`) add to a
    prediction's record."""
    guesses = guess(terms, count=len(predictions), spare=spare)
    fields: dict[str, Any] = {}
    if explain:
        fields["explanations"] = explanations(predictor, terms, predictions, guesses, strict)
        fields["guess_complete"] = guesses.complete
        if index is not None:
            fields["oeis"] = oeis_matches(index, terms, predictions)
    if hybrid:
        fields["hybrid"] = hybrid_answer(predictions, guesses)
    return fields


def explanations(
    predictor: Predictor, terms: Sequence[int], predictions: list[Prediction], guesses: Guesses, strict: bool = False
) -> list[dict[str, Any]]:
    """Each fit's fields, the model's log-probability and probability for
    the fit's next term, and whether the fit gives the model's next terms."""
    if not guesses.fits:
        return []
    scores = predictor.score(terms, [fit.next[0] for fit in guesses.fits], strict)
    values = [p.value for p in predictions]
    return [{**fit.to_dict(), "model_logprob": score.logprob, "model_prob": score.prob,
             "agrees": fit.next[: len(values)] == values}
            for fit, score in zip(guesses.fits, scores)]


def oeis_matches(index: Index, terms: Sequence[int], predictions: list[Prediction]) -> dict[str, Any]:
    """The OEIS sequences that hold the terms, each with the term it stores
    after them and whether that is the model's next term."""
    model_next = predictions[0].value
    matches = [{**match.to_dict(), "agrees": match.next is not None and match.next == model_next}
               for match in index.search(terms, OEIS_MATCHES)]
    return {"matches": matches, "license": ATTRIBUTION}


def hybrid_answer(predictions: list[Prediction], guesses: Guesses) -> dict[str, Any]:
    """The simplest verified fit's next terms, or the model's when none is verified."""
    best = guesses.best
    if best is not None:
        return {"next": best.next, "source": "fit", "family": best.family, "formula": best.formula}
    return {"next": [p.value for p in predictions], "source": "model"}


def hybrid_values(given: Sequence[int], model_values: list[Optional[int]], spare: int = DEFAULT_SPARE,
                  budget: float = DEFAULT_BUDGET) -> tuple[list[Optional[int]], Optional[list[int]]]:
    """The hybrid's next terms for an evaluation, and the fit's (None when no fit is verified)."""
    best = guess(given, count=len(model_values), spare=spare, budget=budget).best
    fitted = best.next if best is not None else None
    return (fitted if fitted is not None else model_values), fitted
