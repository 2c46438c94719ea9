"""The device switch, and the float32 that is the reference's on every device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

COMMAND = str(Path(sys.executable).with_name("nextterm-mlx"))


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, **env})


@pytest.mark.skipif(mx.is_available(mx.gpu), reason="this machine has a GPU")
@pytest.mark.parametrize("how", ["variable", "option"])
def test_asking_for_a_gpu_where_there_is_none_is_one_line_and_exit_2(how):
    done = run("predict", "--model", "tiny", "1", "2", "3", *(["--device", "gpu"] if how == "option" else []),
               **({"NEXTTERM_MLX_DEVICE": "gpu"} if how == "variable" else {}))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "no GPU" in done.stderr and "--device cpu" in done.stderr


def test_the_cpu_can_be_asked_for_and_info_reports_it():
    done = run("info", "--model", "tiny", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    details = json.loads(done.stdout)
    assert details["device"] == "Device(cpu, 0)" and details["compute_dtype"] == "float32"


def test_an_unknown_device_in_the_variable_is_refused_in_one_line():
    done = run("predict", "--model", "tiny", "1", "2", "3", NEXTTERM_MLX_DEVICE="tpu")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "'tpu'" in done.stderr


@pytest.mark.parametrize("set_by_user, expected", [(None, "0"), ("1", "1")])
def test_tf32_is_off_unless_the_user_turned_it_on(set_by_user, expected):
    env = {k: v for k, v in os.environ.items() if k != "MLX_ENABLE_TF32"}
    if set_by_user is not None:
        env["MLX_ENABLE_TF32"] = set_by_user
    done = subprocess.run([sys.executable, "-c", "import nextterm_mlx, os; print(os.environ['MLX_ENABLE_TF32'])"],
                          capture_output=True, text=True, env=env)
    assert done.stdout.strip() == expected, done.stderr


def test_an_intel_mac_is_told_why_not_instead_of_failing_obscurely():
    code = ("import platform, sys\n"
            "sys.platform = 'darwin'\n"
            "platform.machine = lambda: 'x86_64'\n"
            "try:\n"
            "    import nextterm_mlx\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "needs an Apple silicon Mac (or Linux): MLX has no build for Intel Macs" in done.stdout, done.stderr


def test_no_mlx_requirement_applies_on_an_intel_mac_and_mlx_does_on_apple_silicon():
    import tomllib

    from packaging.requirements import Requirement

    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    requirements = [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]

    def needed(machine: str) -> set[str]:
        environment = {"sys_platform": "darwin", "platform_machine": machine}
        return {r.name for r in requirements if r.marker is None or r.marker.evaluate(environment)}

    assert {"mlx", "mlx-lm"} <= needed("arm64")
    assert not {"mlx", "mlx-lm"} & needed("x86_64")
