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


def signal_of_each(contributions: np.ndarray, feature_names: Sequence[str],
                   signal_of: dict[str, str]) -> list[str]:
    """Per row of ``contributions`` (k, F) the signal whose features add the most to its score
    (the deciding signal); features of no signal (the user's own counts) never decide."""
    signals = sorted({signal_of[f] for f in feature_names if signal_of.get(f) not in (None,
                                                                                      "user")})
    groups = np.zeros((contributions.shape[0], len(signals)))
    for j, name in enumerate(feature_names):
        signal = signal_of.get(name)
        if signal in signals:
            groups[:, signals.index(signal)] += contributions[:, j]
    return [signals[i] for i in groups.argmax(axis=1)] if signals else []


def signal_reason(signal: str, *, closest: str, query: str | None, brand_event: str | None,
                  category: str | None, popularity: int, repeat_event: str | None) -> str:
    """The phrase for a deciding signal; ``closest`` is the closest-event phrase that stands
    in where the signal has no words of its own (the towers, zero-shot, the cross-encoder)."""
    if signal in ("search", "bm25") and query:
        return f"matches your search '{_quote(query)}'"
    if signal == "brand" and brand_event:
        return brand_event
    if signal == "category" and category:
        return f"more from {_quote(category)}"
    if signal == "popularity":
        return f"popular with shoppers ({popularity} interactions)"
    if signal == "fresh":
        return "new in the catalogue"
    if signal == "session" and repeat_event:
        return repeat_event
    return closest


def brand_phrase(event_type: str, title: str) -> str:
    return f"same brand as '{_quote(title)}' you {PAST_TENSE.get(event_type, event_type + 'ed')}"


def repeat_phrase(event_type: str) -> str:
    return f"you {PAST_TENSE.get(event_type, event_type + 'ed')} it earlier in this session"
