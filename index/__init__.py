"""FAISS catalogue index: build from (item vectors, ids), search top-k, add/remove, save/load."""

from __future__ import annotations

from index.catalogue_index import KINDS, CatalogueIndex
from index.errors import (
    IndexCorruptError,
    IndexInputError,
    IndexMismatchError,
    IndexNotFoundError,
)

__all__ = [
    "KINDS",
    "CatalogueIndex",
    "IndexCorruptError",
    "IndexInputError",
    "IndexMismatchError",
    "IndexNotFoundError",
]
