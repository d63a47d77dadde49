"""Candidate sources: each maps a ``SessionBatch`` to scored catalogue rows, with one interface.

``prepare(batch, table)`` does a source's per-batch work once (user vectors, BM25 scores) and
returns a ``Prepared`` view with:

- ``retrieve(n)``: per session its top-``n`` rows (best first) and scores, the session's
  ``exclude`` ids never returned;
- ``score(rows)``: per session the source's score of any given rows, so every merged candidate
  gets every dense and lexical score, not only those its own source returned (NaN where the
  source has no score, e.g. an item its index lacks);
- ``score_all()``: scores (B, n_rows) over the whole catalogue: the benchmark's full-ranking
  baselines are these very sources.

Sources: ``TowersSource`` (the towers' user vectors against the FAISS index of item vectors),
``BM25Source`` (the session's recent titles and queries against item text), ``ZeroShotSource``
(the untrained sentence encoder: the recency-weighted mean of the session's event vectors
against item vectors), ``PopularitySource`` and ``FreshSource`` (fillers), ``SessionSource``
(the session's own items: repeats, for shops that allow them and for the ranker to learn how
likely a repeat is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ranking.bm25 import BM25Index, tokenize
from ranking.items import ItemTable
from ranking.session import SessionBatch, recency_weights, session_text

SOURCE_NAMES: tuple[str, ...] = ("towers", "bm25", "zero_shot", "popularity", "fresh", "session")


@dataclass
class Candidates:
    """One session's candidates from one source: catalogue rows, best first, and scores."""

    rows: np.ndarray  # (m,) int64
    scores: np.ndarray  # (m,) float64


def _empty() -> Candidates:
    return Candidates(np.zeros(0, np.int64), np.zeros(0))


