"""Fresh interaction counts per item, overall and recent, kept from the event log.

``InteractionCounts`` is fed by the service after each fsync'd append (``observe``), rebuilt
from the log at start-up and after a user's events are deleted (``from_events``), so it
survives restarts without a file of its own. Only item events count (searches name no item).

- ``total``: every logged interaction with the item;
- ``recent``: those whose time (the event's ``ts``, capped at when it was received) is within
  the last ``window_s`` seconds (default 24 h), at a one-minute resolution: events are kept in
  per-minute buckets and a bucket leaves the sum when it is older than the window.

``snapshot() -> {item_id: (total, recent)}`` is the feature view for a ranking stage;
``popular_order`` is what the engine's fallback serves: items by recent interactions, then by
training popularity plus logged total, so an item that starts selling moves up at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.catalogue import CatalogueState

DEFAULT_WINDOW_S = 24 * 3600
BUCKET_S = 60


class InteractionCounts:
    """Per-item (total, recent) interaction counts; thread-safe."""

    def __init__(self, window_s: int = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(window_s, bool) or not isinstance(window_s, int) or window_s < BUCKET_S:
            raise ValueError(f"window_s must be an integer >= {BUCKET_S} seconds, "
                             f"got {window_s!r}")
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._total: Counter[str] = Counter()
        self._recent: Counter[str] = Counter()
        self._buckets: dict[int, Counter[str]] = {}
        self.version = 0  # grows on every change (caches key on it)
        self._order_cache: tuple[Any, CatalogueState, tuple[str, ...]] | None = None

    @classmethod
    def from_events(cls, events: Iterable[Mapping[str, Any]], window_s: int = DEFAULT_WINDOW_S,
                    clock: Callable[[], float] = time.time) -> InteractionCounts:
        counts = cls(window_s, clock)
        counts.observe(events)
        return counts

    def _oldest_bucket(self, now: float) -> int:
        return int(now - self.window_s) // BUCKET_S + 1

    def _expire(self, now: float) -> None:
        oldest = self._oldest_bucket(now)
        expired = [b for b in self._buckets if b < oldest]
        for bucket in expired:
            self._recent.subtract(self._buckets.pop(bucket))
        if expired:
            self._recent = +self._recent  # drop zero counts
            self.version += 1

    def observe(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Count the item events among log events (``item_id``, ``ts``, ``received``);
        returns how many were counted."""
        now = self._clock()
        counted = 0
        with self._lock:
            self._expire(now)
            oldest = self._oldest_bucket(now)
            for event in events:
                item_id = event.get("item_id")
                if not item_id or event.get("event") == "search":
                    continue
                when = float(event.get("ts") or now)
                when = min(when, float(event.get("received") or now), now)
                self._total[item_id] += 1
                bucket = int(when) // BUCKET_S
                if bucket >= oldest:
                    self._buckets.setdefault(bucket, Counter())[item_id] += 1
                    self._recent[item_id] += 1
                counted += 1
            if counted:
                self.version += 1
        return counted

    def get(self, item_id: str) -> tuple[int, int]:
        """(total, recent) of one item; (0, 0) when it has no logged interaction."""
        with self._lock:
            self._expire(self._clock())
            return self._total.get(item_id, 0), self._recent.get(item_id, 0)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """``{item_id: (total, recent)}`` for every item with a logged interaction."""
        with self._lock:
            self._expire(self._clock())
            return {item_id: (total, self._recent.get(item_id, 0))
                    for item_id, total in self._total.items()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._total)

    def popular_order(self, state: CatalogueState) -> tuple[str, ...]:
        """The catalogue's items ranked for the fallback: most recent interactions first, then
        training popularity + logged total; items with neither are left out. Cached until the
        counts or the catalogue change, or a minute passes."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            key = (self.version, int(now) // BUCKET_S)
            cached = self._order_cache
            if cached is not None and cached[0] == key and cached[1] is state:
                return cached[2]
            item_ids = list(state.row_of)  # row order
            recent = np.fromiter((self._recent.get(i, 0) for i in item_ids), np.int64,
                                 count=len(item_ids))
            logged = np.fromiter((self._total.get(i, 0) for i in item_ids), np.int64,
                                 count=len(item_ids))
            total = state.popularity.astype(np.int64) + logged
            order = np.lexsort((-total, -recent))  # recent desc, then total desc (stable)
            ranked = tuple(item_ids[r] for r in order if total[r] > 0)
            self._order_cache = (key, state, ranked)
            return ranked
