"""From example frames and session JSON to the index tensors the towers read.

Layout (every function here): **left-aligned**. Column 0 holds the oldest kept event;
``hist_len`` counts the events kept, the most recent ``max_seq_len`` (older ones are cut);
columns >= ``hist_len`` are padding with item/query/text index -1 and type ``PAD_TYPE``. An event
is an item event (``hist_item_idx >= 0``) or a text event (``hist_query_idx`` / ``hist_text_idx
>= 0``: a search query, or at inference an inline new item's text).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from recdata.schema import EVENT_TYPES, Event
from recdata.text import item_text
from towers.errors import EmptySessionError, TowerError
from towers.user_tower import PAD_TYPE, TYPE_INDEX


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _event_type(name: Any, where: str) -> int:
    index = TYPE_INDEX.get(str(name).strip().lower())
    if index is None:
        raise TowerError(f"{where}: event type {name!r} is not one of {list(EVENT_TYPES)}")
    return index


def build_tensors(
    examples: pd.DataFrame,
    item_index: Mapping[str, int],
    query_index: Mapping[str, int],
    max_seq_len: int = 50,
) -> dict[str, torch.Tensor]:
    """Example frame -> ``hist_item_idx``, ``hist_query_idx``, ``hist_type`` (N, L) int64,
    ``hist_len`` (N,), ``target_idx`` (N,) (-1 without a ``target`` column), ``row`` (N,) the
    frame position. History items, queries and targets must all be in the indexes."""
    missing = [c for c in ("hist_items", "hist_types") if c not in examples.columns]
    if missing:
        raise TowerError(f"examples are missing column(s) {missing}; expected recdata "
                         f"EXAMPLE_COLUMNS, got {list(examples.columns)}")
    n, seq = len(examples), int(max_seq_len)
    hist_item = np.full((n, seq), -1, dtype=np.int64)
    hist_query = np.full((n, seq), -1, dtype=np.int64)
    hist_type = np.full((n, seq), PAD_TYPE, dtype=np.int64)
    hist_len = np.zeros(n, dtype=np.int64)
    target = np.full(n, -1, dtype=np.int64)
    queries_col = examples["hist_queries"] if "hist_queries" in examples.columns else None
    targets_col = examples["target"] if "target" in examples.columns else None
    for row, (items, types) in enumerate(zip(examples["hist_items"], examples["hist_types"])):
        items, types = list(items), list(types)
        queries = list(queries_col.iloc[row]) if queries_col is not None else [None] * len(items)
        if not len(items) == len(types) == len(queries):
            raise TowerError(f"example row {row}: hist_items, hist_types, hist_queries differ in "
                             f"length ({len(items)}, {len(types)}, {len(queries)})")
        events = list(zip(items, types, queries))[-seq:]
        hist_len[row] = len(events)
        for col, (item, kind, query) in enumerate(events):
            where = f"example row {row}, event {col}"
            hist_type[row, col] = _event_type(kind, where)
            if not _missing(item):
                if str(item) not in item_index:
                    raise TowerError(f"{where}: history item {item!r} is not in the catalogue")
                hist_item[row, col] = item_index[str(item)]
            elif not _missing(query):
                if query not in query_index:
                    raise TowerError(f"{where}: query {query!r} is not in query_index")
                hist_query[row, col] = query_index[query]
            else:
                raise TowerError(f"{where}: an event needs an item id or a query; got neither")
        if targets_col is not None:
            tgt = targets_col.iloc[row]
            if _missing(tgt) or str(tgt) not in item_index:
                raise TowerError(f"example row {row}: target {tgt!r} is not in the catalogue")
            target[row] = item_index[str(tgt)]
    return {
        "hist_item_idx": torch.from_numpy(hist_item),
        "hist_query_idx": torch.from_numpy(hist_query),
        "hist_type": torch.from_numpy(hist_type), "hist_len": torch.from_numpy(hist_len),
        "target_idx": torch.from_numpy(target), "row": torch.arange(n, dtype=torch.int64)}


def history_arrays(examples: pd.DataFrame, item_index: Mapping[str, int]) -> list[np.ndarray]:
    """Per row, the catalogue indices of every history item (not cut to max_seq_len): what the
    evaluation masks from the ranking."""
    return [np.array([item_index[str(i)] for i in items if not _missing(i)
                      and str(i) in item_index], dtype=np.int64)
            for items in examples["hist_items"]]


@dataclass
class SessionInputs:
    """Index tensors of typed sessions; ``texts`` are the distinct query / inline-item
    texts that ``hist_text_idx`` points into (the caller encodes them)."""

    hist_item_idx: torch.Tensor  # (n, L) int64, -1 = not an item event / padding
    hist_text_idx: torch.Tensor  # (n, L) int64, -1 = not a text event / padding
    hist_type: torch.Tensor  # (n, L) int64
    hist_len: torch.Tensor  # (n,) int64
    texts: list[str]
    inline_items: int = 0  # how many events carried an inline new item


def session_tensors(
    sessions: Sequence[Sequence[Event]],
    item_index: Mapping[str, int],
    max_seq_len: int = 50,
    unknown_items: str = "error",
) -> SessionInputs:
    """Typed sessions (``recdata.schema.Event`` lists: what ``engine.session`` parses the JSON
    into) -> index tensors. An event is its inline ``item`` (embedded from its text), its
    ``item_id``, or its search ``query``. Item ids not in ``item_index`` raise
    (``unknown_items="error"``) or are dropped (``"skip"``). A session left with no event
    raises EmptySessionError."""
    if unknown_items not in ("error", "skip"):
        raise TowerError(f"unknown_items= must be 'error' or 'skip', got {unknown_items!r}")
    texts: dict[str, int] = {}
    parsed: list[list[tuple[int, int, int]]] = []  # per session: (type, item_idx, text_idx)
    inline = 0
    for number, session in enumerate(sessions):
        if isinstance(session, (str, bytes, Mapping)):
            raise TowerError(f"session {number}: expected a list of recdata.schema.Event, got "
                             f"{type(session).__name__}")
        events: list[tuple[int, int, int]] = []
        for col, event in enumerate(session):
            where = f"session {number}, event {col}"
            if not isinstance(event, Event):
                raise TowerError(f"{where}: expected a recdata.schema.Event, got "
                                 f"{type(event).__name__}")
            type_idx = _event_type(event.type, where)
            if event.item is not None:
                text = item_text(event.item)
                if not text:
                    raise TowerError(f"{where}: an inline 'item' needs at least a 'title'")
                events.append((type_idx, -1, texts.setdefault(text, len(texts))))
                inline += 1
            elif event.item_id is not None:
                if event.item_id in item_index:
                    events.append((type_idx, item_index[event.item_id], -1))
                elif unknown_items == "error":
                    raise TowerError(f"{where}: item_id {event.item_id!r} is not in the towers' "
                                     "catalogue; send it inline as \"item\": {\"title\": ...}")
            elif event.query and event.query.strip():
                events.append((type_idx, -1, texts.setdefault(event.query.strip(), len(texts))))
            else:
                raise TowerError(f"{where}: an event needs 'item_id', 'item' or a non-empty "
                                 "'query'")
        parsed.append(events[-max_seq_len:])
    empty = [i for i, events in enumerate(parsed) if not events]
    if empty:
        raise EmptySessionError(f"session(s) {empty[:5]} have no usable event; a user vector "
                                "needs at least one item or query (fall back to popularity)")
    n, seq = len(parsed), max((len(e) for e in parsed), default=1)
    hist = np.full((3, n, seq), -1, dtype=np.int64)
    hist[0] = PAD_TYPE
    for row, events in enumerate(parsed):
        hist[:, row, : len(events)] = np.array(events, dtype=np.int64).T
    return SessionInputs(
        hist_item_idx=torch.from_numpy(hist[1]), hist_text_idx=torch.from_numpy(hist[2]),
        hist_type=torch.from_numpy(hist[0]),
        hist_len=torch.tensor([len(e) for e in parsed], dtype=torch.int64),
        texts=list(texts), inline_items=inline)
