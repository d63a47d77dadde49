"""ranking: the ranking stage — candidate sources (towers, BM25, zero-shot text, popularity,
fresh items, the session's own items), their merge, per-candidate features, and the scorers
(the towers' order, a fusion baseline, the LightGBM LambdaRank ranker)."""

from __future__ import annotations

from ranking.bm25 import BM25Error, BM25Index
from ranking.features import FEATURES, FEATURES_VERSION, SIGNAL_OF
from ranking.pipeline import DEFAULT_QUOTAS, DEFAULT_SIZE, RankedSession, RankingPipeline
from ranking.scorers import Fusion, LightGBMRanker, RankerError, TowersOrder
from ranking.session import SessionBatch
from ranking.sources import (
    BM25Source,
    FreshSource,
    PopularitySource,
    SessionSource,
    TowersSource,
    ZeroShotSource,
)

__all__ = [
    "BM25Error", "BM25Index", "BM25Source", "DEFAULT_QUOTAS", "DEFAULT_SIZE", "FEATURES",
    "FEATURES_VERSION", "FreshSource", "Fusion", "LightGBMRanker", "PopularitySource",
    "RankedSession", "RankerError", "RankingPipeline", "SIGNAL_OF", "SessionBatch",
    "SessionSource", "TowersOrder", "TowersSource", "ZeroShotSource",
]
