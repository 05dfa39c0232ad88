"""``.npy`` and ``.npz`` files without unpickling, and the plain npy layout.

Arrays are opened from their headers only: an object dtype (which would need
pickle) is refused, an uncompressed array (a ``.npy`` file or a *stored* npz
member) is memory-mapped at its data offset, and a compressed npz member is
streamed front to back (the converter stages it into a raw file).

The npy layout is a folder with ``features.npy`` ``[N, D]``, ``labels.npy``
``[N]`` (optional), either ``edge_index.npy`` ``[2, E]`` (row 0 = source) or
``indptr.npy`` + ``indices.npy`` (CSC: in-neighbours), and
``train_idx.npy``/``valid_idx.npy``/``test_idx.npy`` (each optional).
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.lib.format as npformat
from numpy.typing import NDArray

from ..errors import SourceFormatError
from ._edges import ArrayEdges, CscEdges, EdgeSource
from ._rows import MappedRows, RowSource
from ._source import Source

__all__ = [
    "read_npy_header",
    "open_npy",
    "load_small_npy",
    "npz_member",
    "ZipStreamRows",
    "read_npy_layout",
]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"
_STREAM_BLOCK_BYTES = 16 << 20  # 16 MiB


def read_npy_header(f: BinaryIO, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read the header of an npy stream positioned at its start.

    Returns
    -------
    shape, fortran_order, dtype
        With the stream left at the first data byte.

    Raises
    ------
    SourceFormatError
        Not an npy header, or an object dtype (which would need unpickling).
    """
    try:
        version = npformat.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npformat.read_array_header_2_0(f)
        else:
            raise ValueError(f"unknown npy version {version}")
    # numpy parses the header dict with ast/tokenize, which raise SyntaxError
    # or TokenError on a damaged one; a compressed npz member raises zlib.error
    # or BadZipFile while its header is inflated.
    except (
        ValueError,
        OSError,
        EOFError,
        SyntaxError,
        tokenize.TokenError,
        zlib.error,
        zipfile.BadZipFile,
        RecursionError,
        MemoryError,
    ) as exc:
        raise SourceFormatError(f"{name!r} is not a valid .npy array ({exc})") from None
    if dtype.hasobject:
        raise SourceFormatError(
            f"{name!r} holds Python objects (dtype {dtype}); only plain numeric arrays are "
            "read, since objects would need unpickling"
        )
    if any(int(s) < 0 for s in shape):
        raise SourceFormatError(
            f"{name!r} has a negative dimension in its header (shape {tuple(shape)}); "
            "the file is damaged — download it again"
        )
    # Zero-sized elements hold no data (and let a header claim any count of
    # them); a shape past numpy's limits cannot be a real array either.
    itemsize = np.dtype(dtype).itemsize
    if itemsize == 0 or math.prod(max(1, int(s)) for s in shape) * itemsize >= 2**62:
        raise SourceFormatError(
            f"{name!r} announces shape {tuple(shape)} of dtype {np.dtype(dtype)} in its header, "
            "which no file holds; the file is damaged — download it again"
        )
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype)


def open_npy(path: str | os.PathLike[str], name: str | None = None) -> MappedRows:
    """Memory-map an ``.npy`` file (``allow_pickle=False`` semantics).

    Raises
    ------
    SourceFormatError
        Missing, not an npy file, an object array, or truncated.
    """
    path = Path(path)
    name = name or path.name
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = read_npy_header(f, name)
            offset = f.tell()
    except FileNotFoundError:
        raise SourceFormatError(f"{str(path)!r} is missing") from None
    return MappedRows(path, offset, shape, dtype, fortran_order=fortran, name=name)


def load_small_npy(path: str | os.PathLike[str], name: str | None = None) -> np.ndarray:
    """Load a small ``.npy`` array (splits) into memory, refusing pickles.

    The header is checked against the file's size before anything is
    allocated (``np.load`` allocates what the header announces first: a
    header claiming 10^11 ids raised MemoryError).
    """
    rows = open_npy(path, name)
    try:
        return np.array(rows.array)
    finally:
        rows.close()


