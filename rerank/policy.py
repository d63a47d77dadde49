"""When to re-score, what to re-score, and how to mix the two scores.

The cross-encoder costs milliseconds per candidate on a CPU, the two-tower dot product nothing,
so the reranker is spent where the retriever is least sure ("precision where data is
thin"):

* a **new or cold user** (at most ``cold_max_events`` item events; a query-only session has 0)
  gives the user tower little to read, so every one of the top ``top_n`` candidates is re-scored;
* a **warm user** is served well by the retriever on head items, whose vectors training has
  shaped; only the **long-tail and new** candidates among the top ``top_n`` are re-scored, because
  their vectors come from text alone or from a handful of interactions.

``mode="always"`` re-scores all top-N for everyone, ``mode="never"`` nothing (ablations).

``rules`` (written by the reranker stage into ``reranker/policy.json``, decided on validation)
override this per user group: ``{"cold": {"enabled": bool, "blend_alpha": float,
"rerank_segments": [...]}, "warm": {...}}``. A disabled group is never re-scored: the stage
turns a group off unless the reranker beat the retriever's order there with a bootstrap
confidence interval that excludes zero.

Blending rule (:meth:`RerankPolicy.blend`), per query's candidate list:

1. the retrieval scores of the whole list are standardised (z-score, or min-max): ``r``;
2. the rerank scores of the selected candidates are standardised among themselves, then mapped
   onto the band the same candidates occupy in ``r`` (``loc(r_sel) + scale(r_sel) * std(rerank)``);
3. selected: ``alpha * mapped_rerank + (1 - alpha) * r``; unselected: ``r``.

Why step 2: cross-encoder logits and dot products live on unrelated scales, and the selected
set is a biased subset (e.g. long-tail items usually sit lower in the list). Mapping the rerank
scores onto the selected items' own retrieval band lets the reranker reorder them, and lift a
confident one above unselected items, without moving the whole selected group up or down just
because of a scale mismatch. Unselected candidates get a monotone transform of their retrieval
score, so their relative order never changes and the final list can be re-sorted by one score.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rerank.pairs import RerankError

log = logging.getLogger(__name__)

MODES = ("auto", "always", "never")
STANDARDIZERS = ("zscore", "minmax")
ITEM_SEGMENTS = ("head", "long_tail", "new")
USER_GROUPS = ("cold", "warm")
_EPS = 1e-12


def _loc_scale(values: np.ndarray, standardize: str) -> tuple[float, float]:
    if standardize == "zscore":
        return float(values.mean()), float(values.std())
    return float(values.min()), float(values.max() - values.min())


def standardize_scores(values: np.ndarray, standardize: str = "zscore") -> np.ndarray:
    """(values - loc) / scale within one list; a constant list maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    loc, scale = _loc_scale(values, standardize)
    return (values - loc) / scale if scale > _EPS else np.zeros_like(values)


