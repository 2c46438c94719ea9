"""Shared fixtures: the committed random checkpoints and their transformers references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nextterm_mlx.resolve import TINY_CHECKPOINT

FIXTURES = Path(__file__).parent / "fixtures"
# Three random checkpoints (scripts/make_fixtures.py) and the shipped tiny model.
CHECKPOINTS = ("untied-v4", "untied-v5", "tied-v5", "tiny")


def checkpoint_folder(name: str) -> Path:
    return TINY_CHECKPOINT if name == "tiny" else FIXTURES / name


def reference(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.reference.json").read_text())


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """Each fixture checkpoint converted once with the project's converter."""
    from convert.converter import convert_checkpoint

    root = tmp_path_factory.mktemp("converted")
    return {name: convert_checkpoint(checkpoint_folder(name), root / name) for name in CHECKPOINTS}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's converted-model cache."""
    monkeypatch.setenv("NEXTTERM_MLX_CACHE", str(tmp_path / "nextterm-cache"))
