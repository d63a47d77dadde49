"""Boundary checks for what callers hand the index: vectors, item ids, k, exclude lists."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from index.errors import IndexInputError


def as_vectors(vectors: Any, dim: int, name: str, *, allow_zero: bool = False) -> np.ndarray:
    """A fresh C-contiguous float32 [n, dim] array, L2-normalised row by row.

    The caller's array is never modified. Zero rows are refused for items (no direction to
    normalise) and kept as zeros for queries (``allow_zero``), which then score 0 everywhere.
    """
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] != dim or not _is_float_compatible(arr.dtype):
        hint = "; for one vector pass v[None, :]" if arr.ndim == 1 else ""
        raise IndexInputError(
            f"{name} must be 2-D float32 (n, dim={dim}); got shape {arr.shape}, "
            f"dtype {arr.dtype}{hint}"
        )
    arr = np.array(arr, dtype=np.float32, order="C", copy=True)  # (n, dim)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise IndexInputError(
            f"{name} must be finite; rows {preview(bad.tolist())} contain NaN or inf "
            f"({len(bad)} of {len(arr)} rows)"
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)  # (n, 1)
    zero = norms[:, 0] == 0
    if zero.any() and not allow_zero:
        raise IndexInputError(
            f"{name} rows {preview(np.flatnonzero(zero).tolist())} are all zeros and cannot be "
            f"L2-normalised; drop those items or give them a vector"
        )
    np.divide(arr, norms, out=arr, where=~zero[:, None])
    return arr


def as_item_ids(ids: Any, expected_len: int | None = None) -> list[str]:
    """Item ids as a list of distinct non-empty str ("" is the padding value in search results)."""
    id_list = as_id_list(ids)
    if expected_len is not None and len(id_list) != expected_len:
        raise IndexInputError(
            f"ids and vectors must have the same length; got {len(id_list)} ids for "
            f"{expected_len} vectors"
        )
    if len(set(id_list)) != len(id_list):
        seen: set[str] = set()
        dups = [i for i in id_list if i in seen or seen.add(i)]
        raise IndexInputError(f"ids must be unique; duplicated: {preview(dups)}")
    return id_list


def as_id_list(ids: Any) -> list[str]:
    """Item ids as a list of non-empty str, repeats allowed."""
    if isinstance(ids, (str, bytes)):
        raise IndexInputError(f"ids must be a sequence of str item ids, got a single {ids!r}")
    try:
        id_list = list(ids)
    except TypeError:
        raise IndexInputError(f"ids must be a sequence of str, got {type(ids).__name__}") from None
    for pos, item_id in enumerate(id_list):
        if not isinstance(item_id, str) or not item_id:
            raise IndexInputError(
                f"ids must be non-empty str; got {item_id!r} ({type(item_id).__name__}) at "
                f"position {pos}; convert with [str(i) for i in ids]"
            )
    return id_list


def as_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise IndexInputError(f"k must be an int >= 1; got {k!r}")
    return int(k)


def as_exclude(exclude: Any, num_queries: int) -> list[frozenset[str]] | None:
    """One set of item ids per query, or None when nothing is excluded."""
    if exclude is None:
        return None
    if isinstance(exclude, (str, bytes)) or not isinstance(exclude, Sequence | np.ndarray):
        raise IndexInputError(
            f"exclude must be a list with one list of item ids per query; got {exclude!r}"
        )
    if len(exclude) != num_queries:
        raise IndexInputError(
            f"exclude must have one list of item ids per query: {num_queries} queries but "
            f"{len(exclude)} exclude lists (for one query use exclude=[[...]])"
        )
    sets = []
    for pos, row in enumerate(exclude):
        if isinstance(row, (str, bytes)):
            raise IndexInputError(
                f"exclude[{pos}] must be a list of item ids, got the string {row!r}; "
                f"wrap it: exclude=[[{row!r}]]"
            )
        sets.append(frozenset(str(i) for i in (row if row is not None else ())))
    return sets if any(sets) else None


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise IndexInputError(f"{name} must be an int >= 1; got {value!r}")


def preview(values: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def _is_float_compatible(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
