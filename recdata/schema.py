"""The data contracts of firstclick: catalogue, events, evaluation examples, and validation.

Catalogue (one row per item) columns: ``item_id`` (str, unique), ``title`` (str, non-empty),
optional ``category`` (path string "A > B" or list), ``brand``, ``description``, ``attributes``
(dict), ``created_ts`` (int).

Events (one row per interaction) columns: ``user_id`` (str), ``item_id`` (str or None for a
search), ``ts`` (int: unix seconds, or a monotone order where the source has none), ``event``
(one of :data:`EVENT_TYPES`), ``query`` (str or None, for search events), optional ``weight``.

Every loader returns a :class:`Dataset`; every split returns a :class:`SplitData`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "rate", "review", "search")
CATALOGUE_REQUIRED: tuple[str, ...] = ("item_id", "title")
CATALOGUE_OPTIONAL: tuple[str, ...] = (
    "category", "brand", "description", "attributes", "created_ts",
)
EVENTS_REQUIRED: tuple[str, ...] = ("user_id", "item_id", "ts", "event")
EVENTS_OPTIONAL: tuple[str, ...] = ("query", "weight")
USER_SEGMENTS: tuple[str, ...] = ("new_user", "cold_user", "warm_user")
# Target segments of valid/test rows: ``new`` = the seeded held-out items (never in training),
# ``unseen`` = any other item without a training interaction, ``head`` / ``long_tail`` by
# training popularity (see recdata.splits).
TARGET_SEGMENTS: tuple[str, ...] = ("head", "long_tail", "new", "unseen")
# Optional time-stamped item text: one row per tag (MovieLens tags.csv, a ``files`` tags file).
TAG_COLUMNS: tuple[str, ...] = ("item_id", "tag", "ts", "user_id")
# Example columns shared by train / valid / test frames (see SplitData).
EXAMPLE_COLUMNS: tuple[str, ...] = (
    "user_id", "hist_items", "hist_types", "hist_queries", "target",
)


@dataclass(frozen=True)
class Event:
    """One session event, the one typed shape from parsing to tensors: a search (``query``), a
    catalogue item (``item_id``) or an inline new item (``item``: catalogue fields, at least a
    non-empty ``title``). ``type`` is an :data:`EVENT_TYPES` entry. ``engine.session`` parses
    the session JSON into these; ``towers.data.session_tensors`` turns them into tensors."""

    type: str
    item_id: str | None = None
    query: str | None = None
    item: Mapping[str, Any] | None = None
    ts: int | None = None  # unix seconds, when the client sent it (the event order is the list's)

    @property
    def is_search(self) -> bool:
        return self.type == "search"


def example_events(hist_items: Sequence[Sequence[Any]], hist_types: Sequence[Sequence[str]],
                   hist_queries: Sequence[Sequence[Any]]) -> list[list[Event]]:
    """Split example rows' history columns as typed event lists (searches by their query,
    everything else by its item id); events with neither are dropped."""
    out = []
    for items, types, queries in zip(hist_items, hist_types, hist_queries):
        out.append([Event(type="search", query=q) if t == "search" else Event(type=t, item_id=i)
                    for i, t, q in zip(items, types, queries)
                    if (t == "search" and isinstance(q, str) and q)
                    or (t != "search" and isinstance(i, str))])
    return out


class DataError(ValueError):
    """Bad input data. The message names the source, the column or line, what was expected."""


@dataclass
class Dataset:
    """A loaded, validated source: the whole catalogue and every event.

    ``predefined`` optionally carries a split fixed by the source (the UniSRec files), as a dict
    of ``{"train": frame, "valid": frame, "test": frame}`` of examples (EXAMPLE_COLUMNS).
    ``item_tags`` optionally carries time-stamped item text (TAG_COLUMNS). It is never part of
    ``catalogue``: the split adds to each item's text only the tags written before its training
    cut, so no text from the future reaches training or evaluation.
    """

    name: str
    catalogue: pd.DataFrame
    events: pd.DataFrame
    predefined: dict[str, pd.DataFrame] | None = None
    report: dict[str, int] = field(default_factory=dict)  # what validation counted / dropped
    # item -> relation -> entity links from a relations file (recdata.graph.read_relations)
    relations: pd.DataFrame | None = None
    item_tags: pd.DataFrame | None = None


@dataclass
class SplitData:
    """What training and evaluation consume.

    Example frames (``train``, ``valid``, ``test``) have one row per (context -> next item):
    ``user_id``; ``hist_items`` (list[str | None], chronological, oldest first, None for a
    search); ``hist_types`` (list[str], an EVENT_TYPES entry per history event);
    ``hist_queries`` (list[str | None], the query text of search events); ``target`` (item_id);
    ``target_ts`` (the target event's ``ts``). ``valid`` and ``test`` also carry
    ``user_segment`` and ``target_segment``.

    ``item_popularity``: training interaction count for every catalogue item (0 for none),
    indexed by item_id in catalogue order. ``new_items``: the seeded held-out items (no training
    or validation interactions). ``long_tail``: item_ids in the long tail of training popularity.
    ``catalogue`` is the source's catalogue with the time-stamped text (tags) written before
    ``cut_ts`` folded into ``attributes``; ``item_tags`` holds those tags (None without any).
    ``cut_ts``: the training cut — the time protocol's validation cut, or under ``loo`` the
    earliest validation/test target's ``ts``. ``fingerprint``: a hash of the data (catalogue ids,
    events), the split settings, the seed and the held-out item set: artifacts record it, and
    whatever evaluates artifacts refuses ones made on another split.
    ``relations``: the dataset's relations-file triples, if any (catalogue content, not events).
    ``ranker_items``: a second seeded share kept out of the towers' training (not out of
    validation); ``ranker_train``: the training-period rows whose target is one of them, for
    the ranking stage (see ``recdata.splits.split_dataset``).
    """

    catalogue: pd.DataFrame
    train_events: pd.DataFrame
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    item_popularity: pd.Series
    new_items: frozenset[str]
    long_tail: frozenset[str]
    protocol: str = "loo"
    relations: pd.DataFrame | None = None  # Dataset.relations (item_id, relation, entity)
    item_tags: pd.DataFrame | None = None
    cut_ts: int | None = None
    fingerprint: str = ""
    ranker_items: frozenset[str] = frozenset()
    ranker_train: pd.DataFrame | None = None


def _fail(source: str, msg: str) -> DataError:
    return DataError(f"{source}: {msg}")


def _optional_str(column: pd.Series) -> pd.Series:
    """Strings, with None (never NaN or "") where a value is missing."""
    values = [None if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == ""
              else str(v) for v in column.tolist()]
    return pd.Series(values, index=column.index, dtype=object)


def validate_catalogue(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check and normalise a catalogue frame; return a copy with string ids and all columns.

    Raises DataError on a missing column, duplicate item ids or an empty title.
    """
    missing = [c for c in CATALOGUE_REQUIRED if c not in frame.columns]
    if missing:
        raise _fail(source, f"catalogue is missing column(s) {missing}; expected at least "
                    f"{list(CATALOGUE_REQUIRED)}, got {list(frame.columns)}")
    cat = frame.copy()
    if cat["item_id"].isna().any():
        row = int(np.flatnonzero(cat["item_id"].isna().to_numpy())[0])
        raise _fail(source, f"column 'item_id' is empty in row {row + 1}; every item needs an id")
    cat["item_id"] = cat["item_id"].astype(str).str.strip()
    dup = cat["item_id"].duplicated(keep=False)
    if dup.any():
        ids = sorted(cat.loc[dup, "item_id"].unique())[:5]
        raise _fail(source, f"column 'item_id' has {int(dup.sum())} rows with duplicate ids "
                    f"(e.g. {ids}); item ids must be unique")
    title = cat["title"].fillna("").astype(str).str.strip()
    empty = title == ""
    if empty.any():
        rows = (np.flatnonzero(empty.to_numpy())[:5] + 1).tolist()
        raise _fail(source, f"column 'title' is empty in {int(empty.sum())} row(s) (first rows "
                    f"{rows}, item ids {cat.loc[empty, 'item_id'].head(5).tolist()}); every item "
                    "needs a non-empty title")
    cat["title"] = title
    for col in CATALOGUE_OPTIONAL:
        if col not in cat.columns:
            cat[col] = None
    return cat.reset_index(drop=True)


