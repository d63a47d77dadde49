"""The systems the benchmark compares, each a full-catalogue scorer of evaluation examples.

Every retriever maps a frame of SplitData example rows (``hist_items``, ``hist_types``,
``hist_queries``) to scores [B, n_items] over the whole catalogue, columns in catalogue row order,
so that all of them go through the same ``evaluation.RankingEvaluator`` (full ranking, history
masking done by the evaluator, never by the system):

- ``popularity``: training interaction counts, the same list for everyone;
- ``bm25``: BM25 (bm25s) over item texts, queried with the session's text (recent item titles
  and search queries), ties broken by popularity;
- ``zero_shot``: an untrained sentence encoder; the user vector is the recency-weighted mean of
  the session's item (and query) vectors;
- ``two_tower_*``: trained towers (``towers.load_towers``), user vector from the session events;
- ``two_tower_bert+rerank``: the towers' top-N (history excluded, as at serving time) re-scored
  by the cross-encoder through ``rerank.RerankPolicy`` and reordered among their own positions.

:func:`evaluate` runs one system over :func:`evaluation_variants` of the test rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SEGMENT_NAMES = {"user=warm_user": "warm_user", "user=cold_user": "cold_user",
                 "user=new_user": "new_user", "target=head": "head",
                 "target=long_tail": "long_tail", "target=new": "new_item"}
SEGMENTS = ("warm_user", "cold_user", "new_user", "cold_1", "cold_2", "cold_3", "query_only",
            "head", "long_tail", "new_item")
HIST_COLUMNS = ("hist_items", "hist_types", "hist_queries")


class BenchmarkError(ValueError):
    """A bad benchmark argument or input: the message says what was expected and how to fix it."""


class Retriever(Protocol):
    name: str

    def score(self, examples: pd.DataFrame) -> np.ndarray:
        """Scores [len(examples), n_items], columns in catalogue order; higher is better."""


def session_text(
    hist_items: Sequence[str | None],
    hist_types: Sequence[str],
    hist_queries: Sequence[str | None],
    item_titles: Mapping[str, str],
    max_events: int = 5,
) -> str:
    """The most recent ``max_events`` events as text: item titles and search queries."""
    parts = []
    for item_id, kind, query in list(zip(hist_items, hist_types, hist_queries))[-max_events:]:
        if kind == "search" or item_id is None:
            parts.append(query if isinstance(query, str) else "")
        else:
            parts.append(item_titles.get(str(item_id), ""))
    return " ".join(p for p in parts if p)


def recency_weights(n_events: int, decay: float) -> np.ndarray:
    """Weights (n_events,) of a chronological history: the newest event 1, each older one
    ``decay`` times the next, summing to 1."""
    weights = decay ** np.arange(n_events - 1, -1, -1, dtype=np.float64)
    return weights / weights.sum()


class PopularityRetriever:
    """Training popularity: every user gets the same ranking."""

    name = "popularity"

    def __init__(self, item_popularity: np.ndarray) -> None:
        self.item_scores = np.asarray(item_popularity, dtype=np.float32)  # (n_items,)

    def score(self, examples: pd.DataFrame) -> np.ndarray:
        return np.broadcast_to(self.item_scores, (len(examples), len(self.item_scores))).copy()


class BM25Retriever:
    """Lexical baseline: BM25 of the session text against every item text (Lucene variant).

    Items the query does not match all score 0; among equal BM25 scores the more popular item
    ranks first, so the tail of the list is the popularity list rather than catalogue order.
    """

    name = "bm25"

    def __init__(
        self,
        item_texts: Sequence[str],
        item_titles: Mapping[str, str],
        item_popularity: np.ndarray,
        max_events: int = 5,
        k1: float = 1.5,
        b: float = 0.75,
    ) -> None:
        import bm25s

        self._bm25s = bm25s
        self.item_titles = item_titles
        self.max_events = max_events
        self.popularity = np.asarray(item_popularity, dtype=np.float64)
        self.index = bm25s.BM25(k1=k1, b=b)
        self.index.index(bm25s.tokenize(list(item_texts), stopwords="en", show_progress=False),
                         show_progress=False)
        self.n_items = len(item_texts)

    def score(self, examples: pd.DataFrame) -> np.ndarray:
        texts = [session_text(i, t, q, self.item_titles, self.max_events) for i, t, q in
                 zip(examples["hist_items"], examples["hist_types"], examples["hist_queries"])]
        tokens = self._bm25s.tokenize(texts, stopwords="en", return_ids=False,
                                      show_progress=False)
        out = np.empty((len(texts), self.n_items), dtype=np.float32)  # (B, n_items)
        ranks = np.arange(self.n_items, 0, -1, dtype=np.float32)
        for row, query_tokens in enumerate(tokens):
            bm25 = self.index.get_scores(list(query_tokens)) if query_tokens else \
                np.zeros(self.n_items)
            order = np.lexsort((-self.popularity, -np.asarray(bm25, dtype=np.float64)))
            out[row, order] = ranks  # exact lexicographic (bm25, popularity) order
        return out


class ZeroShotRetriever:
    """An untrained sentence encoder: user vector = recency-weighted mean of the session's item
    vectors (and search-query vectors), cosine against every item vector."""

    name = "zero_shot"

    def __init__(
        self,
        encoder: Any,
        item_texts: Sequence[str],
        item_index: Mapping[str, int],
        cache_dir: str | Path,
        decay: float = 0.8,
        batch_size: int = 64,
    ) -> None:
        from towers import encode_cached

        if not 0.0 < decay <= 1.0:
            raise BenchmarkError(f"zero-shot decay must be in (0, 1], got {decay}")
        self._encode_cached = encode_cached
        self.encoder, self.cache_dir, self.batch_size = encoder, cache_dir, batch_size
        self.item_index, self.decay = item_index, decay
        self.item_emb = encode_cached(encoder, list(item_texts), cache_dir, batch_size,
                                      show_progress=False)  # (n_items, d)
        self._query_emb: dict[str, np.ndarray] = {}

    def _queries(self, examples: pd.DataFrame) -> None:
        fresh = sorted({q for qs in examples["hist_queries"] for q in qs
                        if isinstance(q, str) and q and q not in self._query_emb})
        if fresh:
            vecs = self._encode_cached(self.encoder, fresh, self.cache_dir, self.batch_size,
                                       show_progress=False)
            self._query_emb.update(zip(fresh, vecs))

    def score(self, examples: pd.DataFrame) -> np.ndarray:
        self._queries(examples)
        user_emb = np.zeros((len(examples), self.item_emb.shape[1]), np.float32)  # (B, d)
        for row, (items, queries) in enumerate(zip(examples["hist_items"],
                                                   examples["hist_queries"])):
            vecs = [self.item_emb[self.item_index[i]] if i is not None and i in self.item_index
                    else self._query_emb.get(q) if isinstance(q, str) else None
                    for i, q in zip(items, queries)]
            vecs = [v for v in vecs if v is not None]
            if vecs:
                user_emb[row] = recency_weights(len(vecs), self.decay) @ np.stack(vecs)
        return user_emb @ self.item_emb.T  # (B, n_items)


class TwoTowerRetriever:
    """Trained towers: user vector from the session events, dot product with every item."""

    def __init__(self, model: Any, catalogue_ids: Sequence[str], name: str,
                 batch_size: int = 256) -> None:
        missing = [i for i in catalogue_ids if i not in model.item_index]
        if missing or len(model.item_index) != len(catalogue_ids):
            raise BenchmarkError(
                f"{name}: the towers' catalogue ({len(model.item_index)} items) is not this "
                f"split's ({len(catalogue_ids)} items, {len(missing)} unknown to the towers, "
                f"e.g. {missing[:3]}); train them on the same data config (--train, or "
                "train.py with the same data= and data.options overrides)")
        from engine.rerank_stage import example_sessions

        self._sessions = example_sessions
        self.model, self.name, self.batch_size = model, name, batch_size
        order = np.array([model.item_index[i] for i in catalogue_ids])
        self.item_emb = model.catalogue_item_emb()[order]  # (n_items, d), catalogue order

    def score(self, examples: pd.DataFrame) -> np.ndarray:
        sessions = self._sessions(examples)
        user_emb = self.model.user_emb_from_events(sessions, unknown_items="skip")  # (B, d)
        return user_emb @ self.item_emb.T  # (B, n_items)


class RerankedRetriever:
    """The towers' top ``policy.top_n`` (session items excluded, as at serving time) re-scored
    by the cross-encoder where the policy says so and blended; the candidates are then reordered
    among the ranking positions they held, so items outside them (session items included, which
    the evaluator's masking handles like for every other system) keep their places."""

    def __init__(
        self,
        towers: TwoTowerRetriever,
        reranker: Any,
        policy: Any,
        item_ids: Sequence[str],
        item_texts: Sequence[str],
        item_titles: Mapping[str, str],
        item_segments: Sequence[str],
        name: str = "two_tower_bert+rerank",
    ) -> None:
        self.towers, self.reranker, self.policy, self.name = towers, reranker, policy, name
        self.item_index = {item_id: n for n, item_id in enumerate(item_ids)}
        self.item_texts, self.item_titles = list(item_texts), item_titles
        self.item_segments = np.asarray(item_segments, dtype=object)
        self.rerank_seconds, self.reranked_rows, self.scored_pairs = 0.0, 0, 0

    def score(self, examples: pd.DataFrame) -> np.ndarray:
        scores = self.towers.score(examples)  # (B, n_items)
        top_n = self.policy.top_n
        for row, (items, types, queries) in enumerate(zip(
                examples["hist_items"], examples["hist_types"], examples["hist_queries"])):
            retrieval = scores[row].astype(np.float64)
            seen = [self.item_index[i] for i in items if i is not None and i in self.item_index]
            retrieval[seen] = -np.inf
            cands = np.argsort(-retrieval, kind="stable")[:top_n]  # (top_n,)
            cands = cands[np.isfinite(retrieval[cands])]
            n_item_events = sum(kind != "search" for kind in types)
            selected = self.policy.select(n_item_events, list(self.item_segments[cands]))
            rerank = np.full(len(cands), np.nan)
            if selected.any():
                started = time.perf_counter()
                context = self.reranker.context_text(list(items), list(types), list(queries),
                                                     self.item_titles)
                rerank[selected] = self.reranker.score(
                    context, [self.item_texts[i] for i in cands[selected]])
                self.rerank_seconds += time.perf_counter() - started
                self.reranked_rows += 1
                self.scored_pairs += int(selected.sum())
            final = self.policy.blend(retrieval[cands], rerank, selected, n_item_events)
            new_order = cands[np.argsort(-final, kind="stable")]
            # the candidates swap places among their own slots: the i-th best final score takes
            # the i-th best retrieval score, so every other item keeps its position
            scores[row, new_order] = np.sort(scores[row, cands])[::-1]
        return scores

    def stats(self) -> dict[str, Any]:
        return {"rerank_seconds": round(self.rerank_seconds, 2),
                "reranked_rows": self.reranked_rows, "scored_pairs": self.scored_pairs,
                "policy": repr(self.policy)}


def evaluation_variants(test: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The test rows, plus warm users' rows cut to their last 1/2/3 item events (``cold_n``)
    and rows with searches cut to the searches only (``query_only``)."""
    from recdata import truncate_history

    variants = {"test": test.reset_index(drop=True)}
    warm = test.loc[test["user_segment"] == "warm_user"]
    for n in (1, 2, 3):
        variants[f"cold_{n}"] = truncate_history(warm, n).reset_index(drop=True)
    rows = test.loc[test["hist_types"].map(lambda types: "search" in types)]
    keep = [[kind == "search" for kind in types] for types in rows["hist_types"]]
    variants["query_only"] = rows.assign(**{
        col: [[v for v, k in zip(values, mask) if k] for values, mask in zip(rows[col], keep)]
        for col in HIST_COLUMNS}).reset_index(drop=True)
    return {name: frame for name, frame in variants.items() if len(frame)}


def evaluate(retriever: Any, variants: dict[str, pd.DataFrame], item_index: dict[str, int],
             long_tail_mask: np.ndarray, batch_size: int) -> dict[str, Any]:
    """Full-ranking metrics of one system, masked and unmasked: overall and by segment on the
    test rows, and each cut variant as a segment of its own."""
    from evaluation import RankingEvaluator

    started = time.perf_counter()
    out: dict[str, Any] = {view: {"overall": None, "segments": {}} for view in ("masked",
                                                                              "unmasked")}
    for name, frame in variants.items():
        evaluator = RankingEvaluator(len(item_index), long_tail_mask)
        targets = np.array([item_index[str(t)] for t in frame["target"]], dtype=np.int64)
        history = [np.array([item_index[i] for i in hist if i is not None and i in item_index],
                            dtype=np.int64) for hist in frame["hist_items"]]
        labels = {"user": frame["user_segment"].tolist(),
                  "target": frame["target_segment"].tolist()} if name == "test" else None
        for lo in range(0, len(frame), batch_size):
            hi = min(lo + batch_size, len(frame))
            evaluator.add(retriever.score(frame.iloc[lo:hi]), targets[lo:hi], history[lo:hi],
                          {k: v[lo:hi] for k, v in labels.items()} if labels else None)
        result = evaluator.result()
        for view in ("masked", "unmasked"):
            if name == "test":
                out[view]["overall"] = result[view]["overall"]
                out[view]["segments"].update({SEGMENT_NAMES.get(k, k): v for k, v in
                                              result[view]["by_segment"].items()})
            else:
                out[view]["segments"][name] = result[view]["overall"]
    out["eval_seconds"] = round(time.perf_counter() - started, 2)
    return out
