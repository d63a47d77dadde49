"""Ranking metrics for next-item prediction over the full catalogue: pure functions on arrays.

Conventions (shared by every function here and by :mod:`evaluation.evaluator`):

- ``scores`` is ``[B, n_items]``: one row of scores over the whole catalogue per example; higher is
  better. Never sampled negatives.
- **Ranks are 0-based** and **ties break by lower item index**: the rank of a target is the number
  of rankable items scoring strictly higher, plus the number of rankable items with exactly the
  same score and a lower item index. This is the position the target takes in a stable argsort of
  ``-scores``, and :func:`topk_indices` orders its lists the same way, so an item's rank is its
  position in the top-k list whenever it is in it.
- **Masking** (``exclude``): per row, item indices removed from the ranking (a user's history).
  The *target is never masked*: if it appears in its row's ``exclude`` it stays rankable and only
  the *other* excluded items are removed.
- One relevant item per example, so Recall@k = HitRate@k = 1[rank < k],
  NDCG@k = 1/log2(rank + 2) if rank < k else 0 (the ideal DCG is 1), MRR = 1/(rank + 1).
- A rank of ``-1`` means "not retrieved" (the target was not in a truncated top-K list); it counts
  as a miss everywhere and contributes 0 to MRR (which then is MRR@K).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

NOT_RETRIEVED = -1


class EvaluationError(ValueError):
    """Bad input to an evaluation function: says what was expected, what arrived, how to fix."""


def to_numpy(values: Any) -> np.ndarray:
    """Return ``values`` as a numpy array; torch tensors are detached and moved to the CPU."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without torch
        values = values.detach().cpu()
        try:
            return values.numpy()
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return values.float().numpy()
    return np.asarray(values)


def check_scores(scores: Any, n_items: int | None = None) -> np.ndarray:
    """Validate a ``[B, n_items]`` real-valued, NaN-free score matrix and return it as numpy."""
    arr = to_numpy(scores)
    if arr.ndim != 2:
        raise EvaluationError(f"scores must be 2-D [batch, n_items] (one row over the whole "
                              f"catalogue per example); got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise EvaluationError(f"scores must be real numbers (float or int); got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float64)  # counts and the like; negation below must not wrap around
    if n_items is not None and arr.shape[1] != n_items:
        raise EvaluationError(f"scores must have one column per catalogue item ({n_items}); got "
                              f"shape {arr.shape}. Score the full catalogue, not a sample")
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        row = int(np.flatnonzero(np.isnan(arr).any(axis=1))[0])
        raise EvaluationError(f"scores contain NaN (first in row {row}); NaN has no rank order. "
                              "Use -inf for items a model cannot score")
    return arr


def check_targets(targets: Any, batch: int, n_items: int) -> np.ndarray:
    """Validate ``batch`` target item indices in ``[0, n_items)``; return them as int64."""
    arr = to_numpy(targets)
    if arr.ndim != 1 or arr.shape[0] != batch:
        raise EvaluationError(f"targets must be 1-D with one item index per score row ({batch}); "
                              f"got shape {arr.shape}")
    if batch and not np.issubdtype(arr.dtype, np.integer):
        raise EvaluationError(f"targets must be integer item indices; got dtype {arr.dtype}. Map "
                              "item ids to indices first (e.g. through the index's id map)")
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < 0) | (arr >= n_items)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise EvaluationError(f"target index {int(arr[row])} in row {row} is out of range "
                              f"[0, {n_items}); targets must index the scored catalogue")
    return arr


