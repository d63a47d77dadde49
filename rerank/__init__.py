"""Cross-encoder reranking: session text, training pairs, model, policy and blending, training.

Import direction: sentence-transformers, torch, numpy, pandas, recdata; never towers/ or index/.
"""

from __future__ import annotations

from rerank.model import Reranker, quantize_int8, truncate_layers
from rerank.pairs import RerankError, build_groups, build_pairs, session_context_text
from rerank.policy import RerankPolicy, standardize_scores
from rerank.train import PointwiseBCELoss, evaluate_groups, rank_metrics, train_reranker

__all__ = [
    "PointwiseBCELoss",
    "RerankError",
    "RerankPolicy",
    "Reranker",
    "build_groups",
    "build_pairs",
    "evaluate_groups",
    "quantize_int8",
    "rank_metrics",
    "session_context_text",
    "standardize_scores",
    "train_reranker",
    "truncate_layers",
]
