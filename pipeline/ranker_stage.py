"""Train the ranking stage of a run: LightGBM LambdaRank over the merged candidates of the
engine's own pipeline, and the fusion baseline's weights, on data the towers did not fit.

Rows (``ranker_examples``): the validation targets (``loo``) or window (``time``), plus the
training-period rows whose target is one of the split's ``ranker_items`` — items kept out of
the towers' training, so the ranker sees targets the towers never saw, as new items will be
(docs/architecture.md: fitted on warm targets alone a fusion learned "popular = likely"
and dropped new items). Never a test row. Each row is ranked by the engine
(``Recommender.rank_resolved``, the serving path) with the session's own items allowed back,
so the ranker learns how likely a repeat is; rows whose target no source returned carry no
signal and are counted, not used.

Cut contexts (``cut_contexts``): copies of a seeded share of those rows whose history is cut
to its last k item events (``recdata.truncate_history``, the cut of the benchmark's ``cold_k``
segments), same user and target — else the ranker never sees a one-event session, and below
the towers alone there. A copy shares its user, so its user-grouped fold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.artifacts import ArtifactPaths
from recdata.schema import SplitData

log = logging.getLogger(__name__)

COLD_SEGMENTS = ("new", "unseen")


FULL = "full"  # the ``context`` of a row with its whole (capped) history


def cut_selection(n: int, share: float, seed: int) -> np.ndarray:
    """Seeded (n,) bool mask of the rows that get cut copies; nested in ``share`` (a smaller
    share's rows are among a larger one's), so settings differ only by the rows added."""
    return np.random.default_rng([seed, 1]).random(n) < float(share)


def cut_contexts(rows: pd.DataFrame, ks: Sequence[int], share: float, seed: int
                 ) -> pd.DataFrame:
    """For each k in ``ks``, copies of the ``cut_selection`` rows with more than k item
    events (fewer: the copy would be the row itself), history cut to its last k item events
    by ``recdata.truncate_history`` (the benchmark's ``cold_k`` cut); ``context`` ``cut_<k>``,
    ``source_row`` the original's index in ``rows``. User, target and origin unchanged."""
    from recdata import truncate_history

    chosen = cut_selection(len(rows), share, seed)
    n_items = rows["hist_types"].map(lambda types: sum(t != "search" for t in types))
    frames = [truncate_history(rows.loc[chosen & (n_items > int(k)).to_numpy()], int(k))
              .assign(context=f"cut_{int(k)}") for k in ks]
    frames = [f.assign(source_row=f.index) for f in frames if len(f)]
    return (pd.concat(frames, ignore_index=True) if frames
            else rows.iloc[:0].assign(context=pd.Series(dtype=str), source_row=0))


def ranker_examples(split: SplitData, max_rows: int | None, seed: int,
                    cut: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The ranker's rows: validation + ``ranker_train`` (never test), seeded sample of at most
    ``max_rows``, with ``user_segment`` and ``target_segment`` labels, ``context`` ``full``;
    then, if ``cut`` (``{"ks": [...], "share": float}``) has a share, their ``cut_contexts``."""
    frames = [split.valid.assign(origin="valid")]
    if split.ranker_train is not None and len(split.ranker_train):
        frames.append(split.ranker_train.assign(origin="ranker_items"))
    rows = pd.concat(frames, ignore_index=True)
    if max_rows is not None and len(rows) > max_rows:
        rows = rows.sample(n=int(max_rows), random_state=seed).reset_index(drop=True)
    rows = rows.assign(context=FULL, source_row=np.arange(len(rows)))
    if cut and float(cut.get("share") or 0) > 0 and cut.get("ks"):
        rows = pd.concat([rows, cut_contexts(rows, cut["ks"], cut["share"], seed)],
                         ignore_index=True)
    return rows


def candidate_rows(recommender: Any, examples: pd.DataFrame, batch_size: int = 512
                   ) -> dict[str, Any]:
    """Rank every example through the engine (repeats allowed) and collect, per example whose
    target was among its candidates, the feature rows and labels; plus per-example coverage."""
    from engine.session import sessions_from_examples

    features, labels, sizes, users, segments, used = [], [], [], [], [], []
    found = np.zeros(len(examples), dtype=bool)
    for lo in range(0, len(examples), batch_size):
        chunk = examples.iloc[lo:lo + batch_size]
        sessions = sessions_from_examples(chunk["hist_items"], chunk["hist_types"],
                                          chunk["hist_queries"])
        resolved = recommender.resolve(sessions, k=1)
        active = [j for j, r in enumerate(resolved) if r.events]
        ts = chunk["target_ts"].to_numpy(dtype=np.float64) if "target_ts" in chunk else None
        ranked, _, state, _, _ = recommender.rank_resolved(
            [resolved[j] for j in active], repeats=True,
            request_ts=None if ts is None else ts[active])
        for j, result in zip(active, ranked):
            example = chunk.iloc[j]
            target = state.row_of.get(str(example["target"]))
            label = (result.rows == target).astype(np.float32)
            if not label.any():
                continue
            found[lo + j] = True
            features.append(result.features)
            labels.append(label)
            sizes.append(len(label))
            users.append(str(example["user_id"]))
            segments.append(str(example["target_segment"]))
            used.append(lo + j)
    if not features:
        raise ValueError("no ranker example had its target among the candidates; nothing to "
                         "train on (check the candidate quotas)")
    return {"features": np.vstack(features), "labels": np.concatenate(labels),
            "sizes": np.asarray(sizes, np.int64), "users": users, "segments": segments,
            "examples": np.asarray(used, np.int64), "found": found}


def subset_rows(rows: Mapping[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """``candidate_rows`` output restricted to the groups where ``keep`` (G,) is True."""
    row_keep = np.repeat(keep, rows["sizes"])
    return {"features": rows["features"][row_keep], "labels": rows["labels"][row_keep],
            "sizes": rows["sizes"][keep], "examples": rows["examples"][keep],
            "users": [u for u, k in zip(rows["users"], keep) if k],
            "segments": [g for g, k in zip(rows["segments"], keep) if k],
            "found": rows["found"]}


def coverage(examples: pd.DataFrame, found: np.ndarray) -> dict[str, Any]:
    """Share of examples whose target was among the merged candidates, overall and by target
    and user segment and by ``context`` (full or cut history) where the examples have one
    (a ranker cannot rank what no source returns)."""
    out: dict[str, Any] = {"overall": {"count": int(len(found)), "recall": float(found.mean())}}
    for column in ("target_segment", "user_segment", "context"):
        if column not in examples.columns:
            continue
        for name, group in examples.groupby(column):
            mask = found[group.index.to_numpy()]
            out[f"{column.split('_')[0]}={name}"] = {"count": int(len(mask)),
                                                     "recall": float(mask.mean())}
    return out


def segment_objective(ndcg: np.ndarray, segments: list[str]) -> float:
    """Mean of NDCG@10 over all groups, over long-tail targets and over cold (new/unseen)
    targets: a weight chosen on warm validation targets alone drops new items
    (docs/architecture.md, Lessons)."""
    seg = np.asarray(segments)
    parts = [ndcg.mean()]
    for wanted in (("long_tail",), COLD_SEGMENTS):
        mask = np.isin(seg, wanted)
        if mask.any():
            parts.append(ndcg[mask].mean())
    return float(np.mean(parts))


VIEW_SEGMENTS: dict[str, tuple[str, ...] | None] = {
    "overall": None, "head": ("head",), "long_tail": ("long_tail",), "cold": COLD_SEGMENTS}
REFERENCE_ORDERS = {"towers": "towers_score", "bm25": "bm25_score", "zero_shot": "zero_shot_score"}


def masked(scores: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``scores`` with the session's own items other than the target sunk to -inf: the
    benchmark's headline protocol (history masked, the target stays rankable)."""
    from ranking.scorers import COLUMN

    in_session = np.nan_to_num(features[:, COLUMN["in_session_count"]]) > 0
    return np.where(in_session & (labels <= 0), -np.inf, scores)


def held_out_view(rows: Mapping[str, Any], held: np.ndarray, scores: np.ndarray
                  ) -> dict[str, Any]:
    """NDCG@10 and recall@10 on the held-out groups ``held`` (G,) of ``rows``, history masked
    and not, per target segment (overall, head, long tail, cold = new + unseen), for the
    ranker's ``scores`` (of the held rows, in order) and for the towers', BM25's and the
    zero-shot order of the same candidates (references: a source's own top 10 is always among
    the merged candidates, so its order there is its order alone). Groups whose target no
    source returned are not in ``rows``; they score 0 for every system alike. The held-out
    groups are every kind of row the stage trains on: full sessions and, with
    ``cut_contexts``, their copies cut to k item events (the benchmark's ``cold_k``), so the
    figures mix the two. ``scores`` come from the early-stopped model, whose rounds were
    chosen on these same groups (a mildly optimistic view, the same for every setting)."""
    from ranking.scorers import COLUMN, ndcg_of_positive

    row_held = np.repeat(held, rows["sizes"])
    if len(scores) != int(row_held.sum()):
        raise ValueError(f"{len(scores)} scores for the {int(row_held.sum())} rows of the "
                         "held-out groups; score exactly those rows, in order")
    features, labels = rows["features"][row_held], rows["labels"][row_held]
    sizes, segments = rows["sizes"][held], np.asarray(rows["segments"], dtype=object)[held]
    systems = {"ranker": np.asarray(scores, np.float64)} | {
        name: np.nan_to_num(features[:, COLUMN[column]].astype(np.float64), nan=-np.inf)
        for name, column in REFERENCE_ORDERS.items()}
    out: dict[str, Any] = {"groups": {name: int(len(segments) if wanted is None
                                                else np.isin(segments, wanted).sum())
                                      for name, wanted in VIEW_SEGMENTS.items()}}
    for protocol in ("masked", "unmasked"):
        out[protocol] = {}
        for system, values in systems.items():
            ndcg = ndcg_of_positive(masked(values, features, labels) if protocol == "masked"
                                    else values, labels, sizes)
            out[protocol][system] = {
                name: {"ndcg_at_10": float(ndcg[m].mean()) if m.any() else None,
                       "recall_at_10": float((ndcg[m] > 0).mean()) if m.any() else None}
                for name, wanted in VIEW_SEGMENTS.items()
                for m in [np.ones(len(ndcg), bool) if wanted is None
                          else np.isin(segments, wanted)]}
    return out


def group_weights(segments: Sequence[str], weights: Mapping[str, float] | None
                  ) -> np.ndarray | None:
    """Each group's weight in the LambdaRank objective by its target's segment
    (``ranking.segment_weights``; a segment not named weighs 1); None when all are 1."""
    if not weights:
        return None
    if not isinstance(weights, Mapping):
        raise ValueError(f"ranking.segment_weights must map segments to weights, e.g. "
                         f"{{long_tail: 2.5, unseen: 2}}; got {weights!r}")
    from recdata import TARGET_SEGMENTS

    unknown = sorted(set(weights) - set(TARGET_SEGMENTS))
    if unknown:
        raise ValueError(f"ranking.segment_weights: unknown segments {unknown}; expected some "
                         f"of {', '.join(TARGET_SEGMENTS)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
               for v in weights.values()):
        raise ValueError(f"ranking.segment_weights must be numbers > 0, got {dict(weights)}")
    out = np.array([float(weights.get(segment, 1.0)) for segment in segments])
    return None if np.all(out == 1.0) else out


def tune_fusion(rows: dict[str, Any]) -> dict[str, Any]:
    """The fusion weights (ranking.scorers.fusion_grid) that maximise ``segment_objective``."""
    from ranking.scorers import COLUMN, FUSION_SIGNALS, fusion_grid, ndcg_of_positive, zscore

    features, labels, sizes = rows["features"], rows["labels"], rows["sizes"]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    z = np.zeros((len(labels), len(FUSION_SIGNALS)))
    for g in range(len(sizes)):
        lo, hi = starts[g], starts[g + 1]
        for j, name in enumerate(FUSION_SIGNALS):
            z[lo:hi, j] = zscore(features[lo:hi, COLUMN[name]])
    best, table = None, []
    for weights in fusion_grid():
        scores = z @ np.array([weights[name] for name in FUSION_SIGNALS])
        value = segment_objective(ndcg_of_positive(scores, labels, sizes), rows["segments"])
        table.append((value, weights))
        if best is None or value > best[0] + 1e-12:
            best = (value, weights)
    assert best is not None
    return {"weights": best[1], "objective": best[0], "grid_size": len(table)}


ABLATION_FEATURES: dict[str, tuple[str, ...]] = {  # what "without a source" removes
    "towers": ("towers_rank", "towers_score", "towers_gap", "towers_sim_last"),
    "bm25": ("bm25_rank", "bm25_score", "bm25_gap", "query_bm25"),
    "zero_shot": ("zero_shot_rank", "zero_shot_score", "zero_shot_gap", "zs_sim_last",
                  "zs_sim_max"),
    "popularity": ("popularity_rank",), "fresh": ("fresh_rank",), "session": ("session_rank",),
}


def ranker_recommender(paths: ArtifactPaths, split: SplitData, cfg: Mapping[str, Any],
                       drop_sources: tuple[str, ...] = ()) -> tuple[Any, dict[str, int],
                                                                    tuple[str, ...]]:
    """The engine that ranks the ranker's rows (towers order, ``cfg`` quotas less
    ``drop_sources``), its quotas and the features those sources hide. Builds the index and
    the ranking parts first when the run lacks them."""
    from engine.recommender import Recommender
    from pipeline.index_stage import ensure_index

    paths.check_split(split.fingerprint)  # candidates and labels must come from this split
    ensure_index(paths)
    unknown = sorted(set(drop_sources) - set(ABLATION_FEATURES))
    if unknown:
        raise ValueError(f"drop_sources: unknown {unknown}; choose from {list(ABLATION_FEATURES)}")
    quotas = {k: 0 if k in drop_sources else int(v) for k, v in dict(cfg["quotas"]).items()}
    hidden = tuple(f for source in drop_sources for f in ABLATION_FEATURES[source])
    recommender = Recommender.from_artifacts(
        paths.root, rerank=False, scorer="towers",
        candidates={"quotas": quotas, "size": int(cfg["size"])})
    if recommender.ranking_parts is None:
        raise ValueError(f"{paths.root} has no bm25/ or zeroshot/ after building them")
    return recommender, quotas, hidden


def train_ranker_for_run(run_dir: str | Path, split: SplitData, cfg: Mapping[str, Any],
                         seed: int, drop_sources: tuple[str, ...] = (),
                         out_dir: str | Path | None = None) -> dict[str, Any]:
    """Train and save ``run_dir/ranker`` (LightGBM model + ranker.json); returns its metrics.
    Builds the index and the ranking parts first when the run lacks them. ``drop_sources``
    (an ablation) retrieves nothing from those sources and hides their features; the result
    then goes to ``out_dir``."""
    from ranking import FEATURES, FEATURES_VERSION, LightGBMRanker
    from ranking.scorers import train_lambdarank

    paths = ArtifactPaths(run_dir)
    weights = cfg.get("segment_weights") or {}
    group_weights((), weights)  # a bad setting stops before the candidates are collected
    weights = dict(weights)
    started = time.perf_counter()
    recommender, quotas, hidden = ranker_recommender(paths, split, cfg, drop_sources)
    cut = dict(cfg.get("cut_contexts") or {})
    examples = ranker_examples(split, cfg.get("max_rows"), seed, cut=cut)
    rows = candidate_rows(recommender, examples)
    collect_s = time.perf_counter() - started
    contexts = examples["context"].to_numpy()[rows["examples"]]
    booster, info = train_lambdarank(rows["features"], rows["labels"], rows["sizes"],
                                     rows["users"], dict(cfg["lightgbm"]), seed,
                                     feature_mask=hidden, group_kinds=contexts,
                                     group_weights=group_weights(rows["segments"], weights),
                                     keep_held_scores=True)
    info["held_out_view"] = held_out_view(rows, info.pop("held_out_groups_mask"),
                                          info.pop("held_out_scores"))
    fusion = tune_fusion(subset_rows(rows, contexts == FULL))  # the fusion baseline as before
    gains = booster.feature_importance(importance_type="gain")
    meta = {
        "features": list(FEATURES), "features_version": FEATURES_VERSION,
        "lightgbm_version": __import__("lightgbm").__version__, **info,
        "candidates": {"quotas": quotas, "size": int(cfg["size"])},
        "fusion": fusion, "examples": {
            "rows": int(len(examples)), "groups_used": int(len(rows["sizes"])),
            "by_origin": examples["origin"].value_counts().to_dict(),
            "by_context": examples["context"].value_counts().to_dict(),
            "groups_used_by_context": pd.Series(contexts).value_counts().to_dict(),
            "by_target_segment": pd.Series(rows["segments"]).value_counts().to_dict()},
        "cut_contexts": {"ks": [int(k) for k in cut.get("ks") or []],
                         "share": float(cut.get("share") or 0.0)},
        "segment_weights": {k: float(v) for k, v in weights.items()},
        "candidate_recall": coverage(examples, rows["found"]),
        "importance_gain": {f: float(g) for f, g in sorted(
            zip(FEATURES, gains), key=lambda pair: -pair[1])},
        "split_fingerprint": split.fingerprint, "run": paths.run, "seed": seed,
        "drop_sources": list(drop_sources),
        "collect_seconds": round(collect_s, 1),
        "train_seconds": round(time.perf_counter() - started - collect_s, 1)}
    from engine.state import run_stamp

    save_ranker(LightGBMRanker(booster, meta), Path(out_dir) if out_dir else
                paths.root / "ranker", stamp=run_stamp(paths))
    return {k: meta[k] for k in ("best_round", "held_out_ndcg_at_10", "held_out_by_kind",
                                 "held_out_view", "segment_weights",
                                 "examples", "candidate_recall", "collect_seconds",
                                 "train_seconds")} | {
        "fusion_weights": fusion["weights"]}


def save_ranker(ranker: Any, target: Path, stamp: Mapping[str, Any] | None = None) -> Path:
    """Write the ranker atomically (``storage.write_dir``), with the run ``stamp``
    (``run.json``) it was trained on."""
    from storage import write_dir

    return write_dir(target, ranker.save, stamp=dict(stamp) if stamp is not None else None)
