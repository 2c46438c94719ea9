"""keep_freed_memory(), checked by glibc's own accounting in a fresh process:
mallinfo2's hblks counts the blocks malloc serves with their own mmap."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# Allocates a 24 MB block (under the tuned 32 MB threshold, far over the 128 KB
# one a fresh process starts with) and reports how many blocks are mmapped while it lives.
MMAPPED_BLOCKS = """
import ctypes, json, sys
from nextterm_mlx import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
tuned = heap.keep_freed_memory() if sys.argv[1] == "tune" else False
before = libc.mallinfo2().hblks
block = libc.malloc(24 << 20)
during = libc.mallinfo2().hblks
libc.free(block)
print(json.dumps({"tuned": tuned, "kept": heap.kept, "new_mmapped_blocks": during - before}))
"""


def mmapped_blocks(mode: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MMAPPED_BLOCKS, mode], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True)
    return json.loads(done.stdout)


def test_untuned_malloc_maps_a_large_block_of_its_own():
    """The baseline the tuning changes: otherwise the next test could not fail."""
    assert mmapped_blocks("plain") == {"tuned": False, "kept": False, "new_mmapped_blocks": 1}


def test_tuned_malloc_takes_a_large_block_from_the_heap():
    assert mmapped_blocks("tune") == {"tuned": True, "kept": True, "new_mmapped_blocks": 0}


def test_the_switch_leaves_malloc_alone():
    assert mmapped_blocks("tune", NEXTTERM_MLX_KEEP_HEAP="0") == {"tuned": False, "kept": False,
                                                                  "new_mmapped_blocks": 1}


def test_the_command_line_keeps_freed_memory(tmp_path):
    """`info` runs in the process main() tuned, and says so."""
    code = ("import sys; from nextterm_mlx.cli import main; "
            "sys.argv = ['nextterm-mlx', 'info', '--model', 'tiny', '--cache-dir', sys.argv[1], '--json']; main()")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)["heap_kept"] is True
