"""The Python API: load a model once, then predict next terms."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from .decode import DEFAULT_MAX_NEW_TOKENS, Prediction, next_term
from .errors import UserError
from .loading import load_mlx_folder
from .resolve import resolve_model
from .vocab import SEP, encode_prompt


class Predictor:
    """A loaded NextTerm model that predicts the next terms of integer sequences."""

    def __init__(
        self,
        model: nn.Module,
        config: dict[str, Any],
        path: Path,
        name: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ):
        self.model = model
        self.config = config
        self.path = path
        self.name = name
        self.max_new_tokens = max_new_tokens

    @property
    def max_positions(self) -> int:
        return self.config["max_position_embeddings"]

    def predict(self, terms: Sequence[int]) -> Prediction:
        """The next term of `terms`, e.g. 13 for [1, 1, 2, 3, 5, 8]."""
        return self.continue_sequence(terms, 1)[0]

    def continue_sequence(self, terms: Sequence[int], n: int) -> list[Prediction]:
        """The next `n` terms, each predicted from the sequence extended by the
        ones before it. Stops early, with the reason in the last prediction's
        `stop`, when the model gives no next term."""
        if n < 1:
            raise UserError(f"the number of terms to predict must be at least 1, not {n}")
        prompt = encode_prompt(check_terms(terms))
        if len(prompt) > self.max_positions:
            raise UserError(
                f"the sequence is {len(prompt)} tokens long, more than the model's limit of "
                f"{self.max_positions} (max_position_embeddings); give fewer or shorter terms"
            )
        cache = make_prompt_cache(self.model)
        predictions: list[Prediction] = []
        feed = prompt
        for _ in range(n):
            prediction = next_term(self.model, cache, feed, self.max_new_tokens)
            predictions.append(prediction)
            if prediction.value is None:
                break
            feed = [SEP]
        return predictions


def check_terms(terms: Sequence[int]) -> list[int]:
    terms = list(terms)
    if not terms:
        raise UserError("no terms given; give at least one integer, e.g. 1 1 2 3 5 8")
    for term in terms:
        if isinstance(term, bool) or not isinstance(term, int):
            raise UserError(f"term {term!r} is not an integer; give whole numbers such as 1 2 3")
    return terms


def load(
    model: str | Path,
    *,
    dtype: Optional[str] = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    cache_dir: Optional[str | Path] = None,
) -> Predictor:
    """Load a model for prediction.

    model: a NextTerm checkpoint folder (HF format: converted once into the
        cache) or a folder made by `nextterm-mlx convert`.
    dtype: "float32", "bfloat16" or "float16" to compute in; by default
        float32 on a CPU and the stored dtype on a GPU.
    max_new_tokens: the token budget for one term (the model card's 192).
    cache_dir: where converted models are kept (default ~/.cache/nextterm-mlx,
        or NEXTTERM_MLX_CACHE).
    """
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    folder = resolve_model(model, cache_dir)
    mlx_model, config = load_mlx_folder(folder, dtype)
    return Predictor(mlx_model, config, folder, str(model), max_new_tokens)