def exclusion_pairs(
    exclude: Sequence[Any] | None, targets: np.ndarray | None, batch: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten per-row excluded item indices into ``(rows, items)`` int64 arrays.

    Entries equal to the row's target are dropped (the target is never masked); duplicates are
    harmless. Raises EvaluationError on a length mismatch or an index outside ``[0, n_items)``.
    """
    if exclude is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if len(exclude) != batch:
        raise EvaluationError(f"exclude/history must give one array of item indices per row "
                              f"({batch}); got {len(exclude)}")
    per_row = [np.asarray(to_numpy(row), dtype=np.int64).reshape(-1) for row in exclude]
    lengths = np.fromiter((len(row) for row in per_row), dtype=np.int64, count=batch)
    rows = np.repeat(np.arange(batch, dtype=np.int64), lengths)
    items = np.concatenate(per_row) if per_row else np.zeros(0, dtype=np.int64)
    bad = (items < 0) | (items >= n_items)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise EvaluationError(f"excluded item index {int(items[first])} in row {int(rows[first])} "
                              f"is out of range [0, {n_items}); skip unknown items when mapping")
    if targets is not None:
        keep = items != targets[rows]
        rows, items = rows[keep], items[keep]
    return rows, items


def target_ranks(
    scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """0-based rank of each row's target among the rankable items of that row.

    ``scores`` [B, n_items]; ``targets`` [B] item indices; ``exclude`` per row item indices to
    remove from the ranking (the target itself is never removed). Ties break by lower item index
    (see the module docstring). Returns [B] int64.
    """
    scores = check_scores(scores)
    batch, n_items = scores.shape
    targets = check_targets(targets, batch, n_items)
    ex_rows, ex_items = exclusion_pairs(exclude, targets, batch, n_items)
    return ranks_unmasked_and_masked(scores, targets, ex_rows, ex_items)[1]


def ranks_unmasked_and_masked(
    scores: np.ndarray, targets: np.ndarray, ex_rows: np.ndarray, ex_items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Both rankings in one pass over validated inputs; ``(ex_rows, ex_items)`` from
    :func:`exclusion_pairs` (target already dropped). Returns ([B], [B]) int64."""
    batch, n_items = scores.shape
    target_score = scores[np.arange(batch), targets]  # (B,)

    def ahead_of_target(values: np.ndarray, items: np.ndarray, rows: np.ndarray) -> np.ndarray:
        tied_lower = (values == target_score[rows]) & (items < targets[rows])
        return (values > target_score[rows]) | tied_lower

    item_idx = np.arange(n_items)[None, :]  # (1, n_items)
    all_rows = np.arange(batch)[:, None]  # (B, 1)
    unmasked = ahead_of_target(scores, item_idx, all_rows).sum(axis=1, dtype=np.int64)  # (B,)
    # each distinct masked item that stood in front of the target moves it up by one
    codes = np.unique(ex_rows * n_items + ex_items)
    rows, items = codes // n_items, codes % n_items
    lifted = ahead_of_target(scores[rows, items], items, rows)
    masked = unmasked - np.bincount(rows[lifted], minlength=batch)
    return unmasked, masked.astype(np.int64)


def topk_indices(
    scores: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """Top-``k`` item indices per row, best first, ties by lower item index, masked items left out.

    Returns [B, k] int64. Rows with fewer than ``k`` rankable items are padded with -1.
    Consistent with :func:`target_ranks`: the item at position p has rank p.
    """
    scores = check_scores(scores)
    batch, n_items = scores.shape
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise EvaluationError(f"k must be a positive int; got {k!r}")
    k = min(int(k), n_items)
    ex_rows, ex_items = exclusion_pairs(exclude, None, batch, n_items)
    keyed = scores
    if len(ex_rows):
        rankable = np.ones(scores.shape, dtype=bool)  # (B, n_items)
        rankable[ex_rows, ex_items] = False
        keyed = np.where(rankable, scores, -np.inf)  # (B, n_items)
    # the k-th largest score per row; every item scoring at least that is a candidate, so ties
    # across the cut are settled below by item index rather than by argpartition's whim
    kth = np.partition(keyed, n_items - k, axis=1)[:, n_items - k]  # (B,)
    candidate = keyed >= kth[:, None]  # (B, n_items)
    if len(ex_rows):
        candidate &= rankable
    cand_rows, cand_items = np.nonzero(candidate)
    cand_scores = keyed[cand_rows, cand_items]
    order = np.lexsort((cand_items, -cand_scores, cand_rows))  # row, score desc, index asc
    cand_rows, cand_items = cand_rows[order], cand_items[order]
    starts = np.searchsorted(cand_rows, np.arange(batch))  # first candidate of each row
    position = np.arange(len(cand_rows)) - starts[cand_rows]
    keep = position < k
    out = np.full((batch, k), NOT_RETRIEVED, dtype=np.int64)
    out[cand_rows[keep], position[keep]] = cand_items[keep]
    return out


def metrics_from_ranks(
    ranks: np.ndarray,
    ks: Sequence[int] = (10, 20, 50),
    ndcg_ks: Sequence[int] = (10, 20),
    list_size: int | None = None,
) -> dict[str, float]:
    """Mean Recall@k, NDCG@k and MRR of 0-based ranks (one relevant item per example).

    Keys: ``recall_at_{k}`` for ``ks``, ``ndcg_at_{k}`` for ``ndcg_ks``, ``mrr``, ``count``.
    A rank of -1 means "not retrieved" and counts as a miss. With ``list_size`` (ranks came from
    top-``list_size`` lists) metrics at k > list_size are NaN (unknowable) and ``mrr`` is
    MRR@list_size. With no ranks, every metric is NaN and ``count`` is 0.
    """
    ranks = np.asarray(to_numpy(ranks)).reshape(-1)
    if ranks.size and not np.issubdtype(ranks.dtype, np.integer):
        raise EvaluationError(f"ranks must be integers (0-based, -1 = not retrieved); got dtype "
                              f"{ranks.dtype}")
    ranks = ranks.astype(np.int64, copy=False)
    if (ranks < NOT_RETRIEVED).any():
        raise EvaluationError(f"ranks must be >= 0, or -1 for not retrieved; got {ranks.min()}")
    if list_size is not None and (ranks >= list_size).any():
        raise EvaluationError(f"ranks from top-{list_size} lists must be < {list_size}; got "
                              f"{ranks.max()}")
    found = ranks >= 0
    safe = np.maximum(ranks, 0) + 1.0  # 1-based position; not-retrieved rows are zeroed below
    gain = np.where(found, 1.0 / np.log2(safe + 1.0), 0.0)
    recip = np.where(found, 1.0 / safe, 0.0)
    out: dict[str, float] = {}
    nan = math.nan
    for name, cutoffs, value in (("recall", ks, 1.0), ("ndcg", ndcg_ks, gain)):
        for k in cutoffs:
            known = ranks.size > 0 and (list_size is None or k <= list_size)
            hit = found & (ranks < k)
            out[f"{name}_at_{k}"] = float(np.where(hit, value, 0.0).mean()) if known else nan
    out["mrr"] = float(recip.mean()) if ranks.size else nan
    out["count"] = int(ranks.size)
    return out


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Share of the ``n_items`` catalogue items that appear in at least one top-k list.

    ``topk`` [B, k] item indices; -1 entries (padding) are ignored. NaN when ``n_items`` is 0.
    """
    topk = np.asarray(to_numpy(topk))
    valid = topk[topk >= 0]
    if valid.size and valid.max() >= n_items:
        raise EvaluationError(f"topk holds item index {int(valid.max())}, outside the catalogue "
                              f"of {n_items} items")
    return float(np.unique(valid).size / n_items) if n_items > 0 else math.nan


def long_tail_share(topk: np.ndarray, long_tail_mask: np.ndarray) -> float:
    """Share of recommended slots (all entries of all top-k lists) holding a long-tail item.

    ``long_tail_mask`` [n_items] bool. Padding (-1) is ignored. NaN when no slot is filled.
    """
    topk = np.asarray(to_numpy(topk))
    mask = np.asarray(to_numpy(long_tail_mask))
    if mask.ndim != 1 or mask.dtype != np.bool_:
        raise EvaluationError(f"long_tail_mask must be a 1-D bool array over the catalogue; got "
                              f"shape {mask.shape}, dtype {mask.dtype}")
    valid = topk[topk >= 0]
    if valid.size and valid.max() >= mask.size:
        raise EvaluationError(f"topk holds item index {int(valid.max())}, outside long_tail_mask "
                              f"of {mask.size} items")
    return float(mask[valid].mean()) if valid.size else math.nan
