"""Text the cross-encoder reads, and its training pairs and validation groups.

A reranker input is a pair ``(context, candidate)``: the context is a short text of the
session (:func:`session_context_text`), the candidate is the item's text from
``recdata.text.item_text`` (passed in, not rebuilt here). Training is listwise: one group per
session, the true next item first, then negatives mined from candidate sources (hard: what the
reranker must learn to push down) plus a few random items (easy), never an item without
training interactions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence

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
        raise DataError(f"candidates must hold one item list per example row; got "
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


CandidateSource = Callable[[pd.DataFrame, int], Sequence[Sequence[str]]]
"""A candidate generator: (example rows, n) -> each row's top-n item ids, best first (towers,
BM25, zero-shot, popularity, ...; the lead's ``ranking/`` sources plug in here)."""


def mine_negatives(
    examples: pd.DataFrame,
    sources: Mapping[str, CandidateSource],
    allowed: Collection[str],
    n_candidates: int = 50,
    n_hard: int = 7,
    n_random: int = 1,
    seed: int = 0,
) -> list[list[str]]:
    """Negative item ids per example row: hard ones from each source's top-``n_candidates``
    (``n_hard`` split evenly over the sources, each share sampled uniformly from that source's
    list), then ``n_random`` uniform draws from ``allowed``.

    Only ``allowed`` items are ever negatives: pass the items that have training interactions
    and are not held out, so the reranker never learns that new items are bad (the towers'
    loss masks the same items). Never the row's target, never one of its history items (the
    engine never re-scores those), no repeats. Deterministic for a given seed and input order.
    """
    if n_hard < 0 or n_random < 0 or n_candidates < 1:
        raise RerankError(f"need n_hard >= 0, n_random >= 0, n_candidates >= 1; got {n_hard}, "
                          f"{n_random}, {n_candidates}")
    if n_hard and not sources:
        raise RerankError("n_hard > 0 needs at least one candidate source")
    allowed_set = set(map(str, allowed))
    allowed_list = sorted(allowed_set)
    lists = {}
    for name, source in sources.items():
        lists[name] = source(examples, n_candidates)
        if len(lists[name]) != len(examples):
            raise RerankError(f"candidate source {name!r} returned {len(lists[name])} lists for "
                              f"{len(examples)} example rows; it must return one per row")
    names = list(lists)
    quota = [n_hard // len(names) + (i < n_hard % len(names)) for i in range(len(names))] \
        if names else []
    rng = np.random.default_rng(seed)
    out: list[list[str]] = []
    for row, (target, history) in enumerate(zip(examples["target"].astype(str),
                                                examples["hist_items"])):
        blocked = {target} | {str(i) for i in history if i is not None}
        chosen: list[str] = []
        for name, share in zip(names, quota):
            pool = [i for i in dict.fromkeys(map(str, lists[name][row]))
                    if i in allowed_set and i not in blocked and i not in chosen]
            take = min(share, len(pool))
            chosen += [pool[j] for j in sorted(rng.choice(len(pool), size=take, replace=False))]
        budget = n_random * 20 + 20  # rejection sampling; a tiny catalogue just gives fewer
        want = len(chosen) + n_random
        while len(chosen) < want and budget > 0 and allowed_list:
            budget -= 1
            item_id = allowed_list[int(rng.integers(len(allowed_list)))]
            if item_id not in blocked and item_id not in chosen:
                chosen.append(item_id)
        out.append(chosen)
    return out


def build_train_groups(
    examples: pd.DataFrame,
    negatives: Sequence[Sequence[str]],
    item_texts: Mapping[str, str],
    item_titles: Mapping[str, str],
    max_events: int = 5,
) -> list[tuple[str, list[str]]]:
    """Listwise training groups ``(context, [positive text, negative texts...])``, one per row
    with at least one negative (``negatives`` from :func:`mine_negatives`)."""
    _check_inputs(examples, negatives, item_texts)
    contexts = _contexts(examples, item_titles, max_events)
    return [(context, [item_texts[target]] + [item_texts[i] for i in negs])
            for context, target, negs in zip(contexts, examples["target"].astype(str), negatives)
            if negs]


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
