"""Full-catalogue ranking evaluation: metrics, and segment-wise evaluation of any retriever.

Protocol (docs/architecture.md): an example ranks the whole catalogue, never sampled negatives; one
relevant item per example; 0-based ranks with ties broken by lower item index; the user's history
is masked by default (the target stays rankable) and the unmasked figures are reported beside it.
"""

from __future__ import annotations

from evaluation.evaluator import RankingEvaluator, evaluate_retriever
from evaluation.metrics import (
    NOT_RETRIEVED,
    EvaluationError,
    coverage,
    long_tail_share,
    metrics_from_ranks,
    target_ranks,
    topk_indices,
)

__all__ = [
    "NOT_RETRIEVED",
    "EvaluationError",
    "RankingEvaluator",
    "coverage",
    "evaluate_retriever",
    "long_tail_share",
    "metrics_from_ranks",
    "target_ranks",
    "topk_indices",
]
