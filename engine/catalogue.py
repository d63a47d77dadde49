"""The catalogue as the engine reads it per request: an immutable snapshot, swapped on edits.

``CatalogueState`` holds catalogue.parquet's frame plus numpy columns and an id -> row map, so a
request touches no pandas. Live edits (``Recommender.add_items`` / ``remove_items``) build a new
state and swap the reference under the recommender's lock: a reader holds one consistent
snapshot for its whole request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.artifacts import CATALOGUE_COLUMNS, catalogue_frame
from engine.errors import CatalogueError
from recdata.schema import DataError, validate_catalogue
from recdata.text import catalogue_texts

ITEM_FILE_FORMATS: tuple[str, ...] = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


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
        frame = frame.loc[:, list(CATALOGUE_COLUMNS)].reset_index(drop=True)
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
        fresh = new_rows.loc[~new_rows["item_id"].isin(present)]
        for _, row in new_rows.loc[new_rows["item_id"].isin(present)].iterrows():
            at = self.row_of[row["item_id"]]
            for col in ("title", "text", "category", "brand", "created_ts"):
                frame.at[at, col] = row[col]
        frame = pd.concat([frame, fresh[list(CATALOGUE_COLUMNS)]], ignore_index=True)
        return CatalogueState.from_frame(frame)

    def without(self, item_ids: Sequence[str]) -> CatalogueState:
        """A state without ``item_ids`` (ids not in the catalogue are ignored)."""
        drop = set(item_ids)
        return CatalogueState.from_frame(self.frame.loc[~self.frame["item_id"].isin(drop)])


def new_catalogue_rows(
    items: Sequence[Mapping[str, Any]] | pd.DataFrame, source: str = "new items"
) -> pd.DataFrame:
    """Validate new items (recdata.schema.validate_catalogue) -> catalogue.parquet rows with
    their text, popularity 0, segment ``new`` and ``created_ts`` now where missing."""
    if isinstance(items, pd.DataFrame):
        frame = items
    else:
        if isinstance(items, (str, bytes, Mapping)) or not all(
                isinstance(i, Mapping) for i in items):
            raise CatalogueError(f"{source}: expected a list of item objects with at least "
                                 f"\"item_id\" and \"title\"; got {type(items).__name__}")
        frame = pd.DataFrame([dict(i) for i in items])
    if frame.empty:
        raise CatalogueError(f"{source}: no items to add")
    try:
        catalogue = validate_catalogue(frame, source)
    except DataError as err:
        raise CatalogueError(str(err)) from None
    created = pd.to_numeric(catalogue["created_ts"], errors="coerce")
    catalogue["created_ts"] = created.fillna(int(time.time()))
    texts = catalogue_texts(catalogue)
    return catalogue_frame(catalogue, texts, [0] * len(catalogue), ["new"] * len(catalogue))


def read_item_file(path: str | Path) -> pd.DataFrame:
    """New catalogue items from JSONL, a JSON list, CSV or Parquet (catalogue columns)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ITEM_FILE_FORMATS:
        raise CatalogueError(f"add={path}: expected a file ending in one of "
                             f"{list(ITEM_FILE_FORMATS)}, got {suffix or 'no suffix'!r}")
    if not path.is_file():
        raise CatalogueError(f"add={path}: no such file")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path, dtype={"item_id": str})
        text = path.read_text()
        if suffix == ".json":
            rows = json.loads(text)
        else:
            rows = []
            for number, line in enumerate(text.splitlines(), start=1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise CatalogueError(f"add={path} line {number}: not valid JSON "
                                             f"({err.msg}); expected one item object per line"
                                             ) from None
    except CatalogueError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CatalogueError(f"add={path}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CatalogueError(f"add={path}: expected item objects (a JSON list, or one per line)")
    return pd.DataFrame(rows)
