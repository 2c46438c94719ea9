"""Keep freed memory in the process's heap for the next operation (Linux, glibc).

MLX's CPU backend allocates every operation's output with malloc and frees
it when the array dies. glibc serves large blocks with fresh mmaps (from
128 KB at start; its threshold then follows the sizes freed) and returns the
top of its heap to the system, so a forward pass over a batch keeps faulting
in zero-filled pages, and the kernel spends a visible share of a batched
forward pass clearing them. Taking blocks of up to 32 MB from the heap, and
keeping up to 1 GB free at its top, avoids that at the same peak memory;
what the process freed stays mapped until it exits (docs/cpu.md has the
measurements).

The command line and the benchmark's nextterm-mlx workers call
keep_freed_memory(); a library user may. NEXTTERM_MLX_KEEP_HEAP=0 leaves
malloc as it is.

release_freed_memory() hands the free pages back, kept or not: glibc can
only shrink a heap from its top, so memory freed below a block still in use
stays resident either way. It reaches every free page of the main arena, but
not the free top of the arena glibc gives another thread; so a long-running
process that releases when it has nothing to do (the server, once its queue
has been empty for a while) first has share_one_arena() put every thread's
blocks in the main arena.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Optional

from ..settings import Settings

# mallopt's parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

LARGEST_HEAP_BLOCK = 32 << 20  # glibc's own ceiling for its moving mmap threshold
FREE_HEAP_TOP_KEPT = 1 << 30

# Whether keep_freed_memory() has tuned this process: what `info` reports.
kept = False


def keep_freed_memory(settings: Settings) -> bool:
    """Tune glibc's malloc as the module says; True if it now is."""
    global kept
    if kept:
        return True
    mallopt = glibc_function("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None or not settings.keep_heap:
        return False
    kept = bool(mallopt(M_MMAP_THRESHOLD, LARGEST_HEAP_BLOCK)) and bool(mallopt(M_TRIM_THRESHOLD, FREE_HEAP_TOP_KEPT))
    return kept


def share_one_arena() -> bool:
    """Serve the threads that first allocate from now on from the main
    arena, as the main thread is; True if glibc took the setting."""
    mallopt = glibc_function("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, 1))


def release_freed_memory() -> bool:
    """Give the pages of every free block in malloc's heaps back to the
    system (glibc's malloc_trim); True if any were. What is allocated next
    takes fresh zeroed pages again."""
    malloc_trim = glibc_function("malloc_trim", ctypes.c_size_t)
    return malloc_trim is not None and bool(malloc_trim(0))


def glibc_function(name: str, *argtypes: Any) -> Optional[Any]:
    """The C library's function `name` taking `argtypes`, on Linux; None
    elsewhere, or where the C library has no such function (not glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except AttributeError:
        return None
    function.argtypes = list(argtypes)
    return function
