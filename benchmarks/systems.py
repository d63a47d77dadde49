"""Benchmark systems: every one ranks evaluation examples through ``engine.Recommender`` (the
serving path), so what is measured is what is served.

Each system maps a frame of SplitData example rows (``hist_items``, ``hist_types``,
``hist_queries``) to scores [B, n_items] over the whole catalogue, columns in catalogue row
order, so that all of them go through the same ``evaluation.RankingEvaluator`` (full ranking,
history masking done by the evaluator, never by the system):

- ``SourceSystem``: one candidate source's full-catalogue scores (``ranking`` sources'
  ``score_all``): ``popularity``, ``bm25``, ``zero_shot`` and the towers (``two_tower_*``);
- ``EngineSystem``: the engine's ranking stage (merged candidates ordered by its scorer —
  ``fusion``, ``ranker`` — and, with ``rerank``, the cross-encoder policy on top); items outside
  the candidates follow in the towers' order, so the protocol stays full ranking. With
  ``repeats`` the session's own items are candidates too (the unmasked protocol).

:func:`evaluate` runs one system over :func:`evaluation_variants` of the test rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SEGMENT_NAMES = {"user=warm_user": "warm_user", "user=cold_user": "cold_user",
                 "user=new_user": "new_user", "target=head": "head",
                 "target=long_tail": "long_tail", "target=new": "new_item",
                 "target=unseen": "unseen_item"}
SEGMENTS = ("warm_user", "cold_user", "new_user", "cold_1", "cold_2", "cold_3", "query_only",
            "head", "long_tail", "new_item", "unseen_item")
HIST_COLUMNS = ("hist_items", "hist_types", "hist_queries")


class BenchmarkError(ValueError):
    """A bad benchmark argument or input: the message says what was expected and how to fix it."""


def _columns(recommender: Any, state: Any, item_ids: Sequence[str]) -> np.ndarray:
    """Evaluator column of each engine catalogue row (the two must hold the same items)."""
    index = {item_id: n for n, item_id in enumerate(item_ids)}
    missing = [i for i in state.ids if i not in index]
    if missing or len(state) != len(item_ids):
        raise BenchmarkError(
            f"the run's catalogue ({len(state)} items) is not this split's ({len(item_ids)} "
            f"items; e.g. {missing[:3]} unknown to the split); train on the same data config")
    return np.fromiter((index[i] for i in state.ids), np.int64, count=len(state))


def _resolve(recommender: Any, examples: pd.DataFrame) -> list[Any]:
    from engine.session import sessions_from_examples

    return recommender.resolve(sessions_from_examples(
        examples["hist_items"], examples["hist_types"], examples["hist_queries"]), k=1)


class SourceSystem:
    """One candidate source's full-catalogue scores, the towers' user vectors from the engine's
    encoder (``source`` is a ``ranking`` source name of ``recommender.pipeline``)."""

    def __init__(self, recommender: Any, source: str, item_ids: Sequence[str], name: str
                 ) -> None:
        if source not in recommender.pipeline.sources:
            raise BenchmarkError(f"{name}: the run has no {source!r} source (its ranking "
                                 "parts are missing: build them with build_index.py)")
        self.recommender, self.source, self.item_ids, self.name = (recommender, source,
                                                                   list(item_ids), name)

    def score(self, examples: pd.DataFrame) -> np.ndarray:
        rec = self.recommender
        resolved = _resolve(rec, examples)
        out = np.zeros((len(examples), len(self.item_ids)), np.float32)  # (B, n_items)
        active = [j for j, r in enumerate(resolved) if r.events]
        if active:
            scores, state = rec.score_all([resolved[j] for j in active], self.source)
            out[np.ix_(active, _columns(rec, state, self.item_ids))] = scores
        return out


class EngineSystem:
    """The engine's ranking stage (module docstring): its candidates first in its order (with
    the rerank policy when ``rerank``), then every other item in the towers' order."""

    def __init__(self, recommender: Any, item_ids: Sequence[str], name: str,
                 repeats: bool = False, rerank: bool = False) -> None:
        self.recommender, self.item_ids, self.name = recommender, list(item_ids), name
        self.repeats, self.rerank = repeats, rerank
        self.rerank_seconds, self.reranked_rows, self.scored_pairs = 0.0, 0, 0
        self.candidates_found: list[bool] = []

    def score(self, examples: pd.DataFrame) -> np.ndarray:
        rec = self.recommender
        resolved = _resolve(rec, examples)
        out = np.zeros((len(examples), len(self.item_ids)), np.float32)  # (B, n_items)
        active = [j for j, r in enumerate(resolved) if r.events]
        if not active:
            return out
        ranked, user_emb, state, _, _ = rec.rank_resolved([resolved[j] for j in active],
                                                          repeats=self.repeats)
        cols = _columns(rec, state, self.item_ids)
        tail, _ = rec.score_all([resolved[j] for j in active], "towers", user_emb)  # (A, n)
        targets = examples["target"].astype(str).tolist()
        for a, (j, result) in enumerate(zip(active, ranked)):
            cand = rec.rerank_candidates(resolved[j], result, state, self.rerank)
            if cand["reranked"]:
                self.reranked_rows += 1
                self.scored_pairs += int(np.isfinite(cand["rerank_scores"]).sum())
                self.rerank_seconds += cand["rerank_ms"] / 1000.0
            order = cand["rows"][np.argsort(-cand["final"], kind="stable")]
            row_scores = tail[a].astype(np.float64)
            finite = row_scores[np.isfinite(row_scores)]
            top = (finite.max() if len(finite) else 0.0) + 1.0
            # candidates above every other item, in the ranking's order
            row_scores[order] = top + np.arange(len(order), 0, -1, dtype=np.float64)
            out[j, cols] = row_scores
            self.candidates_found.append(state.row_of.get(targets[j], -1) in set(order.tolist()))
        return out

    def stats(self) -> dict[str, Any]:
        return {"rerank_seconds": round(self.rerank_seconds, 2),
                "reranked_rows": self.reranked_rows, "scored_pairs": self.scored_pairs,
                "policy": repr(self.recommender.policy),
                "candidate_recall": (float(np.mean(self.candidates_found))
                                     if self.candidates_found else None)}


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
