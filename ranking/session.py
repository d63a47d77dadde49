"""``SessionBatch``: what every candidate source and feature reads of a batch of sessions.

One row per session, each a chronological list of events (oldest first): ``hist_items`` (a
catalogue item id, or None for a search or an item given only by its text), ``hist_types``
(``recdata.EVENT_TYPES``), ``hist_queries`` (the search text, else None), ``hist_texts`` (an
inline item's text, else None), and ``exclude`` (item ids never to return). ``user_emb`` holds
the towers' user vector of each session (rows of zeros where the towers read no event).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class SessionBatch:
    """A batch of sessions for the ranking stage (see the module docstring)."""

    hist_items: list[list[str | None]]
    hist_types: list[list[str]]
    hist_queries: list[list[str | None]]
    hist_texts: list[list[str | None]] = field(default_factory=list)
    exclude: list[frozenset[str]] = field(default_factory=list)
    user_emb: np.ndarray | None = None  # (B, d) float32, the towers' user vectors

    def __post_init__(self) -> None:
        n = len(self.hist_items)
        if not self.hist_texts:
            self.hist_texts = [[None] * len(h) for h in self.hist_items]
        if not self.exclude:
            self.exclude = [frozenset() for _ in range(n)]
        lengths = {len(self.hist_types), len(self.hist_queries), len(self.hist_texts),
                   len(self.exclude)}
        if lengths != {n}:
            raise ValueError(f"SessionBatch columns must have one entry per session ({n}); got "
                             f"lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.hist_items)

    def n_item_events(self, row: int) -> int:
        return sum(t != "search" for t in self.hist_types[row])

    @classmethod
    def from_lists(cls, hist_items: Sequence[Sequence[str | None]],
                   hist_types: Sequence[Sequence[str]],
                   hist_queries: Sequence[Sequence[str | None]],
                   exclude_history: bool = True,
                   user_emb: np.ndarray | None = None) -> SessionBatch:
        """From example-frame columns; ``exclude_history`` excludes each session's own items
        (the engine's default; False lets the ranker see repeats, the unmasked protocol)."""
        items = [list(h) for h in hist_items]
        exclude = [frozenset(i for i in h if i is not None) if exclude_history else frozenset()
                   for h in items]
        return cls(items, [list(t) for t in hist_types], [list(q) for q in hist_queries],
                   exclude=exclude, user_emb=user_emb)


def session_text(items: Sequence[str | None], types: Sequence[str],
                 queries: Sequence[str | None], texts: Sequence[str | None],
                 title_of: Callable[[str], str], max_events: int = 5) -> str:
    """The most recent ``max_events`` events as text: item titles (``title_of(item_id)``),
    inline items' titles (their text up to the first '. ') and search queries, oldest first."""
    parts = []
    for item_id, kind, query, text in list(zip(items, types, queries, texts))[-max_events:]:
        if kind == "search":
            parts.append(query or "")
        elif item_id is not None:
            parts.append(title_of(item_id))
        else:
            parts.append((text or "").split(". ")[0])
    return " ".join(p for p in parts if p)


def recency_weights(n_events: int, decay: float) -> np.ndarray:
    """Weights (n_events,) of a chronological history: the newest event 1, each older one
    ``decay`` times the next, summing to 1."""
    weights = decay ** np.arange(n_events - 1, -1, -1, dtype=np.float64)
    return weights / weights.sum()
