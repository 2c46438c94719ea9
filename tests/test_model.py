"""Our Qwen3 forward pass against mlx-lm's, and a converted folder in mlx-lm.

nextterm_mlx/model.py must compute what mlx_lm.models.qwen3 computes from
the same folder: with MLX's own operations (the default Kernels) the logits
are equal bit for bit, and with the Linux-CPU kernels they agree within
float32 rounding of a different exp. The transformers references are
checked in test_reference_parity.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model

from conftest import CHECKPOINTS, reference
from nextterm_mlx.loading import load_mlx_folder
from nextterm_mlx.model import Kernels

PACKAGE = Path(__file__).parents[1] / "nextterm_mlx"


def prefill_then_step(model, prompt: list[int]) -> tuple[mx.array, mx.array]:
    """Logits of a prompt's prefill and of one step after it, through a KV cache."""
    cache = make_prompt_cache(model)
    first = model(mx.array([prompt]), cache=cache)
    step = model(mx.argmax(first[:, -1:], axis=-1), cache=cache)
    mx.eval(first, step)
    return first, step


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_logits_equal_mlx_lm_qwen3(name, converted):
    theirs, _ = load_model(converted[name])  # mlx-lm picks its own qwen3 from config.json
    theirs.set_dtype(mx.float32)
    ours, _ = load_mlx_folder(converted[name], "float32")
    fast_kernels = ours.kernels
    for case in reference(name)["cases"][:4]:
        expected = prefill_then_step(theirs, case["prompt"])
        ours.kernels = Kernels()
        for a, b in zip(prefill_then_step(ours, case["prompt"]), expected):
            assert mx.array_equal(a, b).item(), case["terms"]
        ours.kernels = fast_kernels
        for a, b in zip(prefill_then_step(ours, case["prompt"]), expected):
            np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-4, rtol=1e-5)


def test_nothing_assigns_to_an_mlx_lm_module():
    """The package calls its pieces explicitly; it patches no library at run time."""
    patches = [f"{path.name}: {line.strip()}" for path in PACKAGE.rglob("*.py")
               for line in path.read_text().splitlines() if re.search(r"qwen3\.\w* *=|mlx_lm\.[\w.]* *=", line)]
    assert patches == []


def test_macos_never_imports_the_cpu_path(tmp_path):
    """Where the platform is not Linux, a model loads and predicts with MLX's
    own operations, and nothing of nextterm_mlx.cpu is imported."""
    code = (
        "import sys\n"
        "import nextterm_mlx\n"
        "from nextterm_mlx.cli import main\n"
        "import mlx_lm.utils  # the CLI does not import it\n"
        "sys.platform = 'darwin'  # after the imports: mlx_lm's own depend on the platform\n"
        "predictor = nextterm_mlx.load('tiny')\n"
        "print(predictor.predict([1, 2, 3, 4]).value, type(predictor.model.kernels).__name__)\n"
        "print(sorted(name for name in sys.modules if name.startswith('nextterm_mlx.cpu')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "NEXTTERM_MLX_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["5 Kernels", "[]"]
