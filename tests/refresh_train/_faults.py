"""Fault injection under the disk tier, and a disk that fills up.

The I/O scheduler reads through two Numba kernels that call ``pread`` (or
Linux AIO) themselves, so ``os.pread`` never runs and cannot be patched.
:class:`FaultyReads` wraps the kernels instead, where the scheduler looks
them up (``refresh_store.io._kernels``), and makes every read of a chosen file
that covers a chosen byte offset fail the way the real kernel reports it:
``err = (read, bytes got, errno)``, ``errno`` 0 for a short read (end of file).
Before failing it scribbles over the rows of that read in the output, as a
short read leaves them: code that served them anyway would serve wrong rows.

:class:`FullDisk` replaces ``open`` in a module with one whose files accept
``free_bytes`` bytes in all, then fail with ``ENOSPC`` (after writing what
fits, as a real disk does).
"""

from __future__ import annotations

import builtins
import errno
import os
import threading
from typing import Any

import numpy as np

import refresh_store.io._kernels as kernels

_REAL_PREAD = kernels.pread_scatter
_REAL_AIO = kernels.aio_read_scatter
GARBAGE = 0xA5


class FaultyReads:
    """Make reads of ``path`` that cover byte ``offset`` fail.

    Parameters
    ----------
    monkeypatch
        pytest's fixture (undone at the end of the test).
    path
        The file whose reads fail (others read normally).
    offset
        A byte of that file; a read covering it fails.
    code
        The errno of the failure; 0 = a short read (end of file).
    times
        Failures to give before reads succeed again; ``None`` = every time.
    skip_calls
        Kernel calls on ``path`` that read normally before faults start (to
        fail in the middle of an epoch).
    """

    def __init__(
        self,
        monkeypatch: Any,
        path: str,
        offset: int,
        code: int = errno.EIO,
        times: int | None = None,
        skip_calls: int = 0,
    ) -> None:
        self.path = os.path.realpath(path)
        self.offset = int(offset)
        self.code = int(code)
        self.left = times
        self.skip_calls = skip_calls
        self.calls = 0
        self.failures = 0
        self._lock = threading.Lock()
        monkeypatch.setattr(kernels, "pread_scatter", self._pread_scatter)
        monkeypatch.setattr(kernels, "aio_read_scatter", self._aio_read_scatter)

    def _target(self, fd: int, read_start: np.ndarray, read_len: np.ndarray, rs: range) -> int:
        """The first read of ``rs`` that is to fail now, or -1."""
        if os.path.realpath(f"/proc/self/fd/{fd}") != self.path:
            return -1
        with self._lock:
            self.calls += 1
            if self.calls <= self.skip_calls or self.left == 0:
                return -1
            for r in rs:
                if read_start[r] <= self.offset < read_start[r] + read_len[r]:
                    self.failures += 1
                    if self.left is not None:
                        self.left -= 1
                    return r
        return -1

    def _fail(self, r, read_need, read_first, group_start, order, out, err) -> int:
        for u in range(read_first[r], read_first[r + 1]):
            for g in range(group_start[u], group_start[u + 1]):
                out[order[g]] = GARBAGE
        err[0] = r
        err[1] = 0 if self.code else int(read_need[r]) // 2
        err[2] = self.code
        return -1

    def _pread_scatter(
        self, fd, buf, first, end, read_start, read_len, read_need, read_first, urow_off,
        group_start, order, out, err,
    ):  # fmt: skip
        r = self._target(fd, read_start, read_len, range(first, end))
        if r < 0:
            return _REAL_PREAD(
                fd, buf, first, end, read_start, read_len, read_need, read_first, urow_off,
                group_start, order, out, err,
            )  # fmt: skip
        if r > first:  # the reads before it succeed, as they would
            _REAL_PREAD(
                fd, buf, first, r, read_start, read_len, read_need, read_first, urow_off,
                group_start, order, out, err,
            )  # fmt: skip
        return self._fail(r, read_need, read_first, group_start, order, out, err)

    def _aio_read_scatter(
        self, sysno, fd, bufs, n_reads, read_start, read_len, read_need, read_first, urow_off,
        group_start, order, out, err,
    ):  # fmt: skip
        r = self._target(fd, read_start, read_len, range(n_reads))
        if r < 0:
            return _REAL_AIO(
                sysno, fd, bufs, n_reads, read_start, read_len, read_need, read_first, urow_off,
                group_start, order, out, err,
            )  # fmt: skip
        return self._fail(r, read_need, read_first, group_start, order, out, err)


class _FullFile:
    def __init__(self, f: Any, disk: FullDisk) -> None:
        self._f = f
        self._disk = disk

    def write(self, data: Any) -> int:
        n = len(data)
        room = self._disk.take(n)
        if room < n:
            if room:
                self._f.write(data[:room])
                self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


class FullDisk:
    """``open`` for writing in ``module`` gets ``free_bytes`` bytes in all, then ``ENOSPC``."""

    def __init__(self, monkeypatch: Any, module: Any, free_bytes: int) -> None:
        self.free = int(free_bytes)
        self._lock = threading.Lock()
        monkeypatch.setattr(module, "open", self._open, raising=False)

    def take(self, n: int) -> int:
        with self._lock:
            room = min(n, self.free)
            self.free -= room
            return room

    def _open(self, file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
        f = builtins.open(file, mode, *args, **kw)
        return _FullFile(f, self) if any(c in mode for c in "wax+") else f
