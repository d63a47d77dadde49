"""Errors raised by the catalogue index; all subclass a built-in so callers may catch broadly."""

from __future__ import annotations

__all__ = [
    "IndexCorruptError",
    "IndexInputError",
    "IndexMismatchError",
    "IndexNotFoundError",
]


class IndexInputError(ValueError):
    """Bad vectors, ids, k or exclude lists passed to the index (says what arrived and the fix)."""


class IndexMismatchError(ValueError):
    """A saved index's manifest disagrees with what the caller expects (e.g. model_fingerprint)."""


class IndexNotFoundError(FileNotFoundError):
    """No saved index (or one of its files) at the given path."""


class IndexCorruptError(ValueError):
    """A saved index whose files disagree with each other (e.g. id count != faiss ntotal)."""
