"""`nextterm-mlx serve`: the model behind a local HTTP API, and a page to
explore sequences with. It needs the `serve` extra (FastAPI and uvicorn),
which the rest of the package does without."""

from __future__ import annotations

import importlib

from ..errors import UserError

NEEDS = ("fastapi", "uvicorn")


def check_installed() -> None:
    """Refuse in one line, before a model is loaded, when the extra is missing."""
    for name in NEEDS:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            raise UserError(f"serve needs {name}, which is not installed: "
                            "pip install 'nextterm-mlx[serve]'") from None
