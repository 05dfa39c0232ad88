"""The converter's row writers: O_DIRECT block writes, bucket files, reading back, staging.

Everything here moves rows through buffers the caller owns or through
``pread``/``pwrite``, never through memory maps, so the resident set of a
conversion stays bounded by its blocks.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import ConvertError
from ..io.config import aligned_empty as aligned_bytes
from ..readers import MappedRows, RowSource
from ..writer import ArrayWriter

__all__ = ["DirectWriter", "aligned_empty", "read_rows", "stage_rows"]


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


_ALIGN = 4096  # O_DIRECT needs buffer address, file offset and length aligned to this
_MAPPED_BUFFER_BYTES = 1 << 20  # 1 MiB: buffers from here up are their own mappings
# Each block is written as this many pieces on as many threads: one O_DIRECT
# pwrite of ~1 GB spends most of its time pinning pages on one core.
_WRITE_THREADS = 2


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on a 4 KiB boundary (for O_DIRECT).

    Large buffers are anonymous mappings (page-aligned by construction) with
    transparent huge pages turned off: on the VMs this project is measured on,
    the first touch of a fresh 925 MB buffer cost 1.5 s with huge pages and
    0.4 s without (the feature pass touches two such buffers), and the gather
    scatters rows over the buffer once, so huge pages buy little afterwards.
    """
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes >= _MAPPED_BUFFER_BYTES:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            buf.madvise(mmap.MADV_NOHUGEPAGE)
        # The array keeps the mapping alive; it is unmapped when the array goes.
        return np.frombuffer(buf, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
    return aligned_bytes(nbytes, _ALIGN).view(dtype).reshape(shape)


def _round_rows(rows: int) -> int:
    """Blocks of a multiple of 4096 rows start at 4 KiB-aligned offsets whatever the row size."""
    return rows // _ALIGN * _ALIGN if rows > _ALIGN else rows


_STAGING_BYTES = 16 << 20  # 16 MiB


class _SegmentFile:
    """An append-only bucket file written with O_DIRECT in segments padded to 4 KiB.

    Buffered appends of many GB are throttled by dirty-page writeback to a
    fraction of the disk's rate; direct writes are not. Each append is copied
    through an aligned staging buffer and padded, and its (offset, length) is
    remembered so that :meth:`read_into` skips the padding. Without O_DIRECT
    (some file systems) appends are plain buffered writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.fd_direct: int | None = os.open(path, os.O_WRONLY | os.O_DIRECT)
        except (OSError, AttributeError):
            self.fd_direct = None
        self.end = 0
        self.segments: list[tuple[int, int]] = []

    def append(self, data: memoryview, staging: np.ndarray) -> None:
        n, offset = len(data), self.end
        if self.fd_direct is None:
            _pwrite_all(self.fd, data, offset)
            self.end += n
        else:
            pos = 0
            while pos < n:  # every piece but the last fills the (aligned) staging buffer
                take = min(len(staging), n - pos)
                staging[:take] = np.frombuffer(data[pos : pos + take], dtype=np.uint8)
                padded = -(-take // _ALIGN) * _ALIGN
                _pwrite_all(self.fd_direct, memoryview(staging[:padded]), offset + pos)
                pos += take
            self.end += -(-n // _ALIGN) * _ALIGN
        self.segments.append((offset, n))

    def read_compact(self, buf: np.ndarray) -> int:
        """Read the whole file with O_DIRECT into aligned ``buf``; squeeze out the padding.

        ``buf`` (uint8, 4 KiB-aligned) must hold the padded file (:attr:`end`
        bytes). Returns the number of bytes of data, now at the front of
        ``buf``. A buffered read of a file written with O_DIRECT goes through
        readahead in small pieces; one direct read runs at the disk's rate.
        Falls back to :meth:`read_into` without O_DIRECT.
        """
        total = sum(n for _, n in self.segments)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        except (OSError, AttributeError):
            fd = -1
        if fd < 0 or self.fd_direct is None or buf.ctypes.data % _ALIGN:
            if fd >= 0:
                os.close(fd)
            self.read_into(memoryview(buf[:total]))
            return total
        try:
            view, got = memoryview(buf[: self.end]), 0
            while got < self.end:
                k = os.preadv(fd, [view[got:]], got)
                if k <= 0:
                    raise OSError(f"bucket file {str(self.path)!r} is short at byte {got}")
                got += k
        finally:
            os.close(fd)
        filled = 0
        base = buf.ctypes.data
        for offset, n in self.segments:  # segments ascend, so data only moves left
            if offset != filled:
                ctypes.memmove(base + filled, base + offset, n)
            filled += n
        return filled

    def read_into(self, out: memoryview) -> None:
        """Read every appended segment, in order, into ``out`` (exactly their total length)."""
        filled = 0
        for offset, n in self.segments:
            got = 0
            while got < n:
                k = os.preadv(self.fd, [out[filled + got : filled + n]], offset + got)
                if k <= 0:
                    raise OSError(f"bucket file {str(self.path)!r} is short at byte {offset + got}")
                got += k
            filled += n
        if filled != len(out):
            raise OSError(f"bucket file {str(self.path)!r} holds {filled} bytes, not {len(out)}")

    def close(self) -> None:
        for fd in (self.fd, self.fd_direct):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self.fd_direct = -1, None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        k = os.pwrite(fd, data, offset)
        data, offset = data[k:], offset + k


class _Writer:
    """Writes blocks on helper threads so that the next block can be built meanwhile.

    Each block lives in a numbered buffer; :meth:`wait_for_buffer` blocks until
    the buffer's previous write has finished. Errors of a write surface at the
    next call or at exit.
    """

    def __init__(self, write: Callable[[int, np.ndarray], None], threads: int = 1) -> None:
        self._write = write
        self._threads = max(1, threads)
        # Twice the pieces of a block: the next block's pieces can start while
        # the last ones finish their post-write work (checksums).
        self._pool = ThreadPoolExecutor(
            max_workers=2 * self._threads, thread_name_prefix="refresh-write"
        )
        self._pending: dict[int, list[Future[None]]] = {}

    def wait_for_buffer(self, slot: int) -> None:
        futs = self._pending.pop(slot, [])
        errors = [exc for exc in (fut.exception() for fut in futs) if exc is not None]
        if errors:
            raise errors[0]

    def submit(self, slot: int, start: int, block: np.ndarray) -> None:
        self.wait_for_buffer(slot)
        # Pieces of a multiple of 4096 rows keep O_DIRECT's alignment.
        step = -(-len(block) // self._threads)
        step = -(-step // _ALIGN) * _ALIGN
        self._pending[slot] = [
            self._pool.submit(self._write, start + a, block[a : a + step])
            for a in range(0, len(block), max(1, step))
        ]

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for slot in list(self._pending):
                self.wait_for_buffer(slot)
        finally:
            self._pool.shutdown(wait=True)
