"""Published checkpoints by name, end to end through a real HF cache layout, offline.

The layout is what huggingface_hub writes: refs/main holds the commit,
snapshots/<commit>/checkpoints/<name>/ holds links into blobs/. Every test
runs the installed command with HF_HUB_OFFLINE=1: no network anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import FIXTURES, reference
from nextterm_mlx.hub import checkpoint_name

COMMIT = "3f0c1d2e4b5a69788796a5b4c3d2e1f00112233f"
REPO_DIR = "models--N8Programs--NextTerm-440M-Checkpoints"
# Which committed fixture stands in for which published checkpoint.
STAND_INS = {"final_latest": "untied-v4", "best_val": "untied-v5", "checkpoint_tokens_012000258345": "tied-v5"}


@pytest.fixture
def hf_home(tmp_path):
    home = tmp_path / "hf"
    repo = home / "hub" / REPO_DIR
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    for name, fixture in STAND_INS.items():
        folder = repo / "snapshots" / COMMIT / "checkpoints" / name
        folder.mkdir(parents=True)
        for f in sorted((FIXTURES / fixture).iterdir()):
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.write_bytes(f.read_bytes())
            (folder / f.name).symlink_to(os.path.relpath(blob, folder))
    return home


def command(*args, hf_home: Path, cache: Path, wait=True):
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", NEXTTERM_MLX_CACHE=str(cache))
    process = subprocess.Popen(["nextterm-mlx", *map(str, args)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    if not wait:
        return process
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def first_case(fixture):
    return next(c for c in reference(fixture)["cases"] if c["max_new_tokens"] == 192)


@pytest.mark.parametrize("name", ["12000258345", "012000258345", "checkpoint_tokens_012000258345"])
def test_token_counts_name_checkpoints(name):
    assert checkpoint_name(name) == "checkpoint_tokens_012000258345"
    assert checkpoint_name("best_val") == "best_val"
    assert checkpoint_name("nope") is None


@pytest.mark.parametrize("args,fixture", [(["--checkpoint", "best_val"], "untied-v5"), ([], "untied-v4"),
                                          (["--model", "12000258345"], "tied-v5")])
def test_names_resolve_offline_and_match_transformers(hf_home, tmp_path, args, fixture):
    case = first_case(fixture)
    code, out, err = command("predict", "--json", *args, *case["terms"], hf_home=hf_home, cache=tmp_path / "c")
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["tokens"] == case["generated"][0]
    assert "converting" in err

    code, out_again, err = command("predict", "--json", *args, *case["terms"], hf_home=hf_home, cache=tmp_path / "c")
    assert (code, out_again) == (0, out)
    assert "converting" not in err


def test_a_cached_model_needs_no_hf_cache_at_all(hf_home, tmp_path):
    case = first_case("untied-v5")
    assert command("predict", "--checkpoint", "best_val", 1, hf_home=hf_home, cache=tmp_path / "c")[0] == 0
    code, out, err = command("predict", "--json", "--checkpoint", "best_val", *case["terms"],
                             hf_home=tmp_path / "empty", cache=tmp_path / "c")
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["tokens"] == case["generated"][0]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--checkpoint", "best_val"], "run once online, or give --model PATH"),
        (["--checkpoint", "nope"], "choose one of final_latest, best_val"),
        (["--checkpoint", "best_val", "--model", "x"], "not both"),
    ],
)
def test_offline_and_uncached_is_one_clear_line(tmp_path, args, message):
    code, out, err = command("predict", *args, 1, 2, hf_home=tmp_path / "empty-hf", cache=tmp_path / "c")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_a_checkpoint_missing_from_the_hf_cache_is_named(hf_home, tmp_path):
    code, out, err = command("predict", "--checkpoint", "best_val", "--revision", "0123456789abcdef",
                             1, hf_home=hf_home, cache=tmp_path / "c")
    assert code == 2 and "revision 0123456789abcdef" in err and err.count("\n") == 1, err
    code, out, err = command("predict", "--checkpoint", "13500289737", 1, hf_home=hf_home, cache=tmp_path / "c")
    assert code == 2 and "checkpoints/checkpoint_tokens_013500289737" in err and err.count("\n") == 1, err


def test_two_first_uses_at_once_convert_once(hf_home, tmp_path):
    case = first_case("untied-v5")
    args = ("predict", "--json", "--checkpoint", "best_val", *case["terms"])
    processes = [command(*args, hf_home=hf_home, cache=tmp_path / "c", wait=False) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in processes]
    for out, err, code in results:
        assert code == 0, err
        assert json.loads(out)["predictions"][0]["tokens"] == case["generated"][0]
    assert sum("converting" in err for _, err, _ in results) == 1

    [entry] = [p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]
    meta = json.loads((entry / "nextterm_meta.json").read_text())
    assert meta["source"]["commit"] == COMMIT
    for name, digest in meta["files"].items():
        assert hashlib.sha256((entry / name).read_bytes()).hexdigest() == digest


def test_models_info_and_rm(hf_home, tmp_path):
    cache = tmp_path / "c"
    code, out, err = command("info", "--json", "--checkpoint", "best_val", hf_home=hf_home, cache=cache)
    assert code == 0, err
    details = json.loads(out)
    with safe_open(str(FIXTURES / "untied-v5" / "model.safetensors"), "np") as f:
        expected = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert details["parameters"] == expected
    assert details["source"]["subfolder"] == "checkpoints/best_val"
    assert details["source_meta"]["source_checkpoint"].startswith("random tiny checkpoint")
    assert details["compute_dtype"] == "float32" and details["stored_dtype"] == "bfloat16"

    code, out, err = command("models", "--json", hf_home=hf_home, cache=cache)
    [row] = json.loads(out)
    assert row["source"].endswith("checkpoints/best_val") and row["revision"] == COMMIT[:12]
    assert row["size_bytes"] > 200_000

    code, out, err = command("models", "rm", "best_val", hf_home=hf_home, cache=cache)
    assert code == 0 and "removed" in err
    assert json.loads(command("models", "--json", hf_home=hf_home, cache=cache)[1]) == []
    code, out, err = command("models", "rm", "best_val", hf_home=hf_home, cache=cache)
    assert code == 2 and err.count("\n") == 1
