"""The ranking stage inside the engine: builds ``ranking.RankingPipeline`` from the run's loaded
parts, turns resolved sessions into a ``ranking.SessionBatch``, and words each result's reason
from its deciding signal.

Scorers (``scorer=``): ``auto`` (the trained ranker when the run has one, else the towers'
order), ``ranker``, ``fusion`` (the convex baseline tuned with the ranker), ``towers``. A run
without ``bm25/`` and ``zeroshot/`` ranks the towers' candidates by the towers' score, as
before the ranking stage.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.errors import ArtifactsError
from engine.resolve import ResolvedSession
from ranking import (
    BM25Source,
    FreshSource,
    Fusion,
    PopularitySource,
    RankingPipeline,
    SessionBatch,
    SessionSource,
    TowersOrder,
    TowersSource,
    ZeroShotSource,
)
from ranking.pipeline import DEFAULT_QUOTAS, DEFAULT_SIZE
from recdata.text import item_text

SCORERS: tuple[str, ...] = ("auto", "ranker", "fusion", "towers")
TEXT_CACHE_ITEMS = 2048  # zero-shot vectors of recent queries / inline items kept in memory


class TextVectors:
    """An LRU cache in front of the zero-shot encoder (queries repeat; BERT passes do not)."""

    def __init__(self, encode: Any, size: int = TEXT_CACHE_ITEMS) -> None:
        self._encode, self._size = encode, size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            hits = {t: self._cache[t] for t in texts if t in self._cache}
            for text in hits:
                self._cache.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in hits]
        if missing:
            fresh = self._encode(missing)
            with self._lock:
                for text, vec in zip(missing, fresh):
                    hits[text] = self._cache[text] = vec
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
        return np.stack([hits[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


def build_pipeline(towers_index: Any, parts: Any, scorer: str,
                   text_vectors: TextVectors | None,
                   candidates: Mapping[str, Any] | None = None) -> RankingPipeline:
    """The pipeline over the run's parts (``pipeline.ranking_parts.RankingParts`` or None);
    ``candidates`` (``{"quotas": {source: n}, "size": n}``) overrides the ranker's own."""
    if scorer not in SCORERS:
        raise ArtifactsError(f"scorer= must be one of {list(SCORERS)}, got {scorer!r}")
    if parts is None:
        if scorer not in ("auto", "towers"):
            raise ArtifactsError(f"scorer={scorer!r} needs the ranking stage's parts (bm25/, "
                                 "zeroshot/, ranker/); build them with build_index.py and "
                                 "`python train.py stage=ranker`")
        return RankingPipeline({"towers": TowersSource(towers_index)},
                               quotas={"towers": DEFAULT_SIZE}, size=DEFAULT_SIZE)
    sources = {"towers": TowersSource(towers_index), "bm25": BM25Source(parts.bm25),
               "zero_shot": ZeroShotSource(parts.zero_shot, text_vectors),
               "popularity": PopularitySource(), "fresh": FreshSource(),
               "session": SessionSource()}
    if scorer in ("auto", "ranker") and parts.scorer is not None:
        chosen: Any = parts.scorer
    elif scorer == "ranker":
        raise ArtifactsError("scorer='ranker' but the run has no ranker/; train it with "
                             "`python train.py stage=ranker`")
    elif scorer == "fusion":
        if not parts.fusion:
            raise ArtifactsError("scorer='fusion' needs the weights tuned by the ranker stage "
                                 "(ranker/ranker.json); train it with `python train.py "
                                 "stage=ranker`")
        chosen = Fusion(parts.fusion)
    else:
        chosen = TowersOrder()
    config = dict(candidates or parts.config or {})
    return RankingPipeline(sources, chosen, quotas=config.get("quotas", DEFAULT_QUOTAS),
                           size=int(config.get("size", DEFAULT_SIZE)), bm25=parts.bm25)


def session_batch(resolved: Sequence[ResolvedSession], user_emb: np.ndarray,
                  in_catalogue: Mapping[str, Any], repeats: bool) -> SessionBatch:
    """Resolved sessions -> a ``SessionBatch``: catalogue items by id, inline items by their
    text, searches by their query; history excluded unless ``repeats``."""
    items, texts = [], []
    for r in resolved:
        row_items, row_texts = [], []
        for event, item_id in zip(r.events, r.hist_items):
            inline = item_id is not None and item_id.startswith("inline:")
            row_items.append(None if item_id is None or inline or item_id not in in_catalogue
                             else item_id)
            row_texts.append(item_text(event.item) if inline else None)
        items.append(row_items)
        texts.append(row_texts)
    exclude = [frozenset(r.session.exclude if repeats else r.exclude) for r in resolved]
    return SessionBatch(items, [list(r.hist_types) for r in resolved],
                        [list(r.hist_queries) for r in resolved], texts, exclude, user_emb)