class ZipStreamRows(RowSource):
    """A compressed npz member read front to back in row blocks."""

    random_access = False

    def __init__(
        self,
        path: Path,
        member: str,
        shape: tuple[int, ...],
        fortran: bool,
        dtype: np.dtype,
        name: str,
    ) -> None:
        if fortran and len(shape) > 1:
            raise SourceFormatError(
                f"{name!r} is a compressed column-major array; save it in C order or uncompressed"
            )
        self.path, self.member = path, member
        self.shape, self.dtype, self.name = shape, dtype, name
        self._zip: zipfile.ZipFile | None = None
        self._fh: BinaryIO | None = None
        self._next = 0

    def _open(self) -> BinaryIO:
        try:
            self._zip = zipfile.ZipFile(self.path)
            fh = self._zip.open(self.member)
        except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as exc:
            raise SourceFormatError(
                f"{self.name!r} is damaged ({exc}); download it again"
            ) from None
        read_npy_header(fh, self.name)  # type: ignore[arg-type]
        return fh  # type: ignore[return-value]

    def read(self, start: int, stop: int) -> np.ndarray:
        if start != self._next or self._fh is None:
            if start != 0:
                raise SourceFormatError(f"{self.name!r} is compressed and is read front to back")
            self.close()
            self._fh = self._open()
        rb = self.row_bytes
        want = (stop - start) * rb
        buf = bytearray(want)
        view = memoryview(buf)
        got = 0
        try:
            while got < want:
                n = self._fh.readinto(view[got:])  # type: ignore[attr-defined]
                if not n:
                    break
                got += n
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
            raise SourceFormatError(
                f"{self.name!r} is damaged ({exc}); download it again"
            ) from None
        if got != want:
            raise SourceFormatError(
                f"{self.name!r} is truncated: it ends after {start + got // max(rb, 1)} rows "
                f"of {self.shape[0]}"
            )
        self._next = stop
        return np.frombuffer(buf, dtype=self.dtype).reshape((stop - start, *self.shape[1:]))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        self._next = 0


def npz_member(path: str | os.PathLike[str], key: str, label: str | None = None) -> RowSource:
    """Open member ``key`` of an ``.npz`` file without unpickling.

    A stored (uncompressed) member is memory-mapped where its data lies inside
    the zip file; a compressed one is returned as a front-to-back stream.

    Raises
    ------
    SourceFormatError
        The file is missing or not a zip, the member is missing, damaged or an
        object array.
    """
    path = Path(path)
    label = label or f"{path.name}:{key}"
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(key + ".npy")
            except KeyError:
                keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
                raise SourceFormatError(
                    f"{str(path)!r} has no array {key!r}; it holds {keys}"
                ) from None
            with zf.open(info) as fh:
                shape, fortran, dtype = read_npy_header(fh, label)  # type: ignore[arg-type]
                header_len = fh.tell()
    except FileNotFoundError:
        raise SourceFormatError(f"{str(path)!r} is missing") from None
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise SourceFormatError(f"{str(path)!r} is not a readable .npz file ({exc})") from None
    if info.compress_type != zipfile.ZIP_STORED:
        return ZipStreamRows(path, info.filename, shape, fortran, dtype, label)
    # The central directory's offset points at the member's local header,
    # whose own name/extra lengths give where the member's bytes start.
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size or raw[:4] != _LOCAL_MAGIC:
        raise SourceFormatError(f"{str(path)!r} is damaged: bad local header of {key!r}")
    fields = _LOCAL_HEADER.unpack(raw)
    data = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10] + header_len
    return MappedRows(path, data, shape, dtype, fortran_order=fortran, name=label)


def _int_1d(arr: np.ndarray, name: str) -> NDArray[np.int64]:
    arr = np.asarray(arr)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise SourceFormatError(
            f"{name!r} has shape {arr.shape} and dtype {arr.dtype}; expected 1-D integer ids"
        )
    return arr.astype(np.int64)


def read_npy_layout(path: str | os.PathLike[str]) -> Source:
    """Open a plain npy layout folder (see the module docstring).

    Raises
    ------
    SourceFormatError
        A required file is missing or has the wrong shape or dtype.
    """
    root = Path(path)
    features = open_npy(root / "features.npy")
    if len(features.shape) != 2 or features.dtype.kind != "f":
        raise SourceFormatError(
            f"'features.npy' has shape {features.shape} and dtype {features.dtype}; "
            "expected a 2-D float array [N, D]"
        )
    n = features.shape[0]
    files = [root / "features.npy"]
    labels: RowSource | None = None
    if (root / "labels.npy").exists():
        labels = open_npy(root / "labels.npy")
        files.append(root / "labels.npy")
    edges: EdgeSource
    if (root / "edge_index.npy").exists():
        edges = ArrayEdges(open_npy(root / "edge_index.npy"))
        files.append(root / "edge_index.npy")
    elif (root / "indptr.npy").exists() or (root / "indices.npy").exists():
        edges = CscEdges(open_npy(root / "indptr.npy"), open_npy(root / "indices.npy"), n)
        files += [root / "indptr.npy", root / "indices.npy"]
    else:
        raise SourceFormatError(
            f"{str(root)!r} has neither 'edge_index.npy' nor 'indptr.npy' + 'indices.npy'"
        )
    splits: dict[str, NDArray[np.int64]] = {}
    for split in ("train", "valid", "test"):
        p = root / f"{split}_idx.npy"
        if p.exists():
            splits[split] = _int_1d(load_small_npy(p), p.name)
            files.append(p)
        else:
            splits[split] = np.empty(0, dtype=np.int64)
    return Source(
        format="npy",
        path=root,
        num_nodes=n,
        features=features,
        labels=labels,
        edges=edges,
        splits=splits,
        num_classes=None,
        default_undirected=False,
        files=files,
    )
