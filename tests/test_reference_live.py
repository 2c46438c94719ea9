"""Regenerate the transformers reference live, so the committed JSON can't go stale.

Runs convert/reference.py's transformers call on the committed checkpoints
now, with whatever transformers and torch are installed, and checks both the
committed reference and MLX against it.
"""

from __future__ import annotations

import numpy as np
import pytest

import nextterm_mlx
from conftest import CHECKPOINTS, checkpoint_folder, reference

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_live_transformers_matches_committed_and_mlx(name, converted):
    from nextterm_mlx.convert.reference import reference_outputs

    committed = reference(name)["cases"]
    cases = [{k: case[k] for k in ("terms", "max_new_tokens", "continue")} for case in committed]
    live = reference_outputs(checkpoint_folder(name), cases)["cases"]

    predictor = nextterm_mlx.load(converted[name], dtype="float32")
    for old, new in zip(committed, live):
        assert new["generated"] == old["generated"], old["terms"]
        np.testing.assert_allclose(new["logits"], old["logits"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(new["logprobs"], old["logprobs"], atol=1e-4)
        predictor.max_new_tokens = new["max_new_tokens"]
        mlx_tokens = [p.tokens for p in predictor.continue_sequence(new["terms"], new["continue"])]
        assert mlx_tokens == new["generated"], new["terms"]
