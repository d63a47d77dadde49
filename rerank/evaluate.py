"""Does the cross-encoder beat the retriever's order, where, and how sure are we?

Every evaluation row is one session with the retriever's top-N candidates (best first), their
retrieval scores, the cross-encoder's scores and each candidate's item segment, plus the
index of the true next item among them (-1 when the retriever missed it: reranking cannot
help, and the row counts 0 for every system, so means are over the *full* set of rows).

* :func:`lift` -- paired bootstrap over rows of NDCG@10 (reranked minus retriever's order):
  mean difference and relative lift with percentile confidence intervals.
* :func:`decide_rules` -- for each user group (cold / warm), which candidates to re-score and
  with what blend weight, chosen on validation; the group is switched on only when the
  lift's confidence interval lies above zero. The blend weight is cross-fitted (chosen on one
  half of the rows, measured on the other), so the interval is not inflated by the choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rerank.policy import ITEM_SEGMENTS, RerankPolicy
from rerank.train import rank_metrics

ALPHAS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
# what a group may re-score: every top-N candidate, or only the long-tail and new ones
RULE_SEGMENTS: dict[str, tuple[str, ...]] = {"all": ITEM_SEGMENTS,
                                             "tail_new": ("long_tail", "new")}


@dataclass
class EvalRows:
    """Scored evaluation rows (see the module docstring); one entry per row in each list."""

    retrieval: list[np.ndarray] = field(default_factory=list)  # (N,) each
    rerank: list[np.ndarray | None] = field(default_factory=list)  # (N,) or None if missed
    segments: list[list[str]] = field(default_factory=list)  # candidate item segments
    positive: list[int] = field(default_factory=list)
    user_group: list[str] = field(default_factory=list)  # cold | warm
    target_segment: list[str] = field(default_factory=list)  # head | long_tail | new

    def __len__(self) -> int:
        return len(self.positive)

    def subset(self, keep: Sequence[bool] | np.ndarray) -> EvalRows:
        idx = np.flatnonzero(np.asarray(keep, dtype=bool))
        return EvalRows(*[[getattr(self, f)[i] for i in idx] for f in (
            "retrieval", "rerank", "segments", "positive", "user_group", "target_segment")])


def ndcg_per_row(rows: EvalRows, alpha: float | None, rerank_segments: Sequence[str],
                 standardize: str = "zscore", k: int = 10) -> np.ndarray:
    """NDCG@k per row after re-scoring the candidates in ``rerank_segments`` and blending with
    ``alpha`` (RerankPolicy's own blend); ``alpha=None`` is the retriever's order."""
    policy = RerankPolicy(blend_alpha=alpha or 0.0, standardize=standardize)
    wanted = set(rerank_segments)
    out = np.zeros(len(rows))
    for i, (retr, rr, segs, pos) in enumerate(zip(rows.retrieval, rows.rerank, rows.segments,
                                                  rows.positive)):
        if pos < 0:
            continue
        if alpha is None or rr is None:
            out[i] = rank_metrics(-np.arange(len(retr), dtype=np.float64), pos, k)[0]
            continue
        selected = np.array([s in wanted for s in segs], dtype=bool)
        out[i] = rank_metrics(policy.blend(retr, rr, selected), pos, k)[0]
    return out


def lift(base: np.ndarray, new: np.ndarray, n_boot: int = 1000, level: float = 0.95,
         seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of ``new - base`` (per-row metric arrays of one length): means, the
    mean difference and the relative lift ``mean(new) / mean(base) - 1``, each difference with
    its percentile confidence interval at ``level``."""
    base, new = np.asarray(base, dtype=np.float64), np.asarray(new, dtype=np.float64)
    n = len(base)
    out: dict[str, Any] = {"n": n, "base": float(base.mean()) if n else float("nan"),
                           "new": float(new.mean()) if n else float("nan")}
    if n == 0:
        return out | {"delta": float("nan"), "delta_ci": [float("nan")] * 2,
                      "rel_lift": float("nan"), "rel_lift_ci": [float("nan")] * 2}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n)
    base_means, new_means = base[idx].mean(axis=1), new[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    deltas = new_means - base_means
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(base_means > 0, new_means / base_means - 1.0, np.nan)
    base_mean = float(base.mean())
    rel_ci = ([float(np.nanpercentile(rel, tail)), float(np.nanpercentile(rel, 100 - tail))]
              if np.isfinite(rel).any() else [float("nan")] * 2)
    return out | {
        "delta": float(new.mean() - base_mean),
        "delta_ci": [float(np.percentile(deltas, tail)), float(np.percentile(deltas, 100 - tail))],
        "rel_lift": float(new.mean() / base_mean - 1.0) if base_mean > 0 else float("nan"),
        "rel_lift_ci": rel_ci,
        "level": level}


def _best_alpha(rows: EvalRows, segments: Sequence[str], alphas: Sequence[float],
                standardize: str) -> float:
    means = {a: ndcg_per_row(rows, a, segments, standardize).mean() for a in alphas}
    return max(alphas, key=lambda a: (round(float(means[a]), 9), -a))  # ties: smaller weight


def cross_fitted(rows: EvalRows, segments: Sequence[str], alphas: Sequence[float],
                 standardize: str, seed: int) -> tuple[np.ndarray, list[float]]:
    """Per-row NDCG@10 where each half's blend weight was chosen on the other half."""
    fold = np.random.default_rng(seed).integers(0, 2, size=len(rows))
    out, chosen = np.zeros(len(rows)), []
    for f in (0, 1):
        alpha = _best_alpha(rows.subset(fold != f), segments, alphas, standardize)
        chosen.append(alpha)
        out[fold == f] = ndcg_per_row(rows.subset(fold == f), alpha, segments, standardize)
    return out, chosen


def decide_rules(rows: EvalRows, alphas: Sequence[float] = ALPHAS, standardize: str = "zscore",
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 options: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Per user group: the re-scoring rule with the highest lower confidence bound of the
    cross-fitted NDCG@10 lift over the retriever's order; ``enabled`` only if that bound is
    above zero. Returns ``{"rules": {group: rule}, "evidence": {group: {option: lift}}}``,
    ``rules`` in :class:`~rerank.policy.RerankPolicy`'s format."""
    options = options or {"cold": ("all",), "warm": ("tail_new", "all")}
    rules: dict[str, Any] = {}
    evidence: dict[str, Any] = {}
    for group, names in options.items():
        sub = rows.subset([g == group for g in rows.user_group])
        if not len(sub):
            continue
        base = ndcg_per_row(sub, None, ())
        evidence[group] = {}
        best = None
        for name in names:
            segments = RULE_SEGMENTS[name]
            fitted, fold_alphas = cross_fitted(sub, segments, alphas, standardize, seed)
            stats = lift(base, fitted, n_boot, level, seed) | {"fold_alphas": fold_alphas}
            evidence[group][name] = stats
            if best is None or stats["delta_ci"][0] > evidence[group][best]["delta_ci"][0]:
                best = name
        stats = evidence[group][best]
        alpha = _best_alpha(sub, RULE_SEGMENTS[best], alphas, standardize)
        rules[group] = {"enabled": bool(stats["delta_ci"][0] > 0), "blend_alpha": alpha,
                        "rerank_segments": list(RULE_SEGMENTS[best]), "rule": best}
    return {"rules": rules, "evidence": evidence, "alphas": list(alphas), "level": level,
            "n_boot": n_boot}


def segment_report(rows: EvalRows, rules: Mapping[str, Mapping[str, Any]],
                   standardize: str = "zscore", n_boot: int = 1000, seed: int = 0
                   ) -> dict[str, Any]:
    """NDCG@10 of the retriever's order vs the cross-encoder alone (every candidate re-scored,
    alpha 1) vs the policy (``rules``), with bootstrap CIs: per user group, and per target
    segment (head, long_tail, new) within each group. Reporting only: nothing is chosen here."""
    report: dict[str, Any] = {}
    for group in sorted(set(rows.user_group)):
        in_group = np.array([g == group for g in rows.user_group])
        rule = rules.get(group, {"enabled": False})
        base_all = ndcg_per_row(rows, None, ())
        alone_all = ndcg_per_row(rows, 1.0, ITEM_SEGMENTS, standardize)
        policy_all = (ndcg_per_row(rows, rule["blend_alpha"], rule["rerank_segments"],
                                   standardize) if rule.get("enabled") else base_all)
        for segment in ("all", *ITEM_SEGMENTS):
            keep = in_group if segment == "all" else in_group & np.array(
                [t == segment for t in rows.target_segment])
            if not keep.any():
                continue
            report[f"{group}/{segment}"] = {
                "cross_encoder_alone": lift(base_all[keep], alone_all[keep], n_boot, seed=seed),
                "policy": lift(base_all[keep], policy_all[keep], n_boot, seed=seed),
                "policy_enabled": bool(rule.get("enabled"))}
    return report
