"""``Recommender``: one artifacts directory loaded once; sessions in, explained items out.

Per request: resolve the session against the catalogue -> user tower (``SessionEncoder``) ->
``CatalogueIndex.search`` of the top N = max(k, policy.top_n), history items excluded -> the
rerank policy picks candidates for the cross-encoder and blends the scores -> the top k with a
reason each (the session event closest to the item). A session with no usable event gets the
fallback: popular items mixed with new ones.

Threads: requests may run concurrently. Live edits and index searches hold one ``RLock``
(faiss must not search while its index changes); the catalogue is an immutable
``CatalogueState`` swapped whole, read with the index under the same lock, so a request never
sees an item in one but not the other. Persisted edits (:meth:`Recommender.edit_items`, see
``engine.edits``) also hold the artifacts' writer lock and commit one generation each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine import edits, loading
from engine.artifacts import ArtifactPaths
from engine.catalogue import CatalogueState
from engine.encoding import SessionEncoder
from engine.errors import ArtifactsError, SessionError
from engine.explain import because
from engine.resolve import ResolvedSession, resolve_session
from engine.session import Session, parse_session
from index import CatalogueIndex
from recdata.splits import user_segment
from rerank import Reranker, RerankPolicy
from towers import TwoTowerModel

log = logging.getLogger(__name__)

DEFAULT_K = 10
FALLBACK = "no events: popular and new items"
FRESH_EVERY = 3  # the fallback's every third item is a new one


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class Recommender:
    """Towers + index + catalogue (+ reranker): see the module docstring.

    Build with :meth:`from_artifacts`; the constructor takes loaded parts (tests, benchmarks).
    """

    def __init__(self, model: TwoTowerModel, index: CatalogueIndex, catalogue: pd.DataFrame, *,
                 reranker: Reranker | None = None, policy: RerankPolicy | None = None,
                 rerank: bool = True, fingerprint: str | None = None,
                 paths: ArtifactPaths | None = None, generation: int = 0,
                 stamp: Mapping[str, Any] | None = None, use_gpu: bool | None = None) -> None:
        if index.dim != model.dim:
            raise ArtifactsError(f"the index holds {index.dim}-d vectors but the towers make "
                                 f"{model.dim}-d ones; rebuild the index from these towers")
        self.model = model.eval()
        self.encoder = SessionEncoder(model)
        self.index = index
        self.reranker = reranker
        self.policy = policy or RerankPolicy()
        self.rerank = bool(rerank)
        self.fingerprint = fingerprint or model.fingerprint()
        self.paths = paths
        self.generation = generation  # of the serving state read from paths (engine.edits)
        self.stamp = dict(stamp or {"model_fingerprint": self.fingerprint})  # run identity
        self._use_gpu = use_gpu
        self._state = CatalogueState.from_frame(catalogue)
        self._lock = threading.RLock()
        self._tower_texts = getattr(model.item_tower, "item_texts", None)
        orphans = [i for i in index.ids if i not in self._state]
        if orphans:
            log.warning("%d indexed item(s) are not in the catalogue (e.g. %s); they are never "
                        "returned; rebuild the index", len(orphans), orphans[:3])

    @classmethod
    def from_artifacts(cls, root: str | Path, *, rerank: bool = True, use_gpu: bool | None = None,
                       policy: RerankPolicy | None = None) -> Recommender:
        """Load ``artifacts/<run>/`` once: towers, the current generation's catalogue and index,
        the reranker when present, the rerank policy from config.yaml. Parts from another
        training run than the towers (or an index built from other towers) are refused."""
        from engine.state import check_run, load_state, run_stamp

        paths = ArtifactPaths(root)
        paths.check(("towers", "catalogue", "index"))
        fingerprint = paths.check_index_matches_towers()["model_fingerprint"]
        stamp = run_stamp(paths)
        check_run(paths, ("catalogue", "index", "reranker") if rerank else ("catalogue", "index"))
        loading.check_weights(paths, rerank)
        device = loading.resolve_device(use_gpu)
        model = loading.load_model(paths, device)
        generation, parts = load_state(paths, stamp, use_gpu=use_gpu)
        reranker = loading.load_reranker(paths, device, stamp) if rerank else None
        policy = policy or loading.run_policy(paths)
        return cls(model, parts["index"], parts["catalogue"], reranker=reranker, policy=policy,
                   rerank=rerank, fingerprint=fingerprint, paths=paths, generation=generation,
                   stamp=stamp, use_gpu=use_gpu)

    def reload_state(self) -> None:
        """Re-read the catalogue and index of the artifacts' current generation (another
        writer committed): refused when the state now belongs to another training run."""
        from engine.state import load_state

        if self.paths is None:
            raise ArtifactsError("this Recommender was not loaded from an artifacts directory")
        generation, parts = load_state(self.paths, self.stamp, use_gpu=self._use_gpu)
        state = CatalogueState.from_frame(parts["catalogue"])
        with self._lock:
            self.index, self._state, self.generation = parts["index"], state, generation

    # ---- reading ------------------------------------------------------------------------
    @property
    def catalogue(self) -> pd.DataFrame:
        """The current catalogue (catalogue.parquet columns); do not modify it."""
        return self._state.frame

    @property
    def n_items(self) -> int:
        """Items the index can return."""
        return len(self.index)

    def info(self) -> dict[str, Any]:
        """What is loaded (for health endpoints and logs)."""
        return {"run": self.paths.run if self.paths else None, "items": self.n_items,
                "catalogue_items": len(self._state), "dim": self.model.dim,
                "index": self.index.factory_string, "fingerprint": self.fingerprint,
                "reranker": self.reranker is not None and self.rerank,
                "generation": self.generation, "run_id": self.stamp.get("run_id"),
                "policy": repr(self.policy), "device": str(self.model.device),
                "max_seq_len": self.encoder.max_seq_len}

    def recommend(self, session: Session | Mapping[str, Any], k: int | None = None,
                  rerank: bool | None = None) -> dict:
        """One session (a ``Session`` or its JSON dict) -> the output JSON of DESIGN.md."""
        return self.recommend_many([session], k=k, rerank=rerank)[0]

    def recommend_many(self, sessions: Sequence[Session | Mapping[str, Any]],
                       k: int | None = None, rerank: bool | None = None) -> list[dict]:
        """Many sessions: one batched user-tower pass and one index search. ``k`` overrides
        each session's own ``k`` (default DEFAULT_K); ``rerank`` overrides the loaded setting
        for this call (False: retrieval only)."""
        start = time.perf_counter()
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise SessionError(f"k must be an integer >= 1, got {k!r}")
        state, n_items = self._state, self.n_items
        resolved = []
        for obj in sessions:
            session = obj if isinstance(obj, Session) else parse_session(obj)
            want = k or session.k or DEFAULT_K
            if want > n_items:
                raise SessionError(f"{session.where()}k={want} is larger than the catalogue "
                                   f"({n_items} items); ask for at most {n_items}")
            resolved.append(resolve_session(
                session, want, state, self.model.item_index, self._tower_texts,
                self.encoder.supports_text, self.encoder.max_seq_len))
        active = [r for r in resolved if r.events]
        encode_start = time.perf_counter()
        user_emb, event_embs = (self.encoder.encode([r.events for r in active]) if active
                                else (np.zeros((0, self.model.dim), np.float32), []))
        search_start = time.perf_counter()
        ids = scores = np.zeros((0, 0))
        item_vecs: dict[str, np.ndarray] = {}
        with self._lock:  # the index and the catalogue state as of one moment
            state = self._state
            if active:
                top_n = min(len(self.index), max(max(r.k for r in active), self.policy.top_n))
                scores, ids = self.index.search(user_emb, top_n, [r.exclude for r in active])
                found = [i for i in dict.fromkeys(ids.ravel().tolist()) if i and i in state]
                item_vecs = dict(zip(found, self.index.vectors_of(found))) if found else {}
        timings = {"encode": _ms(search_start - encode_start),
                   "search": _ms(time.perf_counter() - search_start)}
        out, row = [], 0
        for r in resolved:
            if r.events:
                result = self._rank(r, ids[row], scores[row], item_vecs, event_embs[row], state,
                                    self.rerank if rerank is None else bool(rerank))
                row += 1
            else:
                result = self._fallback(r, state)
            result["timings_ms"] = {**timings, "rerank": result["timings_ms"]["rerank"],
                                    "total": _ms(time.perf_counter() - start)}
            out.append(result)
        return out

    def _rank(self, r: ResolvedSession, cand_ids: np.ndarray, cand_scores: np.ndarray,
              item_vecs: dict[str, np.ndarray], event_emb: np.ndarray,
              state: CatalogueState, use_rerank: bool) -> dict:
        keep = [j for j, i in enumerate(cand_ids) if i in item_vecs]
        cand_ids, retrieval = cand_ids[keep], cand_scores[keep].astype(np.float64)  # (N,)
        rows = state.rows(cand_ids.tolist())
        rerank_start = time.perf_counter()
        rerank_scores = np.full(len(rows), np.nan)  # (N,)
        final, reranked = retrieval, False
        if use_rerank and self.reranker is not None:
            selected = self.policy.select(r.n_item_events, state.segments[rows].tolist())
            if selected.any():
                context = self.reranker.context_text(r.hist_items, r.hist_types, r.hist_queries,
                                                     r.titles)
                rerank_scores[selected] = self.reranker.score(
                    context, state.texts[rows[selected]].tolist())
                final = self.policy.blend(retrieval, rerank_scores, selected)
                reranked = True
        elif use_rerank:
            command = (self.paths.command_for("reranker") if self.paths
                       else "python train.py stage=reranker")
            r.warnings.append(f"no reranker in the artifacts (train one with `{command}`); "
                              "results are not reranked")
        rerank_ms = _ms(time.perf_counter() - rerank_start)
        order = np.argsort(-final, kind="stable")[: r.k]
        top_ids = cand_ids[order].tolist()
        reasons = because(np.stack([item_vecs[i] for i in top_ids]) if top_ids else
                          np.zeros((0, event_emb.shape[1]), np.float32), event_emb, r.reasons)
        items = [{"rank": rank, "item_id": item_id, "title": str(state.titles[rows[j]]),
                  "score": round(float(final[j]), 6),
                  "retrieval_score": round(float(retrieval[j]), 6),
                  "rerank_score": (None if np.isnan(rerank_scores[j])
                                   else round(float(rerank_scores[j]), 6)),
                  "item_segment": str(state.segments[rows[j]]), "because": reason}
                 for rank, (j, item_id, reason) in enumerate(zip(order, top_ids, reasons), 1)]
        return self._result(r, user_segment(r.n_item_events), reranked, items, rerank_ms)

    def _fallback(self, r: ResolvedSession, state: CatalogueState) -> dict:
        excluded = set(r.exclude)
        popular = (i for i in state.popular_ids if i not in excluded and i in self.index)
        fresh = (i for i in state.fresh_ids if i not in excluded and i in self.index)
        chosen: dict[str, str] = {}
        while len(chosen) < r.k:
            first, second = ((fresh, popular) if len(chosen) % FRESH_EVERY == FRESH_EVERY - 1
                             else (popular, fresh))
            item_id = next((i for i in first if i not in chosen), None)
            kind = "fresh" if first is fresh else "popular"
            if item_id is None:
                item_id = next((i for i in second if i not in chosen), None)
                kind = "popular" if kind == "fresh" else "fresh"
            if item_id is None:
                break
            chosen[item_id] = kind
        items = []
        for rank, (item_id, kind) in enumerate(chosen.items(), start=1):
            row = state.row_of[item_id]
            reason = (f"popular with shoppers ({int(state.popularity[row])} interactions)"
                      if kind == "popular" else "new in the catalogue")
            items.append({"rank": rank, "item_id": item_id, "title": str(state.titles[row]),
                          "score": round(1.0 - (rank - 1) / r.k, 6), "retrieval_score": None,
                          "rerank_score": None, "item_segment": str(state.segments[row]),
                          "because": reason})
        result = self._result(r, "new_user", False, items, 0.0)
        result["fallback"] = FALLBACK
        return result

    @staticmethod
    def _result(r: ResolvedSession, segment: str, reranked: bool, items: list[dict],
                rerank_ms: float) -> dict:
        if len(items) < r.k:
            r.warnings.append(f"only {len(items)} item(s) left to recommend after excluding the "
                              f"session's {len(r.exclude)} history/excluded item(s); asked {r.k}")
        return {"user_id": r.session.user_id, "segment": segment, "reranked": reranked,
                "items": items, "timings_ms": {"rerank": rerank_ms}, "warnings": r.warnings}

    # ---- live edits (engine.edits) ------------------------------------------------------
    def edit_items(self, add: Sequence[Mapping[str, Any]] | pd.DataFrame | None = None,
                   remove: Sequence[str] = (), *, upsert: bool = False,
                   lock_timeout: float = edits.DEFAULT_LOCK_TIMEOUT_S, who: str | None = None,
                   loc: tuple[str | int, ...] = ("items",)) -> dict[str, Any]:
        """Remove ``remove``, add ``add`` (catalogue fields, validated by the item schema,
        embedded from text alone) and commit catalogue + index as one generation, under the
        artifacts' writer lock, after reloading what other writers committed. The path of
        ``build_index.py add=/remove=`` and the service alike. Returns a summary."""
        return edits.edit_items(self, add, remove, upsert=upsert, lock_timeout=lock_timeout,
                                who=who, loc=loc)

    def add_items(self, items: Sequence[Mapping[str, Any]] | pd.DataFrame, *,
                  upsert: bool = False) -> list[str]:
        """Add new items in memory only (searchable at once; :meth:`save` persists, or use
        :meth:`edit_items`). Ids already present raise unless ``upsert``."""
        rows, item_emb = edits.prepare_rows(self, items, "add_items")
        added, _ = edits.apply_edit(self, rows, item_emb, [], upsert)
        log.info("added %d item(s) (upsert=%s)", len(added), upsert)
        return added

    def remove_items(self, item_ids: Sequence[str]) -> int:
        """Remove items in memory only; unknown ids raise and nothing is removed."""
        _, removed = edits.apply_edit(self, None, None, edits.clean_ids(item_ids), False)
        log.info("removed %d item(s)", removed)
        return removed

    def save(self) -> None:
        """Commit the in-memory catalogue and index as a new generation; refused when another
        writer committed since this Recommender read the state (no silent overwrite)."""
        edits.save(self)