def validate_events(
    frame: pd.DataFrame, source: str, known_items: set[str] | pd.Index
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Check and normalise an events frame against the catalogue's item ids.

    Events naming unknown items are counted, logged as a warning and dropped — never silently.
    Rows whose ``ts`` is not an integer, or whose ``event`` is not an EVENT_TYPES entry, raise.
    Returns (events sorted by user then ts, a report of what was counted and dropped).
    """
    missing = [c for c in EVENTS_REQUIRED if c not in frame.columns]
    if missing:
        raise _fail(source, f"events are missing column(s) {missing}; expected at least "
                    f"{list(EVENTS_REQUIRED)}, got {list(frame.columns)}")
    ev = frame.copy()
    if "query" not in ev.columns:
        ev["query"] = None
    if "weight" not in ev.columns:
        ev["weight"] = 1.0
    if ev["user_id"].isna().any():
        row = int(np.flatnonzero(ev["user_id"].isna().to_numpy())[0])
        raise _fail(source, f"column 'user_id' is empty in row {row + 1}")
    ev["user_id"] = ev["user_id"].astype(str)
    ts = pd.to_numeric(ev["ts"], errors="coerce")
    bad_ts = ts.isna() | (ts != ts.round())
    if bad_ts.any():
        row = int(np.flatnonzero(bad_ts.to_numpy())[0])
        raise _fail(source, f"column 'ts' row {row + 1}: expected an integer (unix seconds or an "
                    f"order), got {frame['ts'].iloc[row]!r}")
    ev["ts"] = ts.astype("int64")
    ev["event"] = ev["event"].astype(str).str.strip().str.lower()
    bad_ev = ~ev["event"].isin(EVENT_TYPES)
    if bad_ev.any():
        row = int(np.flatnonzero(bad_ev.to_numpy())[0])
        raise _fail(source, f"column 'event' row {row + 1}: expected one of {list(EVENT_TYPES)}, "
                    f"got {ev['event'].iloc[row]!r}")
    is_search = ev["event"] == "search"
    ev["item_id"] = _optional_str(ev["item_id"])
    ev["query"] = _optional_str(ev["query"])
    no_query = is_search & ev["query"].isna()
    if no_query.any():
        row = int(np.flatnonzero(no_query.to_numpy())[0])
        raise _fail(source, f"row {row + 1}: a 'search' event needs a non-empty 'query'")
    no_item = ~is_search & ev["item_id"].isna()
    if no_item.any():
        row = int(np.flatnonzero(no_item.to_numpy())[0])
        raise _fail(source, f"column 'item_id' row {row + 1}: a {ev['event'].iloc[row]!r} event "
                    "needs an item id (only 'search' events may have none)")
    known = pd.Index(known_items)
    unknown = ~is_search & ~ev["item_id"].isin(known)
    report = {"events_in": int(len(ev)), "unknown_item_events_dropped": int(unknown.sum())}
    if unknown.any():
        examples = ev.loc[unknown, "item_id"].drop_duplicates().head(5).tolist()
        log.warning("%s: dropped %d event(s) naming %d item id(s) not in the catalogue (e.g. %s)",
                    source, int(unknown.sum()), ev.loc[unknown, "item_id"].nunique(), examples)
        ev = ev.loc[~unknown]
    # Stable sort keeps the source order for equal timestamps (a monotone order where ts ties).
    ev = ev.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    report["events_out"] = int(len(ev))
    return ev[list(EVENTS_REQUIRED) + list(EVENTS_OPTIONAL)], report


def validate_tags(frame: pd.DataFrame, source: str, known_items: set[str] | pd.Index
                  ) -> pd.DataFrame:
    """Check and normalise a tags frame (item_id, tag, ts, optional user_id): lower-cased,
    stripped tags; rows with an empty tag or an item not in the catalogue are dropped (counted
    in a warning); a non-integer ``ts`` raises DataError naming the row."""
    missing = [c for c in ("item_id", "tag", "ts") if c not in frame.columns]
    if missing:
        raise _fail(source, f"tags are missing column(s) {missing}; expected item_id, tag, ts "
                    f"[, user_id], got {list(frame.columns)}")
    tags = frame.copy()
    ts = pd.to_numeric(tags["ts"], errors="coerce")
    bad_ts = ts.isna() | (ts != ts.round())
    if bad_ts.any():
        row = int(np.flatnonzero(bad_ts.to_numpy())[0])
        raise _fail(source, f"column 'ts' row {row + 1}: expected an integer (unix seconds), got "
                    f"{frame['ts'].iloc[row]!r}")
    tags["ts"] = ts.astype("int64")
    tags["item_id"] = tags["item_id"].astype(str).str.strip()
    tags["tag"] = _optional_str(tags["tag"]).map(
        lambda t: " ".join(t.lower().split()) if isinstance(t, str) else None)
    tags["user_id"] = (_optional_str(tags["user_id"]) if "user_id" in tags.columns
                       else pd.Series([None] * len(tags), index=tags.index, dtype=object))
    unknown = ~tags["item_id"].isin(pd.Index(known_items))
    empty = tags["tag"].isna()
    if (unknown | empty).any():
        log.warning("%s: dropped %d tag row(s) naming items not in the catalogue and %d empty "
                    "tag(s)", source, int(unknown.sum()), int((empty & ~unknown).sum()))
    return tags.loc[~unknown & ~empty, list(TAG_COLUMNS)].reset_index(drop=True)