class RerankPolicy:
    """Decides which retrieved candidates the cross-encoder re-scores, and blends the scores.

    Args:
        mode: ``"auto"`` (the rule in the module docstring), ``"always"`` or ``"never"``.
        top_n: only the first ``top_n`` retrieved candidates are ever re-scored.
        cold_max_events: a user with at most this many item events is cold: all top-N re-scored.
        blend_alpha: weight of the rerank score for a re-scored candidate, in [0, 1].
        rerank_segments: item segments re-scored for a warm user.
        standardize: ``"zscore"`` or ``"minmax"`` (within the query's candidate list).
        rules: per user group (``cold``/``warm``) overrides, see the module docstring.
    """

    def __init__(
        self,
        mode: str = "auto",
        top_n: int = 20,
        cold_max_events: int = 3,
        blend_alpha: float = 0.5,
        rerank_segments: Sequence[str] = ("long_tail", "new"),
        standardize: str = "zscore",
        rules: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if mode not in MODES:
            raise RerankError(f"mode= must be one of {list(MODES)}, got {mode!r}")
        if standardize not in STANDARDIZERS:
            raise RerankError(f"standardize= must be one of {list(STANDARDIZERS)}, "
                              f"got {standardize!r}")
        if top_n < 1:
            raise RerankError(f"top_n must be >= 1, got {top_n}")
        if cold_max_events < 0:
            raise RerankError(f"cold_max_events must be >= 0, got {cold_max_events}")
        if not 0.0 <= blend_alpha <= 1.0:
            raise RerankError(f"blend_alpha must be in [0, 1], got {blend_alpha}")
        if isinstance(rerank_segments, str):
            rerank_segments = (rerank_segments,)
        unknown = sorted(set(rerank_segments) - set(ITEM_SEGMENTS))
        if unknown:
            raise RerankError(f"rerank_segments must be drawn from {list(ITEM_SEGMENTS)}, "
                              f"got unknown {unknown}")
        self.mode = mode
        self.top_n = int(top_n)
        self.cold_max_events = int(cold_max_events)
        self.blend_alpha = float(blend_alpha)
        self.rerank_segments = tuple(rerank_segments)
        self.standardize = standardize
        self.rules = self._check_rules(rules or {})

    @staticmethod
    def _check_rules(rules: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        out = {}
        for group, rule in rules.items():
            if group not in USER_GROUPS or not isinstance(rule, Mapping):
                raise RerankError(f"rules must map {list(USER_GROUPS)} to objects, got "
                                  f"{group!r}: {rule!r}")
            alpha = float(rule.get("blend_alpha", 0.5))
            segments = tuple(rule.get("rerank_segments", ITEM_SEGMENTS))
            if not 0.0 <= alpha <= 1.0 or set(segments) - set(ITEM_SEGMENTS):
                raise RerankError(f"rules[{group!r}]: blend_alpha must be in [0, 1] and "
                                  f"rerank_segments drawn from {list(ITEM_SEGMENTS)}; got "
                                  f"{alpha}, {list(segments)}")
            out[group] = {"enabled": bool(rule.get("enabled", True)), "blend_alpha": alpha,
                          "rerank_segments": segments}
        return out

    def with_mode(self, mode: str) -> RerankPolicy:
        """A copy of this policy with ``mode`` (e.g. an operator's ``always`` over the run's
        ``auto``); the rules, blend weights and top-N are kept."""
        if mode not in MODES:
            raise RerankError(f"mode= must be one of {list(MODES)}, got {mode!r}")
        other = copy.copy(self)
        other.mode = mode
        return other

    def __repr__(self) -> str:
        return (f"RerankPolicy(mode={self.mode!r}, top_n={self.top_n}, "
                f"cold_max_events={self.cold_max_events}, blend_alpha={self.blend_alpha}, "
                f"rerank_segments={self.rerank_segments}, standardize={self.standardize!r}, "
                f"rules={self.rules})")

    def is_cold(self, n_item_events: int) -> bool:
        """True for a new or cold user (at most ``cold_max_events`` item events)."""
        return n_item_events <= self.cold_max_events

    def select(self, n_item_events: int, candidate_segments: Sequence[str]) -> np.ndarray:
        """Which candidates (in retrieved order) get re-scored: bool array, len(candidate_segments).

        ``n_item_events``: the session's events that name an item (searches excluded).
        ``candidate_segments``: each candidate's item segment (``head``/``long_tail``/``new``).
        """
        if n_item_events < 0:
            raise RerankError(f"n_item_events must be >= 0, got {n_item_events}")
        segments = list(candidate_segments)
        unknown = sorted(set(segments) - set(ITEM_SEGMENTS))
        if unknown:
            raise RerankError(f"candidate_segments must be drawn from {list(ITEM_SEGMENTS)}, "
                              f"got {unknown}")
        selected = np.zeros(len(segments), dtype=bool)
        if self.mode == "never":
            return selected
        head = slice(0, min(self.top_n, len(segments)))
        rule = self.rules.get("cold" if self.is_cold(n_item_events) else "warm")
        if rule is not None and self.mode == "auto":
            if rule["enabled"]:
                wanted = set(rule["rerank_segments"])
                selected[head] = [s in wanted for s in segments[head]]
            return selected
        if self.mode == "always" or self.is_cold(n_item_events):
            selected[head] = True
        else:
            wanted = set(self.rerank_segments)
            selected[head] = [s in wanted for s in segments[head]]
        return selected

    def blend(
        self,
        retrieval_scores: np.ndarray,
        rerank_scores: np.ndarray,
        selected: np.ndarray,
        n_item_events: int | None = None,
    ) -> np.ndarray:
        """Final scores for one candidate list, comparable across selected and unselected.

        ``retrieval_scores``: (n,) from the retriever. ``rerank_scores``: (n,) cross-encoder scores,
        read only where ``selected`` (other entries may be NaN). ``selected``: (n,) bool from
        :meth:`select`. ``n_item_events``: the session's, to use its user group's blend weight
        from ``rules`` (else ``blend_alpha``). Returns float64 (n,); sort by it descending.
        """
        retrieval = np.asarray(retrieval_scores, dtype=np.float64)
        rerank = np.asarray(rerank_scores, dtype=np.float64)
        selected = np.asarray(selected, dtype=bool)
        if not (retrieval.ndim == rerank.ndim == selected.ndim == 1
                and len(retrieval) == len(rerank) == len(selected)):
            raise RerankError(
                "retrieval_scores, rerank_scores and selected must be 1-D of one length (one "
                f"query's candidates); got shapes {retrieval.shape}, {rerank.shape}, "
                f"{selected.shape}"
            )
        if not np.isfinite(retrieval).all() or not np.isfinite(rerank[selected]).all():
            raise RerankError("retrieval_scores and the selected rerank_scores must be finite")
        alpha = self.alpha_for(n_item_events)
        final = standardize_scores(retrieval, self.standardize)  # (n,) r
        if selected.sum() < 2 or alpha == 0.0:
            return final  # a single re-scored item has nothing to be reordered against
        band = final[selected]
        loc, scale = _loc_scale(band, self.standardize)
        if scale <= _EPS:  # tied retrieval scores: let the reranker break the tie at unit scale
            scale = 1.0
        mapped = loc + scale * standardize_scores(rerank[selected], self.standardize)
        final[selected] = alpha * mapped + (1.0 - alpha) * band
        return final

    def alpha_for(self, n_item_events: int | None) -> float:
        """The blend weight for a session with ``n_item_events`` (None: ``blend_alpha``)."""
        if n_item_events is None:
            return self.blend_alpha
        rule = self.rules.get("cold" if self.is_cold(n_item_events) else "warm")
        return rule["blend_alpha"] if rule is not None else self.blend_alpha
