"""How the distribution is installed: what it imports, and what can shadow it."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from importlib.metadata import version
from pathlib import Path

from conftest import reference
from nextterm_mlx.resolve import TINY_CHECKPOINT

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# What the converter may import from the runtime: the shared vocabulary and
# the small modules with no model or decoding in them.
CONVERTER_MAY_USE = {"nextterm_mlx.vocab", "nextterm_mlx.errors", "nextterm_mlx.meta", "nextterm_mlx.dtypes"}


def installed_modules() -> dict[str, Path]:
    """Every module of the packages pyproject.toml installs, by name, at the
    place the installed distribution imports it from. Compiled modules are
    included: they import nothing of ours, but `from . import _compiled`
    must find them."""
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]
    modules = {}
    for package in packages:
        spec = importlib.util.find_spec(package)
        for folder in spec.submodule_search_locations:
            for path in sorted(Path(folder).iterdir()):
                stem = path.name.partition(".")[0]
                if path.suffix == ".py" or any(path.name.endswith(s) for s in EXTENSION_SUFFIXES):
                    modules[package if stem == "__init__" else f"{package}.{stem}"] = path
    return modules


def imported_names(path: Path, name: str) -> set[str]:
    """The names of what a module imports, anywhere in it (inside functions
    too), relative imports resolved; `from a import b` gives a.b, which is
    the module a.b or, when b is a function or class, a name in a."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the installed modules it imports. A name that is not a
    module (`from a import b` where b is a function) points to its longest
    prefix that is one. A package's __init__, which Python runs before any
    of its modules, is an edge only where it is imported by name."""
    modules = installed_modules()

    def module_of(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    return {name: {m for m in map(module_of, imported_names(path, name)) if m and m != name}
            if path.suffix == ".py" else set() for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_hand_made_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_resolve_as_python_does(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import a.b\nfrom . import c\nfrom ..d import e\n\ndef f():\n    from .g import h\n")
    assert imported_names(module, "pkg.sub.m") == {"a.b", "pkg.sub.c", "pkg.d.e", "pkg.sub.g.h"}


def test_the_installed_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    assert {"nextterm_mlx.cli", "nextterm_mlx.convert.converter", "nextterm_mlx.vocab"} <= graph.keys()
    assert "nextterm_mlx.convert.converter" in graph["nextterm_mlx.model_cache"]  # an edge is seen
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_converter_uses_only_the_shared_modules_of_the_runtime():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("nextterm_mlx.convert"):
            runtime = {t for t in targets if not t.startswith("nextterm_mlx.convert")}
            assert runtime <= CONVERTER_MAY_USE, (name, runtime - CONVERTER_MAY_USE)


def test_importing_the_converter_loads_no_api():
    """The package's __init__ runs first; it must not pull the API in either."""
    code = ("import sys, nextterm_mlx.convert.converter, nextterm_mlx.convert.reference; "
            "print(sorted(m for m in sys.modules if m.startswith('nextterm_mlx')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert not loaded & {"nextterm_mlx.predictor", "nextterm_mlx.loading", "nextterm_mlx.cli",
                         "nextterm_mlx.decode", "nextterm_mlx.resolve"}, loaded


def test_a_users_convert_py_does_not_shadow_the_converter(tmp_path):
    """predict (which converts the tiny checkpoint into the cache) and
    convert, run from a folder that holds a convert.py of its own."""
    (tmp_path / "convert.py").write_text("raise RuntimeError('the user convert.py was imported')\n")
    (tmp_path / "convert").mkdir()
    (tmp_path / "convert" / "__init__.py").write_text("raise RuntimeError('the user convert/ was imported')\n")
    case = next(c for c in reference("tiny")["cases"] if c["terms"] == [1, 2, 3])
    expected = "".join("-" if t == 10 else str(t) for t in case["generated"][0][:-1])

    def run(*argv):
        return subprocess.run([str(Path(sys.executable).with_name("nextterm-mlx")), *argv], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(tmp_path)})

    done = run("predict", "--model", "tiny", "1", "2", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{expected}\n"
    done = run("convert", str(TINY_CHECKPOINT), "out")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_mlx_and_mlx_lm_are_bounded_and_admit_the_installed_versions():
    from packaging.requirements import Requirement

    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for name in ("mlx", "mlx-lm"):
        requirements = [r for r in map(Requirement, dependencies) if r.name == name]
        assert requirements, name
        installed = version(name)
        for requirement in requirements:
            assert any(s.operator == "<" for s in requirement.specifier), requirement
            assert requirement.specifier.contains(installed), (requirement, installed)


def test_info_names_the_mlx_and_mlx_lm_versions(capsys):
    from nextterm_mlx.cli import main

    main(["info", "--model", "tiny", "--json"])
    details = json.loads(capsys.readouterr().out)
    assert details["mlx_version"] == version("mlx")
    assert details["mlx_lm_version"] == version("mlx-lm")
