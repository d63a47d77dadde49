"""Second training stage: the cross-encoder learns listwise on negatives mined from the
candidate sources, is exported for CPU serving, and is switched on only where it helps.

Steps (:func:`train_reranker_for_run`): mine negatives for the training sessions from the
sources (towers, BM25), never an item without training interactions or held out as new ->
listwise training under a time budget -> save (fp32 weights, plus the ONNX / int8 export
``rerank.model.backend`` / ``.quantize`` ask for) -> reload exactly as the engine will ->
score the towers' top-N on the *full* validation split, warm contexts and contexts cut to
1-3 item events (cold) -> per user group, keep the reranker only where its NDCG@10 lift over
the towers' order has a bootstrap CI above zero -> ``reranker/policy.json``.
A pipeline stage: it wires the towers (candidates) to the reranker, which ``towers`` and
``rerank`` never do themselves; serving (``engine``) only loads what it writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.rerank_sources import build_sources, example_sessions, retrieve_candidates
from recdata.schema import SplitData

log = logging.getLogger(__name__)
POLICY_FILE = "policy.json"

__all__ = ["POLICY_FILE", "cold_variant", "example_sessions", "negative_pool",
           "score_rows", "train_reranker_for_run", "training_groups"]


def negative_pool(split: SplitData) -> set[str]:
    """Items that may be negatives: with a training interaction, and not held out as new."""
    popularity = split.item_popularity
    return {str(i) for i, p in popularity.items() if p > 0 and str(i) not in split.new_items}


def training_groups(split: SplitData, sources: Mapping[str, Any], texts: Mapping[str, str],
                    titles: Mapping[str, str], mining: Mapping[str, Any], max_events: int,
                    seed: int
                    ) -> tuple[pd.DataFrame, list[list[str]], list[tuple[str, list[str]]]]:
    """The shuffled training rows, their mined negative ids and the listwise groups
    (``mining``: the ``rerank.mining`` node; contexts of the last ``max_events`` events)."""
    from rerank import build_train_groups, mine_negatives

    train = split.train.sample(frac=1.0, random_state=seed)
    cap = mining.get("max_train_examples")
    if cap:
        train = train.iloc[:int(cap)]
    negatives = mine_negatives(train, sources, negative_pool(split),
                               n_candidates=int(mining["candidates_n"]),
                               n_hard=int(mining["n_hard"]), n_random=int(mining["n_random"]),
                               seed=seed)
    groups = build_train_groups(train, negatives, texts, titles, max_events=int(max_events))
    return train, negatives, groups


def cold_variant(examples: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Each row's context cut to its last 1, 2 or 3 item events (seeded per row): cold users
    simulated from longer histories, as the benchmark's ``cold_k`` rows are."""
    from recdata import truncate_history

    cut = np.random.default_rng(seed).integers(1, 4, size=len(examples))
    parts = [truncate_history(examples.iloc[np.flatnonzero(cut == k)], int(k)) for k in (1, 2, 3)]
    return pd.concat(parts).loc[examples.index]


def score_rows(model: Any, reranker: Any, policy: Any, examples: pd.DataFrame,
               catalogue: pd.DataFrame, top_n: int) -> Any:
    """``rerank.evaluate.EvalRows`` of ``examples``: the towers' top-N, their scores, the
    cross-encoder's scores (only where the target was retrieved), segments and labels."""
    from rerank.evaluate import EvalRows

    texts = dict(zip(catalogue["item_id"], catalogue["text"]))
    titles = dict(zip(catalogue["item_id"], catalogue["title"]))
    segment_of = dict(zip(catalogue["item_id"], catalogue["segment"]))
    ids, scores = retrieve_candidates(model, examples, top_n, with_scores=True)
    rows = EvalRows()
    to_score = []
    for n, (cands, retr, target, items, types, queries, tseg) in enumerate(zip(
            ids, scores, examples["target"].astype(str), examples["hist_items"],
            examples["hist_types"], examples["hist_queries"], examples["target_segment"])):
        pos = cands.index(target) if target in cands else -1
        rows.retrieval.append(np.asarray(retr, dtype=np.float64))
        rows.segments.append([segment_of[c] for c in cands])
        rows.positive.append(pos)
        rows.rerank.append(None)
        n_items = sum(t != "search" for t in types)
        rows.user_group.append("cold" if policy.is_cold(n_items) else "warm")
        rows.target_segment.append("new" if tseg == "new" else str(tseg))
        if pos >= 0:
            context = reranker.context_text(list(items), list(types), list(queries), titles)
            to_score.append((n, context, [texts[c] for c in cands]))
    started = time.perf_counter()
    chunk = 16  # sessions per scoring call (batched across sessions)
    for lo in range(0, len(to_score), chunk):
        part = to_score[lo:lo + chunk]
        for (n, _, _), s in zip(part, reranker.score_groups([(c, t) for _, c, t in part])):
            rows.rerank[n] = s
    log.info("scored %d of %d rows (target retrieved) in %.1f s", len(to_score), len(rows),
             time.perf_counter() - started)
    return rows


