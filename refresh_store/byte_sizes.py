"""Byte sizes written as text (``"2GiB"``, ``"512 MiB"``, ``"1.5GB"``, ``4096``).

One parser for every command line and config file of the project, so a size
means the same thing to the converter and to the trainer.
"""

from __future__ import annotations

import math
import re

__all__ = ["parse_size"]

# Binary units (and the bare K/M/G/T) are powers of 1024, decimal ones powers of 1000.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int | float, *, name: str = "size", minimum: int = 0) -> int:
    """Bytes in a size such as ``"2GiB"``, ``"512 MiB"``, ``"1.5GB"`` or ``4096``.

    Parameters
    ----------
    value
        The size string, or a number of bytes.
    name
        The option's name, used in the error message.
    minimum
        Smallest allowed result in bytes.

    Returns
    -------
    int
        The size in bytes (rounded down).

    Raises
    ------
    ValueError
        ``value`` is not a finite number followed by a known unit, or is below
        ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name} must be a size like '2GiB', got {value!r}")
    if isinstance(value, int):
        result = value
    else:
        text = repr(value) if isinstance(value, float) else value
        match = _SIZE_RE.match(text)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name} must be a size like '512MiB', '2GiB', '1.5GB' or a byte count, "
                f"got {value!r}"
            )
        number = float(match.group(1))
        if not math.isfinite(number):
            raise ValueError(f"{name} must be a finite size, got {value!r}")
        result = int(number * _UNITS[unit])
    if result < minimum:
        raise ValueError(f"{name} must be at least {minimum} bytes, got {value!r}")
    return result
