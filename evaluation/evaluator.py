"""Segment-wise full-catalogue evaluation of any retriever, history-masked and unmasked.

:class:`RankingEvaluator` accumulates batches (memory stays O(examples x coverage_k), never
O(examples x n_items)) and reports the metrics of :mod:`evaluation.metrics` overall and per
segment (``user=cold_user``, ``target=new``, ...). The ``masked`` figures remove each user's history
items from the ranking except the target, which always stays rankable; the ``unmasked`` figures
keep everything, as RecBole-based papers (UniSRec, VQ-Rec) report them. The top-k lists behind
coverage and long-tail share are built with the same masking, so a target ranked below
``coverage_k`` is in its own list.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluation.metrics import (
    NOT_RETRIEVED,
    EvaluationError,
    check_scores,
    check_targets,
    coverage,
    exclusion_pairs,
    long_tail_share,
    metrics_from_ranks,
    ranks_unmasked_and_masked,
    to_numpy,
    topk_indices,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

VIEWS: tuple[str, ...] = ("masked", "unmasked")


class RankingEvaluator:
    """Accumulates batches of full-catalogue scores; reports overall and per-segment metrics,
    masked and unmasked.

    ``long_tail_mask`` [n_items] bool marks long-tail items (``long_tail_share_at_{coverage_k}`` is
    NaN without it). Result metrics that cannot be computed are NaN.
    """

    def __init__(
        self,
        n_items: int,
        long_tail_mask: np.ndarray | None = None,
        ks: Sequence[int] = (10, 20, 50),
        ndcg_ks: Sequence[int] = (10, 20),
        coverage_k: int = 10,
    ) -> None:
        if not isinstance(n_items, (int, np.integer)) or n_items < 1:
            raise EvaluationError(f"n_items must be a positive int (catalogue size); got "
                                  f"{n_items!r}")
        for name, values in (("ks", ks), ("ndcg_ks", ndcg_ks)):
            if any(not isinstance(k, (int, np.integer)) or k < 1 for k in values):
                raise EvaluationError(f"{name} must be positive ints; got {list(values)}")
        if not isinstance(coverage_k, (int, np.integer)) or coverage_k < 1:
            raise EvaluationError(f"coverage_k must be a positive int; got {coverage_k!r}")
        if long_tail_mask is not None:
            long_tail_mask = np.asarray(to_numpy(long_tail_mask))
            if long_tail_mask.dtype != np.bool_ or long_tail_mask.shape != (n_items,):
                raise EvaluationError(f"long_tail_mask must be bool of shape ({n_items},), one "
                                      f"flag per catalogue item; got shape {long_tail_mask.shape}, "
                                      f"dtype {long_tail_mask.dtype}")
        self.n_items = int(n_items)
        self.long_tail_mask = long_tail_mask
        self.ks = tuple(int(k) for k in ks)
        self.ndcg_ks = tuple(int(k) for k in ndcg_ks)
        self.coverage_k = int(coverage_k)
        self._ranks: dict[str, list[np.ndarray]] = {view: [] for view in VIEWS}
        self._topk: dict[str, list[np.ndarray]] = {view: [] for view in VIEWS}
        self._labels: dict[str, list[Any]] | None = None  # segment kind -> one label per row
        self._mode: str | None = None  # "scores" (add) or "topk" (add_topk); never both
        self._list_size: int | None = None  # smallest K seen by add_topk
        self._history_seen = False

    def add(
        self,
        scores: np.ndarray,
        targets: np.ndarray,
        history: Sequence[np.ndarray] | None = None,
        segments: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Add a batch: ``scores`` [B, n_items], ``targets`` [B] item indices, ``history`` per row
        item indices to mask (target kept), ``segments`` kind -> one label per row."""
        self._set_mode("scores")
        scores = check_scores(scores, self.n_items)
        batch = scores.shape[0]
        targets = check_targets(targets, batch, self.n_items)
        labels = self._check_segments(segments, batch)
        # the target's own index is removed from the history, so topk and ranks agree
        ex_rows, ex_items = exclusion_pairs(history, targets, batch, self.n_items)
        unmasked, masked = ranks_unmasked_and_masked(scores, targets, ex_rows, ex_items)
        self._ranks["unmasked"].append(unmasked)
        self._ranks["masked"].append(masked)
        # one partition serves both views: removing masked items keeps the stable order, so the
        # masked top-k is the unmasked top-(k + longest history) with those items dropped
        longest = int(np.bincount(ex_rows, minlength=1).max()) if batch else 0
        lists = topk_indices(scores, self.coverage_k + longest)  # (B, <= k + longest)
        self._topk["unmasked"].append(_fixed_width(lists, self.coverage_k))
        masked_lists = _drop_excluded(lists, ex_rows, ex_items, self.n_items)
        self._topk["masked"].append(_fixed_width(masked_lists, self.coverage_k))
        self._history_seen |= history is not None
        self._append_labels(labels)

    def add_topk(
        self,
        topk: np.ndarray,
        targets: np.ndarray,
        history: Sequence[np.ndarray] | None = None,
        segments: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Add a batch from a retriever that returns only top-K lists (an ANN index, BM25).

        ``topk`` [B, K] item indices, best first, -1 for padding. A target not in its list is
        "not retrieved": a miss at every k, 0 to MRR, so ``mrr`` is MRR@K and metrics at k > K are
        NaN (``result()["truncated_at"]`` is K, the smallest K added). Masking removes history
        items (not the target) from each list and closes the gaps, so the masked list is shorter:
        fetch K >= max k + history length for exact masked figures.
        """
        self._set_mode("topk")
        topk = np.asarray(to_numpy(topk))
        if topk.ndim != 2 or (topk.size and not np.issubdtype(topk.dtype, np.integer)):
            raise EvaluationError(f"topk must be 2-D int item indices [batch, K]; got shape "
                                  f"{topk.shape}, dtype {topk.dtype}")
        batch, list_size = topk.shape
        if list_size < min(self.coverage_k, self.n_items):
            raise EvaluationError(f"topk lists must hold at least coverage_k={self.coverage_k} "
                                  f"items (or the whole catalogue); got K={list_size}")
        topk = topk.astype(np.int64, copy=False)
        if ((topk < NOT_RETRIEVED) | (topk >= self.n_items)).any():
            raise EvaluationError(f"topk entries must be item indices in [0, {self.n_items}) or "
                                  "-1 for padding")
        ordered = np.sort(topk, axis=1)
        if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
            raise EvaluationError("topk rows must not repeat an item")
        targets = check_targets(targets, batch, self.n_items)
        labels = self._check_segments(segments, batch)
        ex_rows, ex_items = exclusion_pairs(history, targets, batch, self.n_items)
        masked = _drop_excluded(topk, ex_rows, ex_items, self.n_items)
        for view, lists in (("unmasked", topk), ("masked", masked)):
            hit = lists == targets[:, None]  # (B, K)
            self._ranks[view].append(np.where(hit.any(axis=1), hit.argmax(axis=1), NOT_RETRIEVED))
            self._topk[view].append(_fixed_width(lists, self.coverage_k))
        self._list_size = list_size if self._list_size is None else min(self._list_size, list_size)
        self._history_seen |= history is not None
        self._append_labels(labels)

    def result(self) -> dict[str, Any]:
        """``{"masked": {"overall": {...}, "by_segment": {"user=cold_user": {...}}},
        "unmasked": {...}, "history_masked": bool, "truncated_at": K | None}``.

        Each metrics dict holds ``metrics_from_ranks`` keys plus ``coverage_at_{coverage_k}`` and
        ``long_tail_share_at_{coverage_k}``. Segments are listed by kind, labels sorted.
        """
        if not self._ranks["masked"]:
            raise EvaluationError("result() called before any add()/add_topk(); nothing to report")
        out: dict[str, Any] = {}
        for view in VIEWS:
            ranks = np.concatenate(self._ranks[view])
            topk = np.concatenate(self._topk[view])
            if self._list_size is not None:  # lists of different K: cut all to the smallest
                ranks = np.where(ranks < self._list_size, ranks, NOT_RETRIEVED)
            by_segment: dict[str, dict[str, float]] = {}
            for kind, labels in (self._labels or {}).items():
                label_arr = np.array(labels, dtype=object)
                for label in sorted({lab for lab in labels if lab is not None}):
                    rows = label_arr == label
                    by_segment[f"{kind}={label}"] = self._summarise(ranks[rows], topk[rows])
            out[view] = {"overall": self._summarise(ranks, topk), "by_segment": by_segment}
        out["history_masked"] = self._history_seen
        out["truncated_at"] = self._list_size
        return out

    def _summarise(self, ranks: np.ndarray, topk: np.ndarray) -> dict[str, float]:
        summary = metrics_from_ranks(ranks, self.ks, self.ndcg_ks, self._list_size)
        summary[f"coverage_at_{self.coverage_k}"] = coverage(topk, self.n_items)
        summary[f"long_tail_share_at_{self.coverage_k}"] = (
            long_tail_share(topk, self.long_tail_mask)
            if self.long_tail_mask is not None else math.nan
        )
        return summary

    def _set_mode(self, mode: str) -> None:
        if self._mode is not None and self._mode != mode:
            raise EvaluationError(f"this evaluator already holds {self._mode!r} batches; full "
                                  "scores (add) and top-K lists (add_topk) have different "
                                  "metrics, so use one RankingEvaluator for each")
        self._mode = mode

    def _check_segments(
        self, segments: Mapping[str, Sequence[str]] | None, batch: int
    ) -> dict[str, list[Any]]:
        segments = dict(segments or {})
        expected = set(self._labels) if self._labels is not None else set(segments)
        if set(segments) != expected:
            raise EvaluationError(f"every batch must label the same segment kinds; expected "
                                  f"{sorted(expected)}, got {sorted(segments)}")
        labels: dict[str, list[Any]] = {}
        for kind, values in segments.items():
            values = list(values)
            if len(values) != batch:
                raise EvaluationError(f"segments[{kind!r}] must hold one label per row ({batch}); "
                                      f"got {len(values)}")
            labels[kind] = [None if _is_missing(v) else str(v) for v in values]
        return labels

    def _append_labels(self, labels: dict[str, list[Any]]) -> None:
        if self._labels is None:
            self._labels = {kind: [] for kind in labels}
        for kind, values in labels.items():
            self._labels[kind].extend(values)


def _is_missing(label: Any) -> bool:
    return label is None or (isinstance(label, float) and math.isnan(label))


def _fixed_width(lists: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` columns of ranked lists, padded with -1 where lists are shorter."""
    out = np.full((len(lists), width), NOT_RETRIEVED, dtype=np.int64)
    out[:, : min(width, lists.shape[1])] = lists[:, :width]
    return out


def _drop_excluded(
    lists: np.ndarray, ex_rows: np.ndarray, ex_items: np.ndarray, n_items: int
) -> np.ndarray:
    """Remove the (row, item) pairs from ranked lists [B, K], closing the gaps in order; the
    freed slots at the end become -1."""
    row_codes = np.arange(len(lists), dtype=np.int64)[:, None] * n_items + lists  # (B, K)
    keep = (lists >= 0) & ~np.isin(row_codes, ex_rows * n_items + ex_items)
    # a stable sort on "dropped" moves kept items to the front in their original order
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.where(np.take_along_axis(keep, order, axis=1),
                    np.take_along_axis(lists, order, axis=1), NOT_RETRIEVED)


def evaluate_retriever(
    score_fn: Callable[[list[int]], np.ndarray],
    examples: pd.DataFrame,
    item_index: Mapping[str, int],
    long_tail_mask: np.ndarray | None,
    batch_size: int = 256,
    mask_history: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """Evaluate ``score_fn`` on a frame of examples (SplitData ``valid``/``test`` columns).

    ``score_fn(row_positions)`` returns scores [B, n_items] for those positional rows, with
    ``n_items = len(item_index)`` and columns in ``item_index`` order. History indices come from
    ``hist_items`` through ``item_index`` (None entries are searches, unknown ids are skipped and
    counted in the log). ``user_segment`` / ``target_segment`` columns, when present, become the
    ``user=`` / ``target=`` segments. With ``mask_history=False`` no history is passed, so the
    ``masked`` figures equal the ``unmasked`` ones. ``kw`` go to :class:`RankingEvaluator`.
    """
    for col in ("hist_items", "target"):
        if col not in examples.columns:
            raise EvaluationError(f"examples need column {col!r} (SplitData example frame); got "
                                  f"{list(examples.columns)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvaluationError(f"batch_size must be a positive int; got {batch_size!r}")
    n_items = len(item_index)
    evaluator = RankingEvaluator(n_items, long_tail_mask, **kw)
    targets_all = examples["target"].map(lambda item_id: item_index.get(str(item_id), -1))
    unknown = targets_all.to_numpy() < 0
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise EvaluationError(f"{int(unknown.sum())} example target(s) are not in item_index "
                              f"(first: row {row}, {examples['target'].iloc[row]!r}); every target "
                              "must be a catalogue item the retriever can score")
    targets_all = targets_all.to_numpy(dtype=np.int64)
    segment_cols = {kind: f"{kind}_segment" for kind in ("user", "target")
                    if f"{kind}_segment" in examples.columns}
    skipped = 0
    for start in range(0, len(examples), batch_size):
        positions = list(range(start, min(start + batch_size, len(examples))))
        chunk = examples.iloc[positions]
        history = None
        if mask_history:
            history = []
            for hist in chunk["hist_items"]:
                ids = [item_index.get(str(item_id)) for item_id in hist if item_id is not None]
                skipped += sum(idx is None for idx in ids)
                history.append(np.array([i for i in ids if i is not None], dtype=np.int64))
        segments = {kind: chunk[col].tolist() for kind, col in segment_cols.items()}
        scores = score_fn(positions)
        evaluator.add(scores, targets_all[positions], history, segments or None)
    if skipped:
        log.info("skipped %d history item id(s) not in item_index when masking", skipped)
    result = evaluator.result()
    log.info("evaluated %d examples: masked recall@10=%.4f, unmasked recall@10=%.4f",
             len(examples), result["masked"]["overall"].get("recall_at_10", math.nan),
             result["unmasked"]["overall"].get("recall_at_10", math.nan))
    return result
