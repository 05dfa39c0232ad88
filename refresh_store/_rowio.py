"""Block I/O of the converter: O_DIRECT block writes, reading back arrays being written, staging.

Everything here moves rows through buffers the caller owns or through
``pread``/``pwrite``, never through memory maps, so the resident set of a
conversion stays bounded by its blocks.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ConvertError
from .readers import MappedRows, RowSource
from .writer import ArrayWriter

__all__ = ["DirectWriter", "read_rows", "stage_rows"]


class DirectWriter:
    """Writes blocks of an array with ``O_DIRECT`` where they are aligned, else buffered.

    A block that starts at a 4 KiB-aligned offset from a 4 KiB-aligned buffer
    goes to the disk without a copy into the page cache and without the
    dirty-page throttling that slows buffered writes of many GB; its unaligned
    tail, and every write on a file system without ``O_DIRECT``, is buffered.
    The caller fsyncs the file at the end as usual. Safe to call from several
    threads for disjoint rows.
    """

    def __init__(self, aw: ArrayWriter, count: Callable[[int], None]) -> None:
        self.aw, self.count = aw, count
        self.fd = os.open(aw.path, os.O_WRONLY)
        try:
            self.fd_direct: int | None = os.open(aw.path, os.O_WRONLY | os.O_DIRECT)
        except (OSError, AttributeError):
            self.fd_direct = None
        self.use_direct = self.fd_direct is not None

    @staticmethod
    def _pwrite(fd: int, data: memoryview, offset: int) -> None:
        while len(data):
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n

    def __call__(self, start: int, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.aw.dtype)
        if block.shape[1:] != self.aw.shape[1:] or start + len(block) > self.aw.shape[0]:
            raise ValueError(f"block {block.shape} at row {start} does not fit {self.aw.shape}")
        data = memoryview(block).cast("B")
        offset = start * self.aw.row_bytes
        direct = 0
        if self.use_direct and offset % 4096 == 0 and block.ctypes.data % 4096 == 0:
            direct = len(data) // 4096 * 4096
            try:
                self._pwrite(self.fd_direct, data[:direct], offset)  # type: ignore[arg-type]
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Other threads may be writing through the descriptor: it is
                # only closed by close().
                self.use_direct, direct = False, 0
        self._pwrite(self.fd, data[direct:], offset + direct)
        if self.aw.crc_log is not None:
            # Checksummed here, so that the commit need not read the data back;
            # after the write, so that the disk does not wait for it.
            self.aw.crc_log.add(offset, data)
        self.count(block.nbytes)

    def close(self) -> None:
        """Close both descriptors."""
        os.close(self.fd)
        if self.fd_direct is not None:
            os.close(self.fd_direct)


def read_rows(aw: ArrayWriter, start: int, stop: int) -> np.ndarray:
    """Rows of an array being written, read back with pread (no mapping, bounded RSS)."""
    n = (stop - start) * aw.row_bytes
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    fd = os.open(aw.path, os.O_RDONLY)
    try:
        while got < n:
            k = os.preadv(fd, [view[got:]], start * aw.row_bytes + got)
            if k <= 0:
                raise ConvertError(
                    f"{str(aw.path)!r} is shorter than expected; rerun with --overwrite"
                )
            got += k
    finally:
        os.close(fd)
    return np.frombuffer(buf, dtype=aw.dtype).reshape(stop - start, *aw.shape[1:])


def stage_rows(
    rows: RowSource, path: Path, work_bytes: int, tick: Callable[[int, int], None]
) -> MappedRows:
    """Copy a front-to-back source into a raw file that can be mapped."""
    step = max(1, work_bytes // 2 // max(1, rows.row_bytes))
    with open(path, "wb") as f:
        for a in range(0, len(rows), step):
            b = min(len(rows), a + step)
            block = np.ascontiguousarray(rows.read(a, b), dtype=rows.dtype)
            f.write(memoryview(block).cast("B"))
            tick(b - a, block.nbytes)
        f.flush()
        os.fsync(f.fileno())
    rows.close()
    return MappedRows(path, 0, rows.shape, rows.dtype, name=rows.name)
