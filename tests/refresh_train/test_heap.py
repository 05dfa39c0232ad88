"""The trainer's bounds on glibc's heap (``refresh_train/heap.py``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from refresh_train.heap import _glibc

pytestmark = pytest.mark.skipif(
    _glibc() is None, reason="not glibc (Linux with libc.so.6): the heap calls do nothing here"
)

# In a fresh process: 160 MiB of 64 KiB blocks (below malloc's mmap threshold, so
# they come from the heap), all freed but the last, which pins the heap's top, so
# plain free() cannot give the pages back; malloc_trim(0) must.
_TRIM = textwrap.dedent(
    """
    import numpy as np, psutil
    from refresh_train.heap import release_free_memory
    rss = lambda: psutil.Process().memory_info().rss
    blocks = [np.ones(64 << 10, dtype=np.uint8) for _ in range(2560)]
    last = blocks.pop()
    del blocks
    before = rss()
    released = release_free_memory()
    print(released, before - rss())
    """
)


def test_release_free_memory_gives_freed_heap_pages_back():
    out = subprocess.run([sys.executable, "-c", _TRIM], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    released, dropped = out.stdout.split()
    assert released == "True"
    assert int(dropped) > 100 << 20  # most of the 160 MiB left RSS


def test_limit_arenas_is_accepted():
    code = "from refresh_train.heap import limit_arenas; print(limit_arenas(2), limit_arenas(0))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"]  # 0 = glibc's default again
