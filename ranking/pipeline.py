"""``RankingPipeline``: sources -> merge -> features -> scorer, for a batch of sessions.

The one ranking path: ``engine.Recommender`` serves with it, the benchmark and the ranker's
training stage call the same object. Per batch, each source prepares once (user vectors, BM25
scores), retrieves its quota, the candidates are merged (``merge``), every candidate gets every
source's score and the features (``features``), and the scorer orders them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranking.bm25 import BM25Index, tokenize
from ranking.features import FEATURES, ItemCodes, SessionContext, session_features
from ranking.items import ItemTable
from ranking.merge import merge
from ranking.scorers import COLUMN, TowersOrder
from ranking.session import SessionBatch
from ranking.sources import Source

# Default candidate quotas per source and merged size (conf/ranking/default.yaml sets them).
DEFAULT_QUOTAS: dict[str, int] = {"towers": 100, "bm25": 50, "zero_shot": 50, "popularity": 10,
                                  "fresh": 10, "session": 20}
DEFAULT_SIZE = 200

# (session index, candidate rows (m,), features (m, F)) -> cross-encoder scores (m,) with NaN
# where not computed, or None when the policy skips the session
ExtraScorer = Callable[[int, np.ndarray, np.ndarray], "np.ndarray | None"]


@dataclass
class RankedSession:
    """One session's candidates, best first."""

    rows: np.ndarray  # (m,) catalogue rows
    scores: np.ndarray  # (m,) final scores, descending
    features: np.ndarray  # (m, F)
    ranks: dict[str, np.ndarray] = field(default_factory=dict)  # source -> (m,) rank or NaN
    item_vectors: np.ndarray | None = None  # (m, d) the towers' vectors (NaN rows: none),
    # taken with the ranking so later steps never read an index that changed since

    def feature(self, name: str) -> np.ndarray:
        return self.features[:, COLUMN[name]]


class RankingPipeline:
    """Sources (name -> ``Source``), their quotas, the merged size and a scorer."""

    def __init__(self, sources: Mapping[str, Source], scorer: Any = None,
                 quotas: Mapping[str, int] | None = None, size: int = DEFAULT_SIZE,
                 bm25: BM25Index | None = None) -> None:
        quotas = dict(DEFAULT_QUOTAS if quotas is None else quotas)
        if "towers" not in sources:
            raise ValueError("the ranking pipeline needs the towers source")
        if size < 1 or any(int(n) < 0 for n in quotas.values()):
            raise ValueError(f"candidate size and quotas must be positive; got size={size}, "
                             f"quotas={quotas}")
        self.sources = dict(sources)
        self.quotas = {name: int(quotas.get(name, 0)) for name in self.sources}  # others: 0
        self.size, self.scorer = int(size), scorer or TowersOrder()
        self.bm25 = bm25
        self._table: tuple[Any, ItemCodes, np.ndarray | None] | None = None
        self.timings: dict[str, float] = {}

    def _table_view(self, table: ItemTable) -> tuple[ItemCodes, np.ndarray | None]:
        cached = self._table
        if cached is None or cached[0] is not table:
            pos = None
            if self.bm25 is not None:
                pos = np.fromiter((self.bm25.position.get(i, -1) for i in table.ids), np.int64,
                                  count=len(table))
            cached = (table, ItemCodes(table), pos)
            self._table = cached
        return cached[1], cached[2]

    def _query_bm25(self, batch: SessionBatch, table: ItemTable, pos: np.ndarray | None
                    ) -> list[np.ndarray | None]:
        """Per session, BM25 (n_rows,) of its latest search query alone (None without one)."""
        out: list[np.ndarray | None] = [None] * len(batch)
        if self.bm25 is None or pos is None:
            return out
        latest = {row: next((q for t, q in zip(reversed(batch.hist_types[row]),
                                                reversed(batch.hist_queries[row]))
                             if t == "search" and q), None) for row in range(len(batch))}
        wanted = {row: q for row, q in latest.items() if q}
        for (row, _), tokens in zip(wanted.items(), tokenize(list(wanted.values()))):
            scores = np.zeros(len(table))
            if tokens:
                scores[pos >= 0] = self.bm25.scores(tokens)[pos[pos >= 0]]
            out[row] = scores
        return out

    def rank(self, batch: SessionBatch, table: ItemTable, request_ts: list[float] | None = None,
             extra: ExtraScorer | None = None) -> list[RankedSession]:
        """Rank each session's merged candidates; ``extra`` adds the cross-encoder feature."""
        clock = time.perf_counter()
        codes, pos = self._table_view(table)
        prepared = {name: src.prepare(batch, table) for name, src in self.sources.items()}
        retrieved = {name: prepared[name].retrieve(n) for name, n in self.quotas.items() if n}
        merged = merge(retrieved, self.size)
        clock, self.timings["sources"] = time.perf_counter(), time.perf_counter() - clock
        rows = [m.rows for m in merged]
        scores = {name: prepared[name].score(rows)
                  for name in ("towers", "zero_shot", "bm25") if name in prepared}
        query = self._query_bm25(batch, table, pos)
        towers, zs = prepared["towers"], prepared.get("zero_shot")
        out = []
        for s, m in enumerate(merged):
            zs_items = zs_events = towers_last = None
            if zs is not None:
                vecs, held = zs.item_vectors(m.rows)
                zs_items = np.full((len(m.rows), vecs.shape[1]), np.nan, np.float32)
                zs_items[held] = vecs
                zs_events = zs.events[s]
            last = next((i for i, t in zip(reversed(batch.hist_items[s]),
                                           reversed(batch.hist_types[s]))
                         if i is not None and t != "search" and i in towers.index), None)
            vecs, held = towers.item_vectors(m.rows)
            item_vectors = np.full((len(m.rows), towers.index.dim), np.nan, np.float32)
            item_vectors[held] = vecs
            if last is not None and len(m.rows):
                towers_last = np.full(len(m.rows), np.nan)
                towers_last[held] = vecs @ towers.index.vectors_of([last])[0]
            ctx = SessionContext(
                rows=m.rows, ranks=m.ranks, scores={k: v[s] for k, v in scores.items()},
                hist_items=batch.hist_items[s], hist_types=batch.hist_types[s],
                request_ts=None if request_ts is None else request_ts[s], zs_events=zs_events,
                zs_items=zs_items, towers_last=towers_last,
                query_bm25=None if query[s] is None else query[s][m.rows], cross_encoder=None)
            features = session_features(ctx, table, codes)
            if extra is not None and len(m.rows):
                ce = extra(s, m.rows, features)
                if ce is not None:
                    features[:, COLUMN["cross_encoder"]] = ce
            final = self.scorer.score(features)
            order = np.argsort(-final, kind="stable")
            out.append(RankedSession(m.rows[order], final[order], features[order],
                                     {k: v[order] for k, v in m.ranks.items()},
                                     item_vectors[order]))
        self.timings["features_and_scorer"] = time.perf_counter() - clock
        return out


__all__ = ["DEFAULT_QUOTAS", "DEFAULT_SIZE", "FEATURES", "RankedSession", "RankingPipeline"]
