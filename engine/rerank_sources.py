"""Candidate sources for the reranker stage: ``(example rows, n) -> top-n item ids per row``.

The reranker's hard negatives are mined from these (``rerank.mine_negatives`` takes any
mapping of name -> source), and its evaluation lists come from the towers one. The towers
source ranks exactly as the engine does (full catalogue, the session's own items excluded);
BM25 (bm25s) reads the session's context text. Sources of the ``ranking/`` package (zero-shot,
popularity, ...) plug in the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from recdata.schema import Event, example_events
from rerank import CandidateSource, session_context_text

log = logging.getLogger(__name__)


def example_sessions(examples: pd.DataFrame) -> list[list[Event]]:
    """Example rows -> typed session event lists (``recdata.schema.example_events``)."""
    return example_events(examples["hist_items"], examples["hist_types"],
                          examples["hist_queries"])


def retrieve_candidates(model: Any, examples: pd.DataFrame, n: int, batch_size: int = 512,
                        with_scores: bool = False) -> Any:
    """Top-``n`` item ids per example from the towers by exact full-catalogue scoring, the
    session's own history items excluded (as at serving time); with ``with_scores``, also
    their retrieval scores, as ``(ids, scores)``."""
    item_emb = model.catalogue_item_emb()  # (n_items, d)
    item_ids = np.asarray(model.item_ids, dtype=object)
    index = model.item_index
    n = min(n, len(item_ids) - 1)
    out: list[list[str]] = []
    out_scores: list[np.ndarray] = []
    sessions = example_sessions(examples)
    for start in range(0, len(sessions), batch_size):
        chunk = sessions[start:start + batch_size]
        user_emb = model.user_emb_from_events(chunk, unknown_items="skip")  # (B, d)
        scores = user_emb @ item_emb.T  # (B, n_items)
        for row, events in enumerate(chunk):
            seen = [index[e.item_id] for e in events if e.item_id in index]
            scores[row, seen] = -np.inf
        top = np.argpartition(-scores, n, axis=1)[:, :n]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        ranked = np.take_along_axis(top, order, 1)  # (B, n)
        for row in range(len(chunk)):
            finite = np.isfinite(scores[row, ranked[row]])
            out.append(item_ids[ranked[row][finite]].tolist())
            out_scores.append(scores[row, ranked[row][finite]])
    return (out, out_scores) if with_scores else out


def towers_source(model: Any) -> CandidateSource:
    """The trained towers as a candidate source."""
    def candidates(examples: pd.DataFrame, n: int) -> list[list[str]]:
        return retrieve_candidates(model, examples, n)
    return candidates


def bm25_source(item_ids: Sequence[str], item_texts: Sequence[str],
                item_titles: Mapping[str, str], max_events: int = 5) -> CandidateSource:
    """BM25 (bm25s, Lucene variant, English stopwords) of the session's context text (recent
    item titles and search queries) against every item text."""
    import bm25s

    ids = np.asarray(item_ids, dtype=object)
    index = bm25s.BM25()
    index.index(bm25s.tokenize(list(item_texts), stopwords="en", show_progress=False),
                show_progress=False)

    def candidates(examples: pd.DataFrame, n: int) -> list[list[str]]:
        texts = [session_context_text(list(i), list(t), list(q), item_titles, max_events)
                 for i, t, q in zip(examples["hist_items"], examples["hist_types"],
                                    examples["hist_queries"])]
        tokens = bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)
        out = []
        for query in tokens:
            if not query:
                out.append([])
                continue
            scores = np.asarray(index.get_scores(list(query)), dtype=np.float64)
            top = np.argsort(-scores, kind="stable")[:n]
            out.append(ids[top[scores[top] > 0]].tolist())
        return out
    return candidates


def build_sources(names: Sequence[str], model: Any, catalogue: pd.DataFrame,
                  context_max_events: int) -> dict[str, CandidateSource]:
    """The named sources (``towers``, ``bm25``) over one run's towers and catalogue."""
    known = ("towers", "bm25")
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"rerank.mining.neg_sources must be drawn from {list(known)}; "
                         f"got {unknown}")
    sources: dict[str, CandidateSource] = {}
    for name in names:
        if name == "towers":
            sources[name] = towers_source(model)
        else:
            titles = dict(zip(catalogue["item_id"], catalogue["title"]))
            sources[name] = bm25_source(catalogue["item_id"].tolist(),
                                        catalogue["text"].tolist(), titles, context_max_events)
    return sources