class Prepared(Protocol):
    def retrieve(self, n: int) -> list[Candidates]: ...

    def score(self, rows: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def score_all(self) -> np.ndarray: ...


class Source(Protocol):
    name: str

    def prepare(self, batch: SessionBatch, table: ItemTable) -> Prepared: ...


def _rows_of(ids: Sequence[str], scores: np.ndarray, table: ItemTable) -> Candidates:
    keep = [(table.row_of[i], s) for i, s in zip(ids, scores) if i and i in table.row_of]
    if not keep:
        return _empty()
    rows, kept = zip(*keep)
    return Candidates(np.asarray(rows, np.int64), np.asarray(kept, np.float64))


def _excluded_rows(exclude: frozenset[str], table: ItemTable) -> np.ndarray:
    return np.fromiter((table.row_of[i] for i in exclude if i in table.row_of), np.int64)


# ---- dense sources --------------------------------------------------------------------------
class _VectorPrepared:
    """Session vectors (B, d) against an ``index.CatalogueIndex`` of item vectors."""

    def __init__(self, index: Any, batch: SessionBatch, table: ItemTable, vecs: np.ndarray
                 ) -> None:
        self.index, self.batch, self.table, self.vecs = index, batch, table, vecs

    def retrieve(self, n: int) -> list[Candidates]:
        active = np.flatnonzero(np.abs(self.vecs).sum(axis=1) > 0)
        out = [_empty() for _ in range(len(self.batch))]
        if len(active) and len(self.index):
            scores, ids = self.index.search(self.vecs[active], min(n, len(self.index)),
                                            [self.batch.exclude[r] for r in active])
            for j, row in enumerate(active):
                out[row] = _rows_of(ids[j].tolist(), scores[j], self.table)
        return out

    def item_vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (m', d) of the rows the index holds, a (m,) mask saying which)."""
        ids = self.table.ids[rows]
        held = np.fromiter((i in self.index for i in ids), bool, count=len(ids))
        vecs = (self.index.vectors_of(ids[held].tolist()) if held.any()
                else np.zeros((0, self.index.dim), np.float32))
        return vecs, held

    def score(self, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for row, cand in enumerate(rows):
            item_vecs, held = self.item_vectors(cand)
            scores = np.full(len(cand), np.nan)
            scores[held] = item_vecs @ self.vecs[row]
            out.append(scores)
        return out

    def score_all(self) -> np.ndarray:
        item_vecs, held = self.item_vectors(np.arange(len(self.table)))
        out = np.full((len(self.batch), len(self.table)), -np.inf, np.float32)  # (B, n_rows)
        out[:, held] = self.vecs @ item_vecs.T
        return out


class TowersSource:
    """The trained towers: ``batch.user_emb`` against the FAISS index of item vectors."""

    name = "towers"

    def __init__(self, index: Any) -> None:
        self.index = index

    def prepare(self, batch: SessionBatch, table: ItemTable) -> _VectorPrepared:
        if batch.user_emb is None:
            raise ValueError("TowersSource needs batch.user_emb (the towers' user vectors)")
        return _VectorPrepared(self.index, batch, table, batch.user_emb)


class ZeroShotSource:
    """The untrained sentence encoder (no training at all): a session is the recency-weighted
    mean (``decay`` per step back) of its events' vectors — catalogue items' vectors from the
    index, search queries and inline items through ``encode`` — normalised."""

    name = "zero_shot"

    def __init__(self, index: Any, encode: Callable[[list[str]], np.ndarray],
                 decay: float = 0.8) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"zero-shot decay must be in (0, 1], got {decay}")
        self.index, self.encode, self.decay = index, encode, decay

    def event_vectors(self, batch: SessionBatch) -> list[list[np.ndarray | None]]:
        """Per session, one vector per event (None where there is none)."""
        texts = [[q if t == "search" else x for t, q, x in zip(ts, qs, xs)]
                 for ts, qs, xs in zip(batch.hist_types, batch.hist_queries, batch.hist_texts)]
        wanted = list(dict.fromkeys(t for row_texts, items in zip(texts, batch.hist_items)
                                    for t, i in zip(row_texts, items) if t and i is None))
        encoded = dict(zip(wanted, self.encode(wanted))) if wanted else {}
        known = list(dict.fromkeys(i for items in batch.hist_items for i in items
                                   if i is not None and i in self.index))
        item_vecs = dict(zip(known, self.index.vectors_of(known))) if known else {}
        return [[item_vecs.get(i) if i is not None else encoded.get(t) if t else None
                 for i, t in zip(items, row_texts)]
                for items, row_texts in zip(batch.hist_items, texts)]

    def session_vectors(self, events: list[list[np.ndarray | None]]) -> np.ndarray:
        out = np.zeros((len(events), self.index.dim), np.float32)  # (B, d)
        for row, vecs in enumerate(events):
            vecs = [v for v in vecs if v is not None]
            if vecs:
                mean = recency_weights(len(vecs), self.decay) @ np.stack(vecs)
                out[row] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        return out

    def prepare(self, batch: SessionBatch, table: ItemTable) -> _VectorPrepared:
        events = self.event_vectors(batch)
        prepared = _VectorPrepared(self.index, batch, table, self.session_vectors(events))
        prepared.events = events  # type: ignore[attr-defined]  (features read them)
        return prepared


# ---- BM25 -----------------------------------------------------------------------------------
class _BM25Prepared:
    def __init__(self, source: BM25Source, batch: SessionBatch, table: ItemTable) -> None:
        self.batch, self.table = batch, table
        bm25 = source.bm25

        def title_of(item_id: str) -> str:
            row = table.row_of.get(item_id)
            return "" if row is None else str(table.titles[row])

        texts = [session_text(batch.hist_items[r], batch.hist_types[r], batch.hist_queries[r],
                              batch.hist_texts[r], title_of, source.max_events)
                 for r in range(len(batch))]
        pos = source.positions(table)  # (n_rows,) BM25 position of each row, -1: none
        self.scores = np.zeros((len(batch), len(table)))  # (B, n_rows) BM25 in row order
        for row, tokens in enumerate(tokenize(texts)):
            if tokens:
                self.scores[row, pos >= 0] = bm25.scores(tokens)[pos[pos >= 0]]
        self.popularity = table.popularity.astype(np.float64)

    def retrieve(self, n: int) -> list[Candidates]:
        out = []
        for row in range(len(self.batch)):
            scores = self.scores[row]
            valid = scores > 0
            valid[_excluded_rows(self.batch.exclude[row], self.table)] = False
            pool = np.flatnonzero(valid)
            # best BM25 first; equal scores: the more popular item first
            top = pool[np.lexsort((-self.popularity[pool], -scores[pool]))][:n]
            out.append(Candidates(top.astype(np.int64), scores[top]))
        return out

    def score(self, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.scores[row, cand] for row, cand in enumerate(rows)]

    def score_all(self) -> np.ndarray:
        """A full ranking: (BM25, popularity) in lexicographic order, as rank scores."""
        ranks = np.arange(len(self.table), 0, -1, dtype=np.float32)
        out = np.empty(self.scores.shape, np.float32)  # (B, n_rows)
        for row, scores in enumerate(self.scores):
            out[row, np.lexsort((-self.popularity, -scores))] = ranks
        return out


class BM25Source:
    """BM25 of the session's text (its ``max_events`` most recent item titles and queries)
    against item text; only items sharing a word are retrieved."""

    name = "bm25"

    def __init__(self, bm25: BM25Index, max_events: int = 5) -> None:
        self.bm25, self.max_events = bm25, max_events
        self._positions: tuple[Any, BM25Index, np.ndarray] | None = None

    def positions(self, table: ItemTable) -> np.ndarray:
        """(n_rows,) each table row's BM25 position (-1: not indexed), computed once per
        (table, BM25 index) pair: both are replaced, never changed, by catalogue edits."""
        cached = self._positions
        if cached is not None and cached[0] is table.ids and cached[1] is self.bm25:
            return cached[2]
        pos = np.fromiter((self.bm25.position.get(i, -1) for i in table.ids), np.int64,
                          count=len(table))
        self._positions = (table.ids, self.bm25, pos)
        return pos

    def prepare(self, batch: SessionBatch, table: ItemTable) -> _BM25Prepared:
        return _BM25Prepared(self, batch, table)


# ---- fillers --------------------------------------------------------------------------------
class _ListPrepared:
    """A fixed ordered list of ids (popular, fresh) or each session's own items."""

    def __init__(self, lists: list[Sequence[str]], batch: SessionBatch, table: ItemTable,
                 row_scores: np.ndarray | None = None) -> None:
        self.lists, self.batch, self.table, self.row_scores = lists, batch, table, row_scores

    def retrieve(self, n: int) -> list[Candidates]:
        out = []
        for row, ordered in enumerate(self.lists):
            exclude, ids = self.batch.exclude[row], []
            for item_id in ordered:
                if len(ids) == n:
                    break
                if item_id not in exclude and item_id in self.table.row_of:
                    ids.append(item_id)
            out.append(_rows_of(ids, -np.arange(len(ids), dtype=np.float64), self.table))
        return out

    def score(self, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.row_scores is None:
            return [np.full(len(cand), np.nan) for cand in rows]
        return [self.row_scores[cand] for cand in rows]

    def score_all(self) -> np.ndarray:
        scores = self.row_scores if self.row_scores is not None else np.zeros(len(self.table))
        return np.broadcast_to(scores.astype(np.float32),
                               (len(self.batch), len(self.table))).copy()


class PopularitySource:
    """Training popularity: the same list for everyone (a filler for thin sessions); its score
    is log(1 + interactions)."""

    name = "popularity"

    def prepare(self, batch: SessionBatch, table: ItemTable) -> _ListPrepared:
        return _ListPrepared([table.popular_ids] * len(batch), batch, table,
                             np.log1p(table.popularity.astype(np.float64)))


class FreshSource:
    """New items first (no training interaction), then the most recently created."""

    name = "fresh"

    def prepare(self, batch: SessionBatch, table: ItemTable) -> _ListPrepared:
        return _ListPrepared([table.fresh_ids] * len(batch), batch, table)


class SessionSource:
    """The session's own catalogue items, most recent first (only where repeats are allowed:
    excluded ids never come back)."""

    name = "session"

    def prepare(self, batch: SessionBatch, table: ItemTable) -> _ListPrepared:
        lists = [list(dict.fromkeys(i for i in reversed(items) if i is not None))
                 for items in batch.hist_items]
        return _ListPrepared(lists, batch, table)
