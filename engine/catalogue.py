"""The catalogue as the engine reads it per request: an immutable snapshot, swapped on edits.

``CatalogueState`` holds catalogue.parquet's frame plus numpy columns and an id -> row map, so a
request touches no pandas. Live edits (``Recommender.add_items`` / ``remove_items``) build a new
state and swap the reference under the recommender's lock: a reader holds one consistent
snapshot for its whole request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.artifacts import CATALOGUE_COLUMNS, catalogue_frame, complete_catalogue
from engine.errors import CatalogueError
from engine.items import ITEM_KEYS, parse_items, plain_value
from recdata.text import catalogue_texts


@dataclass(frozen=True)
class CatalogueState:
    """One consistent view of the catalogue (never mutated; edits return a new state)."""

    frame: pd.DataFrame  # CATALOGUE_COLUMNS, one row per item
    ids: np.ndarray  # (n,) object item ids by row
    row_of: dict[str, int]  # item_id -> row
    titles: np.ndarray  # (n,) object
    texts: np.ndarray  # (n,) object, recdata.item_text of each item
    segments: np.ndarray  # (n,) object: head | long_tail | new
    popularity: np.ndarray  # (n,) int64 training interactions
    popular_ids: tuple[str, ...]  # items with training interactions, most popular first
    fresh_ids: tuple[str, ...]  # segment "new" first, then everything, newest created_ts first
    categories: np.ndarray  # (n,) object category path or None
    brands: np.ndarray  # (n,) object brand or None
    created: np.ndarray  # (n,) float64 created_ts, NaN when unknown

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CatalogueState:
        frame = complete_catalogue(frame).loc[:, list(CATALOGUE_COLUMNS)].reset_index(drop=True)
        ids = frame["item_id"].astype(str).tolist()
        popularity = frame["popularity"].to_numpy(dtype=np.float64)
        created_ts = pd.to_numeric(frame["created_ts"], errors="coerce").to_numpy(
            dtype=np.float64)
        created = np.where(np.isnan(created_ts), -np.inf, created_ts)
        segments = frame["segment"].astype(str).to_numpy(dtype=object)
        by_pop = np.lexsort((-created, -popularity))  # popularity desc, then newest
        by_fresh = np.lexsort((-created, segments != "new"))  # new first, then newest
        return cls(
            frame=frame, ids=np.asarray(ids, dtype=object),
            row_of={item_id: row for row, item_id in enumerate(ids)},
            titles=frame["title"].astype(str).to_numpy(dtype=object),
            texts=frame["text"].astype(str).to_numpy(dtype=object), segments=segments,
            popularity=popularity.astype(np.int64),
            popular_ids=tuple(ids[r] for r in by_pop if popularity[r] > 0),
            fresh_ids=tuple(ids[r] for r in by_fresh),
            categories=frame["category"].to_numpy(dtype=object),
            brands=frame["brand"].to_numpy(dtype=object), created=created_ts)

    def __len__(self) -> int:
        return len(self.row_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.row_of

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows (n,) int64 of ids known to be in the catalogue."""
        return np.fromiter((self.row_of[i] for i in item_ids), np.int64, count=len(item_ids))

    def with_rows(self, new_rows: pd.DataFrame, replace: bool = False) -> CatalogueState:
        """A state with ``new_rows`` (CATALOGUE_COLUMNS) appended; with ``replace``, rows whose
        id exists replace it in place, keeping its popularity and segment."""
        present = [i for i in new_rows["item_id"] if i in self.row_of]
        if present and not replace:
            raise CatalogueError(f"{len(present)} item id(s) already in the catalogue: "
                                 f"{present[:5]}; remove them first, or pass upsert to replace "
                                 "their fields and vectors")
        frame = self.frame.copy()
        new_rows = complete_catalogue(new_rows)
        fresh = new_rows.loc[~new_rows["item_id"].isin(present)]
        for _, row in new_rows.loc[new_rows["item_id"].isin(present)].iterrows():
            at = self.row_of[row["item_id"]]
            for col in ("title", "text", "category", "brand", "created_ts", "links"):
                frame.at[at, col] = row[col]
        frame = pd.concat([frame, fresh[list(CATALOGUE_COLUMNS)]], ignore_index=True)
        return CatalogueState.from_frame(frame)

    def without(self, item_ids: Sequence[str]) -> CatalogueState:
        """A state without ``item_ids`` (ids not in the catalogue are ignored)."""
        drop = set(item_ids)
        return CatalogueState.from_frame(self.frame.loc[~self.frame["item_id"].isin(drop)])


def new_item_fields(
    items: Sequence[Mapping[str, Any]] | pd.DataFrame, source: str = "new items",
    loc: tuple[str | int, ...] = ("items",),
) -> pd.DataFrame:
    """Validate new items with the one item schema (``engine.items.parse_items``) -> their
    fields (ITEM_KEYS columns, attributes included; ``created_ts`` now where missing)."""
    if isinstance(items, pd.DataFrame):
        items = [{k: plain_value(v) for k, v in row.items() if plain_value(v) is not None}
                 for row in items.to_dict("records")]
    parsed = parse_items(items, source, loc=loc)
    frame = pd.DataFrame(parsed).reindex(columns=list(ITEM_KEYS))
    frame["created_ts"] = pd.to_numeric(frame["created_ts"]).fillna(int(time.time()))
    return frame


def new_catalogue_rows(
    items: Sequence[Mapping[str, Any]] | pd.DataFrame, source: str = "new items",
    loc: tuple[str | int, ...] = ("items",),
) -> pd.DataFrame:
    """Validate new items with the one item schema (``engine.items.parse_items``) ->
    catalogue.parquet rows with their text, popularity 0, segment ``new`` and ``created_ts``
    now where missing."""
    return catalogue_rows_of(new_item_fields(items, source, loc))


def catalogue_rows_of(frame: pd.DataFrame) -> pd.DataFrame:
    """catalogue.parquet rows of validated new item fields (:func:`new_item_fields`)."""
    texts = catalogue_texts(frame)
    return catalogue_frame(frame, texts, [0] * len(frame), ["new"] * len(frame))
