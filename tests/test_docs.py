"""The documents say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_is_at_most_250_lines():
    # It is for users: what the tool is, the two set-up commands, usage; the rest is in docs/.
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_nextterm_variable_the_code_reads_is_in_the_environment_table():
    table = (ROOT / "docs" / "environment.md").read_text()
    sources = [p.read_text() for p in (ROOT / "nextterm_mlx").rglob("*.py")]
    variables = {v for text in sources for v in re.findall(r"NEXTTERM_MLX_[A-Z0-9_]+", text)}
    assert variables, "the scan found no variable at all"
    assert sorted(v for v in variables if f"`{v}`" not in table) == []
