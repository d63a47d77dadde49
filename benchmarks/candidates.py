"""Candidate recall: how often each source's top 100 / 200, and the merged candidate set,
hold the target (test rows, history excluded as served). A ranker cannot rank what no source
returns, so this bounds every ranked system's recall."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

DEPTHS = (100, 200)


def _recall(hits: np.ndarray, labels: pd.Series) -> dict[str, Any]:
    out = {"overall": {"count": int(len(hits)), "recall": float(hits.mean()) if len(hits)
                       else None}}
    for segment, rows in labels.groupby(labels).groups.items():
        idx = np.asarray(list(rows))
        out[str(segment)] = {"count": int(len(idx)), "recall": float(hits[idx].mean())}
    return out


def candidate_recall(recommender: Any, test: pd.DataFrame, batch_size: int = 256
                     ) -> dict[str, Any]:
    """Per source (top ``DEPTHS``) and merged (the pipeline's candidate set): recall overall
    and by target and user segment."""
    from engine.ranking import session_batch
    from engine.session import sessions_from_examples

    sources = list(recommender.pipeline.sources)
    depth = max(DEPTHS)
    rank_of = {name: np.full(len(test), np.inf) for name in sources}
    merged = np.zeros(len(test), dtype=bool)
    merged_size = []
    for lo in range(0, len(test), batch_size):
        chunk = test.iloc[lo:lo + batch_size]
        resolved = recommender.resolve(sessions_from_examples(
            chunk["hist_items"], chunk["hist_types"], chunk["hist_queries"]), k=1)
        active = [j for j, r in enumerate(resolved) if r.events]
        if not active:
            continue
        ranked, user_emb, state, _, _ = recommender.rank_resolved([resolved[j] for j in active])
        batch = session_batch([resolved[j] for j in active], user_emb, state.row_of, False)
        targets = [state.row_of.get(str(t), -1) for t in chunk["target"].iloc[active]]
        for name in sources:
            found = recommender.pipeline.sources[name].prepare(batch, state).retrieve(depth)
            for a, (cand, target) in enumerate(zip(found, targets)):
                hit = np.flatnonzero(cand.rows == target)
                if len(hit):
                    rank_of[name][lo + active[a]] = hit[0]
        for a, (result, target) in enumerate(zip(ranked, targets)):
            merged[lo + active[a]] = target in set(result.rows.tolist())
            merged_size.append(len(result.rows))
    test = test.reset_index(drop=True)
    out: dict[str, Any] = {"depths": list(DEPTHS), "by_source": {}, "merged_size_mean":
                           float(np.mean(merged_size)) if merged_size else None}
    for name in sources:
        out["by_source"][name] = {f"at_{d}": {
            "target": _recall(rank_of[name] < d, test["target_segment"]),
            "user": _recall(rank_of[name] < d, test["user_segment"])} for d in DEPTHS}
    out["merged"] = {"target": _recall(merged, test["target_segment"]),
                     "user": _recall(merged, test["user_segment"]),
                     "quotas": recommender.pipeline.quotas, "size": recommender.pipeline.size}
    return out
