"""Text the cross-encoder reads, and its training pairs and validation groups.

A reranker input is a pair ``(context, candidate)``: the context is a short text of the
session (:func:`session_context_text`), the candidate is the item's text from
``recdata.text.item_text`` (passed in, not rebuilt here). Training pairs are pointwise:
the true next item with label 1, and negatives with label 0 drawn from the retriever's own
top-N (hard: what the reranker must learn to push down) plus a few random catalogue items
(easy: keeps the score calibrated against the rest of the catalogue).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from recdata.schema import DataError

log = logging.getLogger(__name__)

CONTEXT_SEP = " | "
_EXAMPLE_COLUMNS = ("hist_items", "hist_types", "hist_queries", "target")


class RerankError(ValueError):
    """A bad argument to the reranker: the message says what was expected and what arrived."""


def _cut_words(text: str, max_words: int) -> str:
    words = str(text).split()
    return " ".join(words[:max_words])


def session_context_text(
    hist_items: Sequence[str | None],
    hist_types: Sequence[str],
    hist_queries: Sequence[str | None],
    item_titles: Mapping[str, str],
    max_events: int = 5,
    max_words_per_event: int = 12,
) -> str:
    """The session as one short text, most recent event first.

    ``"search: usb microscope | click: Acme LED microscope | view: ..."``. Histories arrive
    chronological (oldest first), as in ``SplitData``. Search events show their query, item
    events their title (the item id when ``item_titles`` lacks it). An item seen again is shown
    once, at its most recent event, so repeats do not crowd out older evidence. At most
    ``max_events`` events, each cut to ``max_words_per_event`` words: the cross-encoder's cost
    grows with the pair's length, so the context is kept short on purpose.
    An empty history gives ``""``; a missing query (None or NaN) is skipped.
    """
    if not (len(hist_items) == len(hist_types) == len(hist_queries)):
        raise RerankError(
            "hist_items, hist_types and hist_queries must have one entry per event; got lengths "
            f"{len(hist_items)}, {len(hist_types)}, {len(hist_queries)}"
        )
    if max_events < 1:
        raise RerankError(f"max_events must be >= 1, got {max_events}")
    parts: list[str] = []
    seen_items: set[str] = set()
    for item_id, event, query in zip(
        reversed(list(hist_items)), reversed(list(hist_types)), reversed(list(hist_queries))
    ):
        if len(parts) >= max_events:
            break
        if event == "search" or item_id is None:
            text = _cut_words(query if isinstance(query, str) else "", max_words_per_event)
            if text:
                parts.append(f"search: {text}")
            continue
        if item_id in seen_items:
            continue
        seen_items.add(item_id)
        title = _cut_words(item_titles.get(item_id, item_id), max_words_per_event)
        parts.append(f"{event}: {title}")
    return CONTEXT_SEP.join(parts)


def _check_inputs(
    examples: pd.DataFrame, candidates: Sequence[Sequence[str]], item_texts: Mapping[str, str]
) -> None:
    missing = [c for c in _EXAMPLE_COLUMNS if c not in examples.columns]
    if missing:
        raise DataError(f"examples are missing column(s) {missing}; expected the SplitData example "
                        f"columns {list(_EXAMPLE_COLUMNS)}, got {list(examples.columns)}")
    if len(candidates) != len(examples):
        raise DataError(f"candidates must hold one retrieved list per example row; got "
                        f"{len(candidates)} lists for {len(examples)} rows")
    targets = examples["target"].astype(str)
    unknown = sorted(set(targets) - item_texts.keys())
    if unknown:
        raise DataError(f"{len(unknown)} target item(s) have no text in item_texts (e.g. "
                        f"{unknown[:5]}); pass item_text() of every catalogue item")
    unknown = sorted({i for row in candidates for i in row} - item_texts.keys())
    if unknown:
        raise DataError(f"{len(unknown)} retrieved candidate id(s) have no text in item_texts "
                        f"(e.g. {unknown[:5]}); candidates must be catalogue item ids")


def _contexts(examples: pd.DataFrame, item_titles: Mapping[str, str], max_events: int) -> list[str]:
    return [
        session_context_text(list(items), list(types), list(queries), item_titles, max_events)
        for items, types, queries in zip(
            examples["hist_items"], examples["hist_types"], examples["hist_queries"]
        )
    ]


def build_pairs(
    examples: pd.DataFrame,
    candidates: Sequence[Sequence[str]],
    item_texts: Mapping[str, str],
    item_titles: Mapping[str, str],
    n_hard: int = 7,
    n_random: int = 3,
    seed: int = 0,
    max_events: int = 5,
) -> list[tuple[str, str, float]]:
    """Pointwise training pairs ``(context, candidate_text, label)`` for the cross-encoder.

    Per example row: the true next item (label 1.0); ``n_hard`` negatives sampled uniformly from
    the retriever's top-N for that row (``candidates[i]``, item ids, best first); ``n_random``
    negatives sampled uniformly from the whole catalogue (the keys of ``item_texts``). The
    positive is never a negative and no negative repeats within a row. Sampling the hard ones
    rather than taking the first ``n_hard`` spreads them over the top-N and lowers the share of
    unlabelled true positives (items the shopper would also have liked) at the very top.
    Deterministic for a given ``seed`` and input order.
    """
    if n_hard < 0 or n_random < 0:
        raise RerankError(f"n_hard and n_random must be >= 0, got {n_hard}, {n_random}")
    _check_inputs(examples, candidates, item_texts)
    rng = np.random.default_rng(seed)
    catalogue_ids = list(item_texts.keys())
    contexts = _contexts(examples, item_titles, max_events)
    pairs: list[tuple[str, str, float]] = []
    for context, target, retrieved in zip(contexts, examples["target"].astype(str), candidates):
        pairs.append((context, item_texts[target], 1.0))
        pool = list(dict.fromkeys(i for i in retrieved if i != target))
        take = min(n_hard, len(pool))
        hard = [pool[j] for j in rng.choice(len(pool), size=take, replace=False)] if take else []
        chosen = set(hard) | {target}
        randoms: list[str] = []
        budget = n_random * 20 + 20  # rejection sampling; a catalogue too small just gives fewer
        while len(randoms) < n_random and budget > 0 and len(chosen) < len(catalogue_ids):
            budget -= 1
            item_id = catalogue_ids[int(rng.integers(len(catalogue_ids)))]
            if item_id not in chosen:
                chosen.add(item_id)
                randoms.append(item_id)
        pairs.extend((context, item_texts[i], 0.0) for i in hard + randoms)
    return pairs


def build_groups(
    examples: pd.DataFrame,
    candidates: Sequence[Sequence[str]],
    item_texts: Mapping[str, str],
    item_titles: Mapping[str, str],
    max_events: int = 5,
) -> list[tuple[str, list[str], int]]:
    """Validation groups ``(context, candidate_texts, index_of_positive or -1)``.

    The candidates keep the retriever's order, so the rank of the positive before reranking is
    its index; -1 when the retriever missed the target (reranking cannot recover it).
    """
    _check_inputs(examples, candidates, item_texts)
    contexts = _contexts(examples, item_titles, max_events)
    groups: list[tuple[str, list[str], int]] = []
    for context, target, retrieved in zip(contexts, examples["target"].astype(str), candidates):
        retrieved = list(retrieved)
        pos = retrieved.index(target) if target in retrieved else -1
        groups.append((context, [item_texts[i] for i in retrieved], pos))
    return groups
