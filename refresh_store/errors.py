"""Exceptions raised by ReFresh.

Library code raises these; command-line tools catch :class:`RefreshError`,
print its message on one line and exit with status 2.
"""

from __future__ import annotations

__all__ = [
    "RefreshError",
    "StoreFormatError",
    "StoreIncompleteError",
    "SourceFormatError",
    "InputDataError",
    "ConvertError",
    "IOSchedulerError",
    "InvalidIdsError",
]


class RefreshError(Exception):
    """Base class of every error this project raises on purpose."""


class StoreFormatError(RefreshError, ValueError):
    """A store on disk is not a ReFresh store, or is of an unsupported version."""


class StoreIncompleteError(StoreFormatError):
    """A store has no manifest: its conversion did not finish."""


class SourceFormatError(RefreshError, ValueError):
    """A source dataset is missing files or has files of the wrong shape/dtype."""


class InputDataError(RefreshError, ValueError):
    """Values in a source dataset are invalid (ids out of range, NaN, ...)."""


class ConvertError(RefreshError):
    """A conversion cannot proceed (destination exists, disk full, ...)."""


class IOSchedulerError(RefreshError, OSError):
    """A read of the store failed or returned fewer bytes than planned."""


class InvalidIdsError(RefreshError, IndexError, ValueError, TypeError):
    """Row or node ids passed to a reader are not a 1-D integer array inside ``[0, N)``.

    Also an ``IndexError``/``ValueError``/``TypeError``, as callers caught before.
    """
