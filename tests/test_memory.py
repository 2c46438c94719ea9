"""Peak memory in bytes, whatever unit the platform's getrusage uses."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from nextterm_mlx.memory import peak_memory_bytes, peak_rss_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_rss_is_the_kernels_high_water_mark_in_bytes():
    block = bytearray(64 << 20)  # raise the peak well above the noise of a few pages
    block[::4096] = b"\1" * len(block[::4096])
    high_water_kb = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))
    assert abs(peak_rss_bytes() - high_water_kb * 1024) < 8 << 20
    assert peak_memory_bytes() == peak_rss_bytes()  # on the CPU
