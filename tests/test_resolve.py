"""A local checkpoint folder is converted once, and again only when what
conversion reads changes."""

from __future__ import annotations

import os
import shutil

from conftest import FIXTURES
from nextterm_mlx.model_cache import entries
from nextterm_mlx.resolve import resolve_model


def test_files_conversion_does_not_read_trigger_no_conversion(tmp_path):
    folder, cache = tmp_path / "checkpoint", tmp_path / "cache"
    shutil.copytree(FIXTURES / "untied-v4", folder)
    first = resolve_model(str(folder), cache_dir=cache).path
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # what a Finder window leaves
    (folder / "README.md").write_text("notes\n")
    assert resolve_model(str(folder), cache_dir=cache).path == first
    assert len(list(entries(cache))) == 1

    config = folder / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # an edited config
    assert resolve_model(str(folder), cache_dir=cache).path != first
    assert len(list(entries(cache))) == 2
