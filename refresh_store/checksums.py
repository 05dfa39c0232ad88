"""Checksums of a store's arrays: crc32c per 64 MiB block, combined without rereading.

:func:`array_checksums` reads an array back and checksums it per block (what
``verify`` recomputes); :class:`ChecksumLog` gathers the same sums from the
writes themselves, in any order, by combining the crc32c of pieces with
:func:`crc32c_combine` (GF(2) matrix powers, as zlib's ``crc32_combine``), so
the converter does not read its output back at commit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c

from .errors import StoreFormatError
from .store import open_region

__all__ = ["CHECKSUM_BLOCK_BYTES", "ChecksumLog", "array_checksums", "crc32c_combine"]


#: Checksums of the data are kept per block of this many bytes, so that
#: ``verify`` can say where a store is damaged.
CHECKSUM_BLOCK_BYTES = 64 << 20  # 64 MiB
_READ_BYTES = 16 << 20  # 16 MiB per pread when checksumming, into one reused buffer
_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, row) for row in mat]


def _zero_byte_operators() -> list[list[int]]:
    """``ops[k]`` advances a crc32c register over ``2**k`` zero bytes (a 32x32 GF(2) matrix)."""
    one_bit = [_CRC32C_POLY] + [1 << (n - 1) for n in range(1, 32)]
    op = _gf2_square(_gf2_square(_gf2_square(one_bit)))  # 8 zero bits
    ops = [op]
    for _ in range(63):
        op = _gf2_square(op)
        ops.append(op)
    return ops


_ZERO_OPS: list[list[int]] = []


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """crc32c of ``A + B`` from ``crc32c(A)``, ``crc32c(B)`` and ``len(B)`` (zlib's method).

    Examples
    --------
    >>> crc32c_combine(crc32c.crc32c(b"ab"), crc32c.crc32c(b"cd"), 2) == crc32c.crc32c(b"abcd")
    True
    """
    if not _ZERO_OPS:
        _ZERO_OPS.extend(_zero_byte_operators())
    k = 0
    while len_b:
        if len_b & 1:
            crc_a = _gf2_times(_ZERO_OPS[k], crc_a)
        len_b >>= 1
        k += 1
    return crc_a ^ crc_b


class ChecksumLog:
    """crc32c of the bytes written into an array, gathered while writing.

    Writers call :meth:`add` with every piece they write (from any thread, in
    any order); each piece is checksummed in parts cut at the checksum block
    boundaries. When the pieces cover ``[0, nbytes)`` exactly once,
    :meth:`block_sums` gives the per-block checksums that
    :func:`array_checksums` would compute by reading the array back, so the
    commit need not read the data again.
    """

    def __init__(self, nbytes: int, block_bytes: int | None = None) -> None:
        self.nbytes = int(nbytes)
        self.block_bytes = int(block_bytes or CHECKSUM_BLOCK_BYTES)
        self._parts: list[tuple[int, int, int]] = []  # (offset, length, crc32c)
        self._lock = threading.Lock()

    def add(self, offset: int, data: memoryview) -> None:
        """Record that ``data`` was written at byte ``offset`` of the array."""
        data = memoryview(data).cast("B")
        parts, pos, n = [], 0, len(data)
        while pos < n:
            end = min(n, pos + self.block_bytes - (offset + pos) % self.block_bytes)
            parts.append((offset + pos, end - pos, crc32c.crc32c(data[pos:end])))
            pos = end
        with self._lock:
            self._parts.extend(parts)

    def block_sums(self) -> list[int] | None:
        """Per-block crc32c of ``[0, nbytes)``, or None unless every byte was written exactly once."""
        with self._lock:
            parts = sorted(self._parts)
        sums: list[int] = []
        pos, crc = 0, 0
        for offset, length, part_crc in parts:
            if offset != pos:
                return None  # a gap or an overlap: read the array back instead
            crc = (
                part_crc
                if offset % self.block_bytes == 0
                else crc32c_combine(crc, part_crc, length)
            )
            pos += length
            if pos % self.block_bytes == 0 or pos == self.nbytes:
                sums.append(crc)
        return sums if pos == self.nbytes else None

    def as_checksums(self) -> dict[str, Any] | None:
        """The entry :func:`array_checksums` would return, or None (see :meth:`block_sums`)."""
        sums = self.block_sums()
        if sums is None:
            return None
        return {"block_bytes": self.block_bytes, "nbytes": self.nbytes, "crc32c": sums}


def array_checksums(
    path: str | os.PathLike[str],
    name: str,
    block_bytes: int = CHECKSUM_BLOCK_BYTES,
    visit: Callable[[int, memoryview], None] | None = None,
) -> dict[str, Any]:
    """Per-block crc32c of the data of array ``name`` of the store (or partial store) at ``path``.

    Only the rows of the array are covered, not the padding of its last chunk.
    ``visit(byte_offset, data)``, when given, sees every piece of the data as it
    is read, in order (pieces are whole elements), so that other checks of the
    data need not read it again; ``data`` is only valid during the call.
    """
    region = open_region(Path(path), name)
    total = region.nrows * region.row_bytes
    sums: list[int] = []
    # One reused buffer: a fresh 64 MiB bytes object per block cost more in
    # page faults than the checksum itself.
    buf = memoryview(bytearray(min(max(total, 1), _READ_BYTES, block_bytes)))
    with open(region.path, "rb", buffering=0) as f:

        def read(n: int, offset: int) -> memoryview:
            got = 0
            while got < n:
                k = os.preadv(f.fileno(), [buf[got:n]], offset + got)
                if k <= 0:
                    raise StoreFormatError(f"{region.path!r} is truncated at byte {offset + got}")
                got += k
            return buf[:n]

        if region.contiguous:
            base = int(region.chunk_offsets[0]) if len(region.chunk_offsets) else 0
            done = 0
            while done < total:
                n = min(block_bytes, total - done)
                crc, pos = 0, 0
                while pos < n:
                    take = min(len(buf), n - pos)
                    data = read(take, base + done + pos)
                    crc = crc32c.crc32c(data, crc)
                    if visit is not None:
                        visit(done + pos, data)
                    pos += take
                sums.append(crc)
                done += n
        else:  # follow the chunk table, in row order
            chunk_bytes = region.chunk_rows * region.row_bytes
            crc, filled, done = 0, 0, 0
            for off in region.chunk_offsets:
                n = min(chunk_bytes, total - done)
                if n <= 0:
                    break
                pos = 0
                while pos < n:
                    data = read(min(len(buf), n - pos), int(off) + pos)
                    if visit is not None:
                        visit(done + pos, data)
                    pos += len(data)
                    while len(data):
                        take = min(len(data), block_bytes - filled)
                        crc = crc32c.crc32c(data[:take], crc)
                        filled += take
                        data = data[take:]
                        if filled == block_bytes:
                            sums.append(crc)
                            crc, filled = 0, 0
                done += n
            if filled:
                sums.append(crc)
    return {"block_bytes": block_bytes, "nbytes": total, "crc32c": sums}


# ----------------------------------------------------------------------------- writing