def pair_length_stats(reranker: Any, rows: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """Untruncated (context, item) pair lengths in tokens, and the share the cap cuts."""
    lengths = np.concatenate([reranker.encoder.pair_lengths(c, t) for c, t in rows]) \
        if rows else np.zeros(0)
    if not len(lengths):
        return {}
    return {"pairs": int(len(lengths)), "max_length": reranker.max_length,
            "p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "share_cut": float((lengths > reranker.max_length).mean())}


def train_reranker_for_run(run_dir: str | Path, split: SplitData, rcfg: Mapping[str, Any],
                           seed: int, model_path: str) -> dict[str, Any]:
    """Train, export, evaluate and decide (module docstring); writes ``run_dir/reranker`` and
    ``reranker/policy.json``; returns the metrics. ``rcfg``: the ``rerank`` config (its nodes
    ``model``, ``policy``, ``mining``, ``training`` go to their consumers as they are)."""
    from engine.artifacts import ArtifactPaths, load_catalogue, save_json
    from engine.loading import policy_from_config
    from engine.state import run_stamp
    from rerank import Reranker, train_reranker
    from rerank.evaluate import decide_rules, segment_report
    from towers import load_towers

    if hasattr(rcfg, "_metadata"):  # a Hydra node: plain containers for the libraries
        from omegaconf import OmegaConf

        rcfg = OmegaConf.to_container(rcfg, resolve=True)  # type: ignore[assignment]
    model_cfg, mining = dict(rcfg["model"]), dict(rcfg["mining"])
    run_dir = Path(run_dir)
    ArtifactPaths(run_dir).check_split(split.fingerprint)  # candidates must come from this split
    model = load_towers(run_dir / "towers")
    catalogue = load_catalogue(run_dir)
    texts = dict(zip(catalogue["item_id"], catalogue["text"]))
    titles = dict(zip(catalogue["item_id"], catalogue["title"]))
    max_events = int(model_cfg["context_max_events"])
    sources = build_sources(list(mining["neg_sources"]), model, catalogue, max_events)
    started = time.perf_counter()
    train, _, groups = training_groups(split, sources, texts, titles, mining, max_events, seed)
    log.info("mined negatives for %d training sessions in %.0f s", len(groups),
             time.perf_counter() - started)
    reranker = Reranker(model_path, seed=seed, **model_cfg)
    metrics = train_reranker(reranker, groups, seed=seed, **dict(rcfg["training"]))
    reranker.save(run_dir / "reranker", stamp=run_stamp(ArtifactPaths(run_dir)))
    served = Reranker.load(run_dir / "reranker")  # what the engine will score with
    policy = policy_from_config({"rerank": {"policy": dict(rcfg["policy"])}})
    valid = split.valid
    if rcfg.get("max_valid_groups"):
        valid = valid.sample(n=min(int(rcfg["max_valid_groups"]), len(valid)),
                             random_state=seed)
    started = time.perf_counter()
    rows = score_rows(model, served, policy, valid, catalogue, policy.top_n)
    cold = score_rows(model, served, policy, cold_variant(valid, seed), catalogue, policy.top_n)
    for field in ("retrieval", "rerank", "segments", "positive", "user_group", "target_segment"):
        getattr(rows, field).extend(getattr(cold, field))
    decision = decide_rules(rows, standardize=policy.standardize, seed=seed)
    decision["validation_report"] = segment_report(rows, decision["rules"], policy.standardize,
                                                   seed=seed)
    decision["decided_on"] = {"split": "valid", "rows": len(valid),
                              "rows_by_group": {g: rows.user_group.count(g)
                                                for g in sorted(set(rows.user_group))}}
    save_json(run_dir / "reranker" / POLICY_FILE, decision)
    head = valid.iloc[:200]
    sample = [(served.context_text(list(i), list(t), list(q), titles), [texts[x] for x in ids])
              for i, t, q, ids in zip(head["hist_items"], head["hist_types"],
                                      head["hist_queries"],
                                      retrieve_candidates(model, head, policy.top_n))]
    metrics.update(train_examples=len(train), train_groups=len(groups),
                   engine=served.engine, rules=decision["rules"],
                   evaluation_seconds=round(time.perf_counter() - started, 1),
                   pair_lengths=pair_length_stats(served, sample))
    log.info("policy rules (decided on validation): %s", decision["rules"])
    return metrics
