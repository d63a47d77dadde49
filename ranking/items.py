"""``ItemTable``: the catalogue as the ranking stage reads it (one row per item, numpy columns).

``engine.catalogue.CatalogueState`` is one; ``ItemTable.from_frame`` builds one from a
catalogue.parquet-shaped frame for training and tests. Rows are positions in the current
catalogue snapshot; sources map their own item ids to rows through ``row_of``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class ItemTable(Protocol):
    """Columns by catalogue row (n,) and the id -> row map."""

    ids: np.ndarray  # (n,) object item ids
    row_of: dict[str, int]
    titles: np.ndarray  # (n,) object
    texts: np.ndarray  # (n,) object: recdata.item_text of each item
    segments: np.ndarray  # (n,) object: head | long_tail | new
    popularity: np.ndarray  # (n,) int64 training interactions
    categories: np.ndarray  # (n,) object: "A > B > C" or None
    brands: np.ndarray  # (n,) object or None
    created: np.ndarray  # (n,) float64 created_ts, NaN when unknown
    popular_ids: tuple[str, ...]  # items with training interactions, most popular first
    fresh_ids: tuple[str, ...]  # segment "new" first, then the newest created_ts

    def __len__(self) -> int: ...

    def __contains__(self, item_id: object) -> bool: ...
