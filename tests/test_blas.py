"""The OpenBLAS preload: reported by `info`, switched off by NEXTTERM_MLX_BLAS=0,
and the reference parity holds either way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nextterm_mlx.blas import OPENBLAS_CANDIDATES

DESCRIBE = "import nextterm_mlx.blas as b, mlx.core; print(b.describe())"


def python(code: str, **env) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_openblas_is_loaded_when_present_and_can_be_disabled():
    assert python(DESCRIBE, NEXTTERM_MLX_BLAS="0").startswith("bundled reference BLAS (NEXTTERM_MLX_BLAS=0)")
    if sys.platform == "linux" and any(os.path.exists(p) for p in OPENBLAS_CANDIDATES):
        assert python(DESCRIBE).startswith("OpenBLAS (")


def test_importing_mlx_first_is_reported():
    if not (sys.platform == "linux" and any(os.path.exists(p) for p in OPENBLAS_CANDIDATES)):
        pytest.skip("no system OpenBLAS to load")
    described = python("import mlx.core, nextterm_mlx.blas as b; print(b.describe())")
    assert "mlx.core was imported before nextterm_mlx" in described


def test_reference_parity_holds_with_the_bundled_blas():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reference_parity.py",
         "-k", "tokens_and_logits and eager and untied-v4"],
        capture_output=True, text=True, cwd=Path(__file__).parents[1], env={**os.environ, "NEXTTERM_MLX_BLAS": "0"},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
