"""The model's answer beside the exact fits: `predict --explain` and `--hybrid`.

Each verified fit (nextterm_mlx.guess) is shown with the probability the
model gives its next term, and whether the two agree. The hybrid answer is
the simplest fit's when one is verified, the model's otherwise: a verified
fit is rarely wrong, and the model answers where no formula does.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .decode import Prediction
from .guess import DEFAULT_BUDGET, DEFAULT_SPARE, Guesses, guess
from .predictor import Predictor


def explained(
    predictor: Predictor,
    terms: Sequence[int],
    predictions: list[Prediction],
    spare: int = DEFAULT_SPARE,
    strict: bool = False,
    explain: bool = True,
    hybrid: bool = True,
) -> dict[str, Any]:
    """What `predict --explain` (`explanations`, `guess_complete`) and
    `--hybrid` (`hybrid`) add to a prediction's record."""
    guesses = guess(terms, count=len(predictions), spare=spare)
    fields: dict[str, Any] = {}
    if explain:
        fields["explanations"] = explanations(predictor, terms, predictions, guesses, strict)
        fields["guess_complete"] = guesses.complete
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
