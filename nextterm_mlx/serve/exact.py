"""Integers of any size in the API's JSON. Python writes them exactly as
JSON numbers, but JavaScript reads every number as a double, exact only up
to 2**53; so each sequence term (under "terms", "value" or "next") also
travels as a decimal string, under the same key with "_str" appended."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

TERM_KEYS = ("terms", "value", "next")


class ExactJSONResponse(JSONResponse):
    """The API's responses: JSON with every term also given as a string."""

    def render(self, content: Any) -> bytes:
        return super().render(with_strings(content))


def with_strings(content: Any) -> Any:
    """`content` with a "<key>_str" beside every term key that holds terms."""
    if isinstance(content, list):
        return [with_strings(item) for item in content]
    if not isinstance(content, dict):
        return content
    spelled = {}
    for key, value in content.items():
        spelled[key] = with_strings(value)
        if key in TERM_KEYS and holds_terms(value):
            spelled[f"{key}_str"] = as_strings(value)
    return spelled


def holds_terms(value: Any) -> bool:
    if isinstance(value, list):
        return all(map(holds_terms, value))
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def as_strings(value: Any) -> Any:
    if isinstance(value, list):
        return [as_strings(item) for item in value]
    return None if value is None else str(value)
