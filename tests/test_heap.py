"""keep_freed_memory() (nextterm_mlx/cpu/heap.py), checked by glibc's own
accounting: mallinfo2's hblks counts the blocks malloc serves with their own
mmap. Each check runs in a fresh process, since tuning malloc is for good."""

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
from nextterm_mlx.cpu import heap
from nextterm_mlx.settings import Settings

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
mode = sys.argv[1]
tuned = False if mode == "plain" else heap.keep_freed_memory(Settings(keep_heap=mode == "tune"))
before = libc.mallinfo2().hblks
block = libc.malloc(24 << 20)
during = libc.mallinfo2().hblks
libc.free(block)
print(json.dumps({"tuned": tuned, "kept": heap.kept, "new_mmapped_blocks": during - before}))
"""


def mmapped_blocks(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", MMAPPED_BLOCKS, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_untuned_malloc_maps_a_large_block_of_its_own():
    """The baseline the tuning changes: otherwise the next test could not fail."""
    assert mmapped_blocks("plain") == {"tuned": False, "kept": False, "new_mmapped_blocks": 1}


def test_tuned_malloc_takes_a_large_block_from_the_heap():
    assert mmapped_blocks("tune") == {"tuned": True, "kept": True, "new_mmapped_blocks": 0}


def test_the_setting_leaves_malloc_alone():
    assert mmapped_blocks("keep_heap=False") == {"tuned": False, "kept": False, "new_mmapped_blocks": 1}


def info(tmp_path, **env: str) -> dict:
    code = ("import sys; from nextterm_mlx.cli import main; "
            "sys.argv = ['nextterm-mlx', 'info', '--model', 'tiny', '--cache-dir', sys.argv[1], '--json']; main()")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(done.stdout)


def test_the_command_line_keeps_freed_memory_unless_told_not_to(tmp_path):
    """`info` runs in the process main() tuned as the environment says, and says so."""
    assert info(tmp_path, NEXTTERM_MLX_KEEP_HEAP="1")["heap_kept"] is True
    assert info(tmp_path, NEXTTERM_MLX_KEEP_HEAP="0")["heap_kept"] is False


# What the scripts below share: the process's RSS, and glibc's malloc and free.
RSS_AND_MALLOC = """
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
"""

# Fills 96 MB with 64 KB blocks (under the mmap threshold, so they come from
# the heap), keeps one block above them so that the heap cannot shrink from
# its top, and frees the others: their pages stay resident until released.
RELEASED = """
import ctypes, json
from nextterm_mlx.cpu import heap
""" + RSS_AND_MALLOC + """size = 64 << 10
start = rss()
blocks = [libc.malloc(size) for _ in range(1536)]
for block in blocks:
    ctypes.memset(block, 1, size)
above = libc.malloc(size)
for block in blocks:
    libc.free(block)
freed = rss()
released = heap.release_freed_memory()
print(json.dumps({"released": released, "resident_once_freed": freed - start, "given_back": freed - rss()}))
"""


def test_freed_memory_below_a_live_block_is_given_back_when_released():
    done = subprocess.run([sys.executable, "-c", RELEASED], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout)
    assert found["released"] is True
    assert found["resident_once_freed"] > 64 << 20  # what free() alone leaves
    assert found["given_back"] > 64 << 20


# With freed memory kept, a thread fills 56 MB with 64 KB blocks (within the
# 64 MB a thread's arena first maps) and frees them: they join the free top
# of the arena, which only a release can return.
RELEASED_FROM_A_THREAD = """
import ctypes, json, sys, threading
from nextterm_mlx.cpu import heap
from nextterm_mlx.settings import Settings
""" + RSS_AND_MALLOC + """heap.keep_freed_memory(Settings(keep_heap=True))
shared = sys.argv[1] == "shared" and heap.share_one_arena()

def fill_and_free():
    size = 64 << 10
    blocks = [libc.malloc(size) for _ in range(896)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in reversed(blocks):
        libc.free(block)

start = rss()
thread = threading.Thread(target=fill_and_free)
thread.start()
thread.join()
freed = rss()
heap.release_freed_memory()
print(json.dumps({"shared": shared, "resident_once_freed": freed - start, "given_back": freed - rss()}))
"""


def released_from_a_thread(arena: str) -> dict:
    done = subprocess.run([sys.executable, "-c", RELEASED_FROM_A_THREAD, arena], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def test_a_threads_own_arena_keeps_its_free_top_when_released():
    """The baseline one arena changes: otherwise the next test could not fail."""
    found = released_from_a_thread("own")
    assert found["resident_once_freed"] > 48 << 20 and found["given_back"] < found["resident_once_freed"] / 4


def test_in_one_arena_a_threads_freed_memory_is_given_back_when_released():
    found = released_from_a_thread("shared")
    assert found["shared"] is True
    assert found["resident_once_freed"] > 48 << 20 and found["given_back"] > found["resident_once_freed"] * 3 / 4
