"""Keep the C heap from growing over a long run (glibc's malloc).

Measured by ``benchmarks/soak.py``: with every tier on, the bytes malloc had
in use stayed flat over 20 epochs while the bytes it had freed but kept grew
by 11-13 MiB per epoch, so RSS grew as much and the epoch's peak passed the
memory plan from epoch 7-9. glibc gives each thread that allocates its own
arena (up to 8 per core), and the I/O scheduler's 64 threads and the loader's
threads scatter short-lived batch buffers over them; pages shared with a live
block are never returned. Two calls bound it: :func:`limit_arenas` before the
threads start, and :func:`release_free_memory` between epochs. Elsewhere
(musl, macOS) both do nothing.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

__all__ = ["ARENAS", "limit_arenas", "release_free_memory"]

#: glibc's ``M_ARENA_MAX`` option of ``mallopt``.
_M_ARENA_MAX = -8
#: Arenas the trainer allows (``MALLOC_ARENA_MAX=2`` kept a 20-epoch soak flat).
ARENAS = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Let malloc create at most ``arenas`` arenas from now on; whether it took.

    Threads started later share them; arenas that exist already stay.
    """
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, int(arenas)) == 1)


def release_free_memory() -> bool:
    """Return the free pages of every arena to the kernel; whether any were."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0) == 1)
