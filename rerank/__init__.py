"""Cross-encoder reranking: session text, candidate sources and negatives, model (torch / ONNX
Runtime, int8), listwise training, evaluation with confidence intervals, policy and blending.

Import direction: sentence-transformers, torch, onnxruntime, numpy, pandas, recdata; never
towers/ or index/.
"""

from __future__ import annotations

from rerank.model import Reranker, quantize_int8, truncate_layers
from rerank.pairs import (
    CandidateSource,
    RerankError,
    build_groups,
    build_train_groups,
    mine_negatives,
    session_context_text,
)
from rerank.policy import RerankPolicy, standardize_scores
from rerank.train import InGroupSoftmaxLoss, evaluate_groups, rank_metrics, train_reranker

__all__ = [
    "CandidateSource",
    "InGroupSoftmaxLoss",
    "RerankError",
    "RerankPolicy",
    "Reranker",
    "build_groups",
    "build_train_groups",
    "evaluate_groups",
    "mine_negatives",
    "quantize_int8",
    "rank_metrics",
    "session_context_text",
    "standardize_scores",
    "train_reranker",
    "truncate_layers",
]
