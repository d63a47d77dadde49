"""The final score of each candidate: the towers' order, a fusion of normalised source scores,
or the learned ranker (LightGBM LambdaRank). Each takes one session's feature rows (m, F) in
``features.FEATURES`` order and returns (m,) scores, higher first."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ranking.features import FEATURES, FEATURES_VERSION

log = logging.getLogger(__name__)
COLUMN = {name: j for j, name in enumerate(FEATURES)}
FUSION_SIGNALS: tuple[str, ...] = ("towers_score", "zero_shot_score", "bm25_score",
                                   "log_popularity")
MODEL_FILE, META_FILE = "model.txt", "ranker.json"


class RankerError(ValueError):
    """A missing, damaged or mismatched ranker, or bad training input."""


class TowersOrder:
    """The towers' score alone (what firstclick served before the ranking stage)."""

    name = "towers"

    def score(self, features: np.ndarray) -> np.ndarray:
        scores = features[:, COLUMN["towers_score"]].astype(np.float64)
        return np.where(np.isnan(scores), -np.inf, scores)


def zscore(column: np.ndarray) -> np.ndarray:
    """Per-session z-score of one signal over the candidates; missing values take the
    session's minimum (a source's silence is its lowest vote)."""
    values = column.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(len(values))
    values = np.where(finite, values, values[finite].min())
    std = values.std()
    return (values - values.mean()) / std if std > 0 else np.zeros(len(values))


class Fusion:
    """A convex combination of the per-session z-scored source scores (towers, zero-shot, BM25,
    log popularity), weights tuned on validation (``tune_fusion``); no learning beyond that.
    A lexical + dense fusion after Bruch et al. (arXiv 2210.11934)."""

    name = "fusion"

    def __init__(self, weights: Mapping[str, float]) -> None:
        unknown = sorted(set(weights) - set(FUSION_SIGNALS))
        if unknown:
            raise RankerError(f"fusion weights name unknown signals {unknown}; expected "
                              f"{list(FUSION_SIGNALS)}")
        self.weights = {k: float(v) for k, v in weights.items()}

    def score(self, features: np.ndarray) -> np.ndarray:
        out = np.zeros(len(features))
        for name, weight in self.weights.items():
            if weight:
                out += weight * zscore(features[:, COLUMN[name]])
        return out


def fusion_grid(step: float = 0.1) -> list[dict[str, float]]:
    """Convex weights over FUSION_SIGNALS on a grid (towers weight > 0)."""
    ticks = np.round(np.arange(0.0, 1.0 + 1e-9, step), 6)
    grid = []
    for w_zs in ticks:
        for w_bm25 in ticks:
            for w_pop in ticks[ticks <= 0.3]:
                rest = round(1.0 - w_zs - w_bm25 - w_pop, 6)
                if rest > 0:
                    grid.append({"towers_score": rest, "zero_shot_score": float(w_zs),
                                 "bm25_score": float(w_bm25), "log_popularity": float(w_pop)})
    return grid


class LightGBMRanker:
    """A LightGBM booster trained with a LambdaRank objective over ``FEATURES``."""

    name = "ranker"

    def __init__(self, booster: Any, meta: Mapping[str, Any]) -> None:
        self.booster, self.meta = booster, dict(meta)

    def score(self, features: np.ndarray) -> np.ndarray:
        if not len(features):
            return np.zeros(0)
        return self.booster.predict(features, num_threads=1)

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """(m, F) per-feature contributions (SHAP values, LightGBM ``pred_contrib``)."""
        return self.booster.predict(features, pred_contrib=True, num_threads=1)[:, :-1]

    def save(self, directory: str | Path) -> Path:
        """Write LightGBM's own model file and ``ranker.json`` (features, version, training
        figures) into ``directory`` (a fresh folder the caller publishes atomically)."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(target / MODEL_FILE))
        (target / META_FILE).write_text(json.dumps(self.meta, indent=1, default=float))
        return target

    @classmethod
    def load(cls, directory: str | Path) -> LightGBMRanker:
        import lightgbm

        source = Path(directory)
        try:
            meta = json.loads((source / META_FILE).read_text())
            booster = lightgbm.Booster(model_file=str(source / MODEL_FILE))
        except (OSError, ValueError, lightgbm.basic.LightGBMError) as err:
            raise RankerError(f"{source} holds no readable ranker ({type(err).__name__}: "
                              f"{err}); retrain it with `python train.py stage=ranker`") from None
        if meta.get("features_version") != FEATURES_VERSION or meta.get("features") != list(
                FEATURES):
            raise RankerError(f"{source}/{META_FILE} was trained on features version "
                              f"{meta.get('features_version')!r}; this code computes version "
                              f"{FEATURES_VERSION}; retrain it with `python train.py "
                              "stage=ranker`")
        return cls(booster, meta)


def group_split(users: Sequence[str], share: float, seed: int) -> np.ndarray:
    """A seeded boolean mask over groups: True for the ``share`` of *users* held out (every
    group of a held-out user), so a user's sessions never sit on both sides."""
    unique = np.array(sorted(set(users)), dtype=object)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(unique, max(1, int(round(share * len(unique)))), replace=False))
    return np.array([u in held for u in users])


