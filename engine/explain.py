"""Reasons: each recommended item is explained by the session event whose vector is closest."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAST_TENSE: dict[str, str] = {
    "view": "viewed", "click": "clicked", "cart": "added to your cart", "purchase": "bought",
    "rate": "rated", "review": "reviewed",
}
MAX_LABEL_CHARS = 80


def _quote(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 3] + "..."


def event_reason(event_type: str, text: str) -> str:
    """The phrase for one event: ``matches your search 'usb microscope'`` or
    ``similar to 'Acme LED microscope' you clicked``."""
    if event_type == "search":
        return f"matches your search '{_quote(text)}'"
    return f"similar to '{_quote(text)}' you {PAST_TENSE.get(event_type, event_type + 'ed')}"


def closest_events(item_emb: np.ndarray, event_emb: np.ndarray) -> np.ndarray:
    """For each item (k, dim), the index of the closest event (L, dim) by dot product; ties
    go to the most recent event. Returns (k,) int64."""
    if len(event_emb) == 0:
        return np.full(len(item_emb), -1, dtype=np.int64)
    sims = item_emb @ event_emb[::-1].T  # (k, L), most recent event first
    return (len(event_emb) - 1 - sims.argmax(axis=1)).astype(np.int64)


def because(item_emb: np.ndarray, event_emb: np.ndarray, reasons: Sequence[str]) -> list[str]:
    """The reason of each item: the phrase of its closest event (``reasons[i]`` for event i)."""
    return [reasons[i] if i >= 0 else "" for i in closest_events(item_emb, event_emb)]
