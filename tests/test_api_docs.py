"""docs/api.md says what the public Python API is.

A ```python block of api.md that holds one signature documents a name:
- `QUALNAME(params) -> type`: a function or method (methods without `self`);
- `class QUALNAME(Base, ...)`: a class and its bases;
- `class QUALNAME(fields)`: a dataclass and its fields, in order, with their
  types and defaults (a default factory's value is its default);
- `QUALNAME -> type`: a property.
Each must exist with exactly that signature (annotations compared as
written in the source); each documented object's docstring must have its
first sentence on the page. The ```pycon examples run on the tiny model.
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import enum
import importlib
import inspect
import re
from pathlib import Path

import pytest

import nextterm_mlx

API = Path(__file__).parents[1] / "docs" / "api.md"
TEXT = API.read_text()
BLOCKS = re.findall(r"```python\n(.*?)\n```", TEXT, re.S)
SIGNATURE = re.compile(r"(?P<cls>class )?(?P<name>nextterm_mlx(?:\.\w+)+)(?:\((?P<params>.*)\))?(?: -> (?P<ret>.+))?",
                       re.S)
SIGNATURES = {m["name"]: m for m in (SIGNATURE.fullmatch(" ".join(b.split())) for b in BLOCKS) if m}


def resolve(qualname: str):
    """The object a dotted name names: the longest importable module, then attributes
    (a property as the property object)."""
    parts = qualname.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = inspect.getattr_static(obj, attr) if inspect.isclass(obj) else getattr(obj, attr)
        return obj
    raise ImportError(qualname)


def same_annotation(written: str | None, documented: ast.expr | None) -> bool:
    if written is None or documented is None:
        return written is None and documented is None
    return ast.unparse(ast.parse(written, mode="eval")) == ast.unparse(documented)


def documented_params(params: str, ret: str | None) -> ast.arguments:
    return ast.parse(f"def f({params}){f' -> {ret}' if ret else ''}: pass").body[0]


def test_the_page_documents_signatures():
    assert len(SIGNATURES) >= 15, sorted(SIGNATURES)


def test_every_name_the_package_exports_is_documented():
    exported = set(nextterm_mlx.__all__) - {"__version__"}
    assert sorted(n for n in exported if f"nextterm_mlx.{n}" not in SIGNATURES) == []
    assert "`nextterm_mlx.__version__`" in TEXT


def test_every_public_method_and_property_of_predictor_is_documented():
    public = [n for n, v in vars(nextterm_mlx.Predictor).items()
              if not n.startswith("_") and (callable(v) or isinstance(v, property))]
    assert public
    assert sorted(n for n in public if f"nextterm_mlx.Predictor.{n}" not in SIGNATURES) == []


def test_the_types_the_methods_return_are_documented():
    for name in ("Candidates", "Candidate", "DecodeStats", "errors.LongPromptWarning"):
        assert f"nextterm_mlx.{name}" in SIGNATURES


@pytest.mark.parametrize("qualname", sorted(SIGNATURES))
def test_documented_signature_matches_the_code(qualname):
    m = SIGNATURES[qualname]
    obj = resolve(qualname)
    if isinstance(obj, property):
        assert not m["params"] and m["ret"], qualname
        assert same_annotation(obj.fget.__annotations__.get("return"), ast.parse(m["ret"], mode="eval").body)
        return
    if m["cls"]:
        assert inspect.isclass(obj), qualname
        if dataclasses.is_dataclass(obj):
            check_dataclass(obj, m["params"])
        elif m["params"]:
            bases = [resolve_base(b.strip()) for b in m["params"].split(",")]
            assert all(issubclass(obj, base) for base in bases), (obj.__mro__, bases)
        return
    assert callable(obj) and m["params"] is not None, qualname
    check_function(obj, documented_params(m["params"], m["ret"]))


def resolve_base(name: str):
    return {"Exception": Exception, "UserWarning": UserWarning, "str": str, "Enum": enum.Enum}[name]


def check_dataclass(cls, params: str) -> None:
    fields = dataclasses.fields(cls)
    doc = documented_params(params, None).args
    assert [a.arg for a in doc.args] == [f.name for f in fields]
    defaults = [None] * (len(doc.args) - len(doc.defaults)) + doc.defaults
    for field, arg, default in zip(fields, doc.args, defaults):
        assert same_annotation(field.type, arg.annotation), field.name
        if field.default is not dataclasses.MISSING:
            expected = field.default
        elif field.default_factory is not dataclasses.MISSING:
            expected = field.default_factory()
        else:
            assert default is None, f"{field.name} has no default"
            continue
        assert default is not None and ast.literal_eval(default) == expected, field.name


def check_function(fn, doc: ast.FunctionDef) -> None:
    params = list(inspect.signature(fn).parameters.values())
    if "." in fn.__qualname__ and params and params[0].name == "self":
        params = params[1:]  # documented as called on an instance
    documented = [*[(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in doc.args.args],
                  *[(a, inspect.Parameter.KEYWORD_ONLY) for a in doc.args.kwonlyargs]]
    assert [(p.name, p.kind) for p in params] == [(a.arg, kind) for a, kind in documented]
    positional_defaults = [None] * (len(doc.args.args) - len(doc.args.defaults)) + doc.args.defaults
    for p, (arg, _), default in zip(params, documented, positional_defaults + doc.args.kw_defaults):
        assert same_annotation(fn.__annotations__.get(p.name), arg.annotation), p.name
        if p.default is inspect.Parameter.empty:
            assert default is None, f"{p.name} has no default"
        else:
            assert default is not None and ast.literal_eval(default) == p.default, p.name
    assert same_annotation(fn.__annotations__.get("return"), doc.returns)


def first_sentence(docstring: str) -> str:
    paragraph = " ".join(inspect.cleandoc(docstring).split("\n\n")[0].split())
    return re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=\.)\s+", paragraph)[0].rstrip(".")


def own_docstring(qualname: str) -> str | None:
    """The docstring written for the object, not one dataclass made up."""
    obj = resolve(qualname)
    doc = (obj.fget if isinstance(obj, property) else obj).__doc__
    if not doc or (inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "(")):
        return None
    return doc


DOCUMENTED_IN_CODE = sorted(name for name in SIGNATURES if own_docstring(name))


def test_most_documented_names_have_docstrings_to_check():
    assert len(DOCUMENTED_IN_CODE) >= len(SIGNATURES) - 5


@pytest.mark.parametrize("qualname", DOCUMENTED_IN_CODE)
def test_the_docstring_s_first_sentence_is_on_the_page(qualname):
    assert first_sentence(own_docstring(qualname)) in " ".join(TEXT.split())


def test_every_stop_reason_is_documented_with_its_value():
    rows = dict(re.findall(r"^\| `StopReason\.(\w+)` \| `\"(\w+)\"` \|", TEXT, re.M))
    assert rows == {member.name: member.value for member in nextterm_mlx.StopReason}


def test_every_documented_attribute_is_set_by_the_predictor():
    table = TEXT.split("Attributes:")[1].split("##")[0]
    attributes = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert attributes
    init = inspect.getsource(nextterm_mlx.Predictor.__init__)
    assert [a for a in attributes if f"self.{a} = " not in init] == []


def test_the_examples_run_on_the_tiny_model():
    """The pycon examples, run in order with `p` the tiny model on the CPU
    (conftest pins it); `...` in an expected output matches anything."""
    examples = "\n\n".join(re.findall(r"```pycon\n(.*?)\n```", TEXT, re.S))
    assert examples.count(">>>") >= 5
    test = doctest.DocTestParser().get_doctest(examples, {"p": nextterm_mlx.load("tiny")}, "api.md", str(API), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries == len(test.examples)