def ndcg_of_positive(scores: np.ndarray, labels: np.ndarray, sizes: np.ndarray,
                     k: int = 10) -> np.ndarray:
    """Per group, NDCG@k of its single positive under ``scores``; only strictly higher scores
    rank above it, so ties go in the positive's favour (e.g. a BM25 score of 0 shared with
    every other unmatched candidate)."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos_score = np.repeat(scores[labels > 0], sizes)
    above = np.add.reduceat((scores > pos_score).astype(np.int64), starts)  # 0-based rank
    return np.where(above < k, 1.0 / np.log2(above + 2.0), 0.0)


def train_lambdarank(features: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray,
                     group_users: Sequence[str], params: Mapping[str, Any], seed: int,
                     valid_share: float = 0.2, feature_mask: Sequence[str] = (),
                     group_kinds: Sequence[str] | None = None,
                     score_only: np.ndarray | None = None,
                     group_weights: np.ndarray | None = None,
                     keep_held_scores: bool = False, refit: bool = True
                     ) -> tuple[Any, dict[str, Any]]:
    """LambdaRank on (features (N, F), labels (N,), group_sizes (G,)): early stopping on a
    user-grouped ``valid_share`` of the groups (the held-out fold: every group of a held-out
    user), then a refit on every group with the best number of rounds. ``feature_mask`` names
    features left out (set to NaN: ablations). ``group_kinds`` (G,) labels each group (e.g.
    full history or cut); the info then holds the held-out NDCG@10 of the early-stopped model
    per kind. ``score_only`` (G,) bool marks groups never fitted nor used for early stopping,
    only scored in those per-kind figures when their user is held out (validation of the
    training rows themselves: every setting scored on the same held-out rows).
    ``group_weights`` (G,) weighs each group in the objective and in the early-stopping
    NDCG (LightGBM's query weights: the mean of a group's row weights), e.g. by target
    segment. ``keep_held_scores`` adds ``held_out_groups_mask`` (G,) and ``held_out_scores``
    (the early-stopped model's scores of those groups' rows) to the info — arrays, for the
    caller's own held-out figures, not for saving. ``refit=False`` returns the early-stopped
    model instead of refitting on every group (validation sweeps).
    Returns (booster, info with the held-out NDCG@10 curve and the best round)."""
    import lightgbm

    if len(group_sizes) != len(group_users) or group_sizes.sum() != len(labels):
        raise RankerError(f"{len(group_sizes)} groups of {group_sizes.sum()} rows for "
                          f"{len(labels)} labels and {len(group_users)} users; they must agree")
    features = features.copy()
    for name in feature_mask:
        features[:, COLUMN[name]] = np.nan
    scored = group_split(group_users, valid_share, seed)  # the held-out users' groups
    used = np.ones(len(group_sizes), bool) if score_only is None else ~np.asarray(score_only)
    held = scored & used
    row_held, row_used = np.repeat(held, group_sizes), np.repeat(used, group_sizes)
    fit_rows = row_used & ~row_held
    if group_weights is not None and len(group_weights) != len(group_sizes):
        raise RankerError(f"{len(group_weights)} group weights for {len(group_sizes)} groups; "
                          "give one weight per group")
    row_weight = (None if group_weights is None
                  else np.repeat(np.asarray(group_weights, np.float64), group_sizes))

    def weight(rows: np.ndarray) -> np.ndarray | None:
        return None if row_weight is None else row_weight[rows]

    base = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10],
            "verbosity": -1, "seed": seed, "deterministic": True, "num_threads": 2,
            **{k: v for k, v in params.items() if k != "num_boost_round"}}
    rounds = int(params.get("num_boost_round", 500))
    fit = lightgbm.Dataset(features[fit_rows], labels[fit_rows], group=group_sizes[used & ~held],
                           weight=weight(fit_rows), feature_name=list(FEATURES),
                           free_raw_data=False)
    valid = lightgbm.Dataset(features[row_held], labels[row_held], group=group_sizes[held],
                             weight=weight(row_held), reference=fit)
    curve: dict[str, list[float]] = {}
    booster = lightgbm.train(base, fit, num_boost_round=rounds, valid_sets=[valid],
                             valid_names=["held_out_users"],
                             callbacks=[lightgbm.early_stopping(30, verbose=False),
                                        lightgbm.record_evaluation(curve)])
    best = max(1, int(booster.best_iteration or rounds))
    held_ndcg = curve["held_out_users"]["ndcg@10"]
    info = {"best_round": best, "held_out_ndcg_at_10": float(held_ndcg[best - 1]),
            "held_out_groups": int(held.sum()), "fit_groups": int((used & ~held).sum()),
            "rows": int(row_used.sum()), "params": base, "feature_mask": list(feature_mask)}
    if group_kinds is not None or keep_held_scores:
        rows = np.repeat(scored, group_sizes)
        held_scores = booster.predict(features[rows], num_iteration=best)
    if keep_held_scores:
        info["held_out_groups_mask"], info["held_out_scores"] = scored, held_scores
    if group_kinds is not None:
        kinds = np.asarray(group_kinds, dtype=object)
        ndcg = ndcg_of_positive(held_scores, labels[rows], group_sizes[scored])
        info["held_out_by_kind"] = {
            str(kind): {"groups": int((kinds[scored] == kind).sum()),
                        "ndcg_at_10": float(ndcg[kinds[scored] == kind].mean())}
            for kind in sorted(set(kinds[scored]))}
    if not refit:
        return booster, info
    full = lightgbm.Dataset(features[row_used], labels[row_used], group=group_sizes[used],
                            weight=weight(row_used), feature_name=list(FEATURES))
    final = lightgbm.train(base, full, num_boost_round=best)
    return final, info
