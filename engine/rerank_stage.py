"""Second training stage: the cross-encoder learns on the trained retriever's hard negatives.

Lives in ``engine`` because it wires the towers (candidates) to the reranker (training) over a
run's artifacts; ``towers`` and ``rerank`` never import each other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recdata.schema import SplitData

log = logging.getLogger(__name__)


def example_sessions(examples: pd.DataFrame) -> list[list[dict[str, Any]]]:
    """Example rows -> session event lists in the DESIGN.md JSON shape."""
    sessions = []
    for items, types, queries in zip(examples["hist_items"], examples["hist_types"],
                                     examples["hist_queries"]):
        sessions.append([{"type": "search", "query": q} if t == "search"
                         else {"type": t, "item_id": i} for i, t, q in zip(items, types, queries)])
    return sessions


def retrieve_candidates(model: Any, examples: pd.DataFrame, n: int, batch_size: int = 512,
                        with_scores: bool = False) -> Any:
    """Top-``n`` item ids per example from the towers by exact full-catalogue scoring, the
    session's own history items excluded (as at serving time); with ``with_scores``, also
    their retrieval scores, as ``(ids, scores)``."""
    item_emb = model.catalogue_item_emb()  # (n_items, d)
    item_ids = np.asarray(model.item_ids, dtype=object)
    index = model.item_index
    out: list[list[str]] = []
    out_scores: list[np.ndarray] = []
    sessions = example_sessions(examples)
    for start in range(0, len(sessions), batch_size):
        chunk = sessions[start:start + batch_size]
        user_emb = model.user_emb_from_events(chunk, unknown_items="skip")  # (B, d)
        scores = user_emb @ item_emb.T  # (B, n_items)
        for row, events in enumerate(chunk):
            seen = [index[e["item_id"]] for e in events if e.get("item_id") in index]
            scores[row, seen] = -np.inf
        top = np.argpartition(-scores, n, axis=1)[:, :n]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        ranked = np.take_along_axis(top, order, 1)  # (B, n)
        out.extend(item_ids[ranked].tolist())
        out_scores.extend(np.take_along_axis(scores, ranked, 1))
    return (out, out_scores) if with_scores else out


def tune_blend(reranker: Any, groups: list[tuple[str, list[str], int]],
               retrieval_scores: list[np.ndarray], rcfg: Mapping[str, Any],
               alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
               ) -> dict[str, Any]:
    """The blend weight of rerank vs. retrieval scores that maximises validation NDCG@10 when
    every candidate is re-scored (the cold-user case); ties go to the smaller weight, so a
    reranker that does not help is blended out (alpha 0) instead of hurting."""
    from rerank import RerankPolicy
    from rerank.train import rank_metrics

    rerank_scores = [reranker.score(context, texts) for context, texts, _ in groups]
    by_alpha = {}
    for alpha in alphas:
        policy = RerankPolicy(blend_alpha=alpha, standardize=rcfg.get("standardize", "zscore"))
        ndcg = [rank_metrics(policy.blend(retr, rr, np.ones(len(rr), dtype=bool)), pos)[0]
                for (_, _, pos), retr, rr in zip(groups, retrieval_scores, rerank_scores)]
        by_alpha[alpha] = float(np.mean(ndcg)) if ndcg else 0.0
    best = max(alphas, key=lambda a: (round(by_alpha[a], 6), -a))
    log.info("blend weight on %d validation groups: NDCG@10 by alpha %s -> alpha %s",
             len(groups), {a: round(v, 4) for a, v in by_alpha.items()}, best)
    return {"blend_alpha": best, "valid_ndcg_at_10_by_alpha": by_alpha, "groups": len(groups)}


def train_reranker_for_run(run_dir: str | Path, split: SplitData, rcfg: Mapping[str, Any],
                           seed: int, model_path: str) -> dict[str, Any]:
    """Train ``Reranker`` on ``split``'s examples with the run's towers as the candidate
    generator; save it to ``run_dir/reranker`` and return its before/after metrics."""
    from engine.artifacts import load_catalogue, save_json
    from rerank import Reranker, build_groups, build_pairs, train_reranker
    from towers import load_towers

    from engine.artifacts import ArtifactPaths

    run_dir = Path(run_dir)
    ArtifactPaths(run_dir).check_split(split.fingerprint)  # candidates must come from this split
    model = load_towers(run_dir / "towers")
    catalogue = load_catalogue(run_dir)
    texts = dict(zip(catalogue["item_id"], catalogue["text"]))
    titles = dict(zip(catalogue["item_id"], catalogue["title"]))
    train = split.train.sample(n=min(int(rcfg["max_train_examples"]), len(split.train)),
                               random_state=seed)
    valid = split.valid.sample(n=min(int(rcfg["max_valid_groups"]), len(split.valid)),
                               random_state=seed)
    log.info("retrieving %d training and %d validation candidate lists", len(train), len(valid))
    pairs = build_pairs(train, retrieve_candidates(model, train, int(rcfg["candidates_n"])),
                        texts, titles, n_hard=int(rcfg["n_hard"]), n_random=int(rcfg["n_random"]),
                        seed=seed, max_events=int(rcfg["context_max_events"]))
    valid_ids, valid_scores = retrieve_candidates(model, valid, int(rcfg["top_n"]),
                                                  with_scores=True)
    groups = build_groups(valid, valid_ids, texts, titles,
                          max_events=int(rcfg["context_max_events"]))
    reranker = Reranker(model_path, max_length=int(rcfg["max_length"]),
                        num_layers=rcfg.get("num_layers"),
                        quantize_int8=bool(rcfg["quantize_int8"]), seed=seed,
                        batch_size=int(rcfg["score_batch_size"]),
                        context_max_events=int(rcfg["context_max_events"]))
    metrics = train_reranker(reranker, pairs, groups, epochs=int(rcfg["epochs"]),
                             batch_size=int(rcfg["batch_size"]), lr=float(rcfg["lr"]),
                             warmup_ratio=float(rcfg["warmup_ratio"]),
                             max_steps=rcfg.get("max_steps"), seed=seed)
    reranker.save(run_dir / "reranker")
    blend = tune_blend(reranker, groups, valid_scores, rcfg)
    save_json(run_dir / "reranker" / "blend.json", blend)
    metrics.update(train_examples=len(train), train_pairs=len(pairs), valid_groups=len(groups),
                   blend=blend)
    return metrics
