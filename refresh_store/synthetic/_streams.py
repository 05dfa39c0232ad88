"""File writers of the generator: .npy arrays, stored zip members and gzip CSV, block by block.

Every writer keeps its bytes identical per seed (fixed zip dates, gzip mtime 0).
"""

from __future__ import annotations

import gzip
import math
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from . import _kernels as _k

_CSV_DECIMALS = 6
_GZIP_LEVEL = 1  # gzip level 6 is 3-4x slower for ~15 % smaller files
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed so archives are byte-identical per seed


class _NpyStream:
    """Writes one .npy array to a binary stream, block by block, in C order."""

    def __init__(self, fileobj: IO[bytes], dtype: np.dtype, shape: tuple[int, ...]) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": shape,
        }
        np.lib.format.write_array_header_1_0(fileobj, header)
        self._f = fileobj
        self._dtype = np.dtype(dtype)
        self._left = math.prod(shape)

    def write(self, block: NDArray[Any]) -> None:
        block = np.ascontiguousarray(block, dtype=self._dtype)
        if block.size > self._left:
            raise RuntimeError("internal error: more data than the .npy header announced")
        self._left -= block.size
        self._f.write(memoryview(block.reshape(-1)).cast("B"))

    def close(self) -> None:
        if self._left != 0:
            raise RuntimeError(f"internal error: {self._left} elements missing from a .npy stream")


def _zip_member(zf: zipfile.ZipFile, name: str) -> IO[bytes]:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED  # stored: readers can mmap the member
    info.external_attr = 0o644 << 16
    return zf.open(info, "w", force_zip64=True)


class _GzCsv:
    """A gzip-compressed CSV file written from numeric blocks (no header row)."""

    def __init__(self, path: Path) -> None:
        self._raw = open(path, "wb")
        # mtime=0 and an empty file name keep the bytes identical per seed.
        self._gz = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._raw, compresslevel=_GZIP_LEVEL, mtime=0
        )

    def write_ints(self, values: NDArray[np.int64]) -> None:
        values = np.ascontiguousarray(
            values[:, None] if values.ndim == 1 else values, dtype=np.int64
        )
        buf = np.empty(values.size * 21, dtype=np.uint8)
        self._gz.write(memoryview(buf[: _k.format_int_rows(values, buf)]))

    def write_floats(self, values: NDArray[np.floating]) -> None:
        values = np.ascontiguousarray(values[:, None] if values.ndim == 1 else values)
        buf = np.empty(values.size * (_CSV_DECIMALS + 16), dtype=np.uint8)
        n = _k.format_float_rows(values, _CSV_DECIMALS, buf)
        if n < 0:
            raise RuntimeError("internal error: a generated feature is not finite")
        self._gz.write(memoryview(buf[:n]))

    def close(self) -> None:
        self._gz.close()
        self._raw.close()
