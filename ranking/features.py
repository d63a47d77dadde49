"""Per (session, candidate) features of the ranking stage, one float32 row per candidate.

NaN means "missing" (LightGBM learns a branch for it): a source that did not return the item,
a session without a search, an item without a brand. ``FEATURES`` is the column order; its
``FEATURES_VERSION`` is saved with a trained ranker, which refuses another version.

- per source: its score of the candidate (every candidate gets the towers', zero-shot and BM25
  scores), the gap to the session's best candidate on that score, and the candidate's rank in
  that source's own list (NaN when the source did not return it);
- item: log training popularity, segment (0 head, 1 long tail, 2 no training interaction),
  age in days at request time;
- user: item events, searches, segment (0 new, 1 cold, 2 warm);
- repeats: how often the item occurs in the session, events since its last occurrence;
- overlap with the session's items: share with the same category path, longest shared
  category prefix (share of levels), share with the same brand;
- similarity to the session: zero-shot cosine to the last item event and the max over the
  session's events, the towers' item-item cosine to the last item event;
- query match: BM25 of the candidate against the session's latest search query alone;
- the cross-encoder's score where the rerank policy computed one (else NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES_VERSION = 1
SCORED_SOURCES: tuple[str, ...] = ("towers", "zero_shot", "bm25")
RANKED_SOURCES: tuple[str, ...] = ("towers", "zero_shot", "bm25", "popularity", "fresh",
                                   "session")
FEATURES: tuple[str, ...] = (
    *(f"{s}_score" for s in SCORED_SOURCES), *(f"{s}_gap" for s in SCORED_SOURCES),
    *(f"{s}_rank" for s in RANKED_SOURCES),
    "log_popularity", "item_segment", "item_age_days",
    "n_item_events", "n_searches", "user_segment",
    "in_session_count", "in_session_since",
    "same_category_share", "category_prefix", "same_brand_share",
    "zs_sim_last", "zs_sim_max", "towers_sim_last",
    "query_bm25", "cross_encoder",
)
# the signal each feature belongs to, for "because" (the deciding signal) and ablations
SIGNAL_OF: dict[str, str] = {
    **{f: "towers" for f in ("towers_score", "towers_gap", "towers_rank", "towers_sim_last")},
    **{f: "zero_shot" for f in ("zero_shot_score", "zero_shot_gap", "zero_shot_rank",
                                "zs_sim_last", "zs_sim_max")},
    **{f: "bm25" for f in ("bm25_score", "bm25_gap", "bm25_rank")},
    "query_bm25": "search", "popularity_rank": "popularity", "log_popularity": "popularity",
    "fresh_rank": "fresh", "item_age_days": "fresh", "item_segment": "popularity",
    "session_rank": "session", "in_session_count": "session", "in_session_since": "session",
    "same_category_share": "category", "category_prefix": "category",
    "same_brand_share": "brand", "cross_encoder": "cross_encoder",
    "n_item_events": "user", "n_searches": "user", "user_segment": "user",
}
SEGMENT_CODE = {"head": 0.0, "long_tail": 1.0, "new": 2.0}
DAY_S = 86400.0


def category_levels(category: object) -> tuple[str, ...]:
    """A category path as levels: split on " > " when present, else on words (the Amazon files
    join their levels with spaces, so shared word prefixes stand for shared levels)."""
    if not isinstance(category, str) or not category.strip():
        return ()
    parts = category.split(" > ") if " > " in category else category.split()
    return tuple(p.strip().lower() for p in parts if p.strip())


MAX_DEPTH = 8  # category levels compared


class ItemCodes:
    """Integer codes of each catalogue row's category path prefixes and brand (-1: none), so
    overlap features are array comparisons; built once per catalogue snapshot."""

    def __init__(self, table: object) -> None:
        categories = table.categories  # type: ignore[attr-defined]
        brands = table.brands  # type: ignore[attr-defined]
        n = len(categories)
        self.prefix = np.full((n, MAX_DEPTH), -1, np.int64)  # (n, D) code of the depth-d prefix
        self.depth = np.zeros(n, np.int64)
        codes: dict[tuple[str, ...], int] = {}
        for row, category in enumerate(categories):
            levels = category_levels(category)[:MAX_DEPTH]
            self.depth[row] = len(levels)
            for d in range(len(levels)):
                self.prefix[row, d] = codes.setdefault(levels[: d + 1], len(codes))
        self.full = np.where(self.depth > 0,
                             self.prefix[np.arange(n), np.maximum(self.depth - 1, 0)], -1)
        brand_codes: dict[str, int] = {}
        self.brand = np.array([brand_codes.setdefault(b.strip().lower(), len(brand_codes))
                               if isinstance(b, str) and b.strip() else -1 for b in brands],
                              np.int64)


@dataclass
class SessionContext:
    """What the features of one session's candidates are computed from (see ``pipeline``)."""

    rows: np.ndarray  # (m,) candidate catalogue rows
    ranks: dict[str, np.ndarray]  # source -> (m,) rank or NaN
    scores: dict[str, np.ndarray]  # SCORED_SOURCES -> (m,) score or NaN
    hist_items: list[str | None]
    hist_types: list[str]
    request_ts: float | None
    zs_events: list[np.ndarray | None] | None  # zero-shot vector of each event
    zs_items: np.ndarray | None  # (m, d) candidates' zero-shot vectors (NaN rows if missing)
    towers_last: np.ndarray | None  # (m,) towers cosine of each candidate to the last item
    query_bm25: np.ndarray | None  # (m,) BM25 against the latest query, None without one
    cross_encoder: np.ndarray | None  # (m,) or None


