"""engine.counts: fresh (total, recent) interaction counts and the fallback's popular order."""

from __future__ import annotations

import pandas as pd
import pytest

from engine.catalogue import CatalogueState
from engine.counts import InteractionCounts

NOW = 1_700_000_000.0
DAY = 24 * 3600


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ev(item: str | None, ts: float, kind: str = "click") -> dict:
    return {"item_id": item, "event": kind, "ts": int(ts), "received": int(NOW)}


def state_of(popularity: dict[str, int]) -> CatalogueState:
    ids = list(popularity)
    return CatalogueState.from_frame(pd.DataFrame({
        "item_id": ids, "title": ids, "text": ids, "category": None, "brand": None,
        "created_ts": 0, "popularity": [popularity[i] for i in ids],
        "segment": ["head" if popularity[i] else "new" for i in ids]}))


def test_total_and_recent_with_a_sliding_window() -> None:
    clock = Clock()
    counts = InteractionCounts.from_events(
        [ev("A", NOW - 10), ev("A", NOW - 2 * DAY), ev("B", NOW - 3600), ev(None, NOW, "search")],
        clock=clock)
    assert counts.snapshot() == {"A": (2, 1), "B": (1, 1)}
    clock.now += DAY - 1800  # B's event (an hour old at the start) is now 24.5 h old
    assert counts.get("B") == (1, 0) and counts.get("A") == (2, 1)
    clock.now += 3600
    assert counts.snapshot() == {"A": (2, 0), "B": (1, 0)}
    assert counts.get("unknown") == (0, 0)


def test_event_time_is_capped_at_receipt() -> None:
    clock = Clock()
    counts = InteractionCounts.from_events([ev("A", NOW + 10 * DAY)], clock=clock)
    clock.now += DAY + 120  # a future ts does not keep an event "recent" forever
    assert counts.get("A") == (1, 0)


def test_a_new_item_that_starts_selling_moves_to_the_top() -> None:
    state = state_of({"HEAD1": 50, "HEAD2": 40, "TAIL": 2, "NEW": 0})
    counts = InteractionCounts(clock=Clock())
    assert counts.popular_order(state) == ("HEAD1", "HEAD2", "TAIL")  # NEW has nothing yet
    counts.observe([ev("NEW", NOW - 60, "purchase")] * 3 + [ev("HEAD2", NOW - 60)])
    assert counts.popular_order(state) == ("NEW", "HEAD2", "HEAD1", "TAIL")
    counts.observe([ev("TAIL", NOW - 5)] * 5)
    assert counts.popular_order(state)[0] == "TAIL"


def test_window_must_be_at_least_a_bucket() -> None:
    with pytest.raises(ValueError, match="window_s must be an integer"):
        InteractionCounts(window_s=10)