def session_features(ctx: SessionContext, table: object, codes: ItemCodes) -> np.ndarray:
    """(m, len(FEATURES)) float32 for one session's candidates (``codes``: the table's)."""
    m = len(ctx.rows)
    col: dict[str, np.ndarray] = {}
    for name in SCORED_SOURCES:
        score = ctx.scores.get(name, np.full(m, np.nan))
        col[f"{name}_score"] = score
        best = np.nanmax(score) if m and np.isfinite(score).any() else np.nan
        col[f"{name}_gap"] = score - best
    for name in RANKED_SOURCES:
        col[f"{name}_rank"] = ctx.ranks.get(name, np.full(m, np.nan))
    rows = ctx.rows
    popularity = table.popularity[rows].astype(np.float64)  # type: ignore[attr-defined]
    col["log_popularity"] = np.log1p(popularity)
    segments = table.segments[rows]  # type: ignore[attr-defined]
    col["item_segment"] = np.array([SEGMENT_CODE.get(s, 2.0) for s in segments])
    created = table.created[rows].astype(np.float64)  # type: ignore[attr-defined]
    col["item_age_days"] = ((ctx.request_ts - created) / DAY_S if ctx.request_ts is not None
                            else np.full(m, np.nan))
    n_items = sum(t != "search" for t in ctx.hist_types)
    col["n_item_events"] = np.full(m, float(n_items))
    col["n_searches"] = np.full(m, float(len(ctx.hist_types) - n_items))
    col["user_segment"] = np.full(m, 0.0 if n_items == 0 else 1.0 if n_items <= 3 else 2.0)
    _session_overlap(ctx, table, codes, col)
    _similarities(ctx, col)
    col["query_bm25"] = ctx.query_bm25 if ctx.query_bm25 is not None else np.full(m, np.nan)
    col["cross_encoder"] = (ctx.cross_encoder if ctx.cross_encoder is not None
                            else np.full(m, np.nan))
    return np.column_stack([col[f] for f in FEATURES]).astype(np.float32) if m else \
        np.zeros((0, len(FEATURES)), np.float32)


def _session_overlap(ctx: SessionContext, table: object, codes: ItemCodes,
                     col: dict[str, np.ndarray]) -> None:
    m = len(ctx.rows)
    row_of = table.row_of  # type: ignore[attr-defined]
    ids = table.ids[ctx.rows]  # type: ignore[attr-defined]
    positions: dict[str, list[int]] = {}
    for pos, item_id in enumerate(ctx.hist_items):
        if item_id is not None:
            positions.setdefault(item_id, []).append(pos)
    n_events = len(ctx.hist_items)
    col["in_session_count"] = np.array([float(len(positions.get(i, ()))) for i in ids])
    col["in_session_since"] = np.array([float(n_events - positions[i][-1]) if i in positions
                                        else np.nan for i in ids])
    sess = np.array([row_of[i] for i in positions if i in row_of], np.int64)
    rows = ctx.rows
    same_cat, prefix, same_brand = (np.full(m, np.nan) for _ in range(3))
    sess_full = codes.full[sess]
    sess_full = sess_full[sess_full >= 0]
    has_cat = codes.full[rows] >= 0
    if len(sess_full):
        same_cat[has_cat] = (codes.full[rows][has_cat, None] == sess_full[None, :]).mean(axis=1)
        deepest = np.zeros(m)
        for d in range(MAX_DEPTH):
            level = codes.prefix[rows, d]
            hit = (level >= 0) & np.isin(level, codes.prefix[sess, d])
            deepest[hit] = d + 1
        prefix[has_cat] = deepest[has_cat] / codes.depth[rows][has_cat]
    sess_brand = codes.brand[sess]
    sess_brand = sess_brand[sess_brand >= 0]
    has_brand = codes.brand[rows] >= 0
    if len(sess_brand):
        same_brand[has_brand] = (codes.brand[rows][has_brand, None]
                                 == sess_brand[None, :]).mean(axis=1)
    col["same_category_share"], col["category_prefix"] = same_cat, prefix
    col["same_brand_share"] = same_brand


def _similarities(ctx: SessionContext, col: dict[str, np.ndarray]) -> None:
    m = len(ctx.rows)
    col["zs_sim_last"] = col["zs_sim_max"] = np.full(m, np.nan)
    if ctx.zs_events is not None and ctx.zs_items is not None:
        item_events = [v for v, t in zip(ctx.zs_events, ctx.hist_types)
                       if v is not None and t != "search"]
        events = [v for v in ctx.zs_events if v is not None]
        if item_events:
            col["zs_sim_last"] = ctx.zs_items @ item_events[-1]
        if events:
            col["zs_sim_max"] = (ctx.zs_items @ np.stack(events).T).max(axis=1)
    col["towers_sim_last"] = (ctx.towers_last if ctx.towers_last is not None
                              else np.full(m, np.nan))
