"""``Recommender``: one artifacts directory loaded once; sessions in, explained items out.

Per request: resolve the session against the catalogue -> user tower (``SessionEncoder``) ->
``CatalogueIndex.search`` of the top N = max(k, policy.top_n), history items excluded -> the
rerank policy picks candidates for the cross-encoder and blends the scores -> the top k with a
reason each (the session event closest to the item). A session with no usable event gets the
fallback: popular items mixed with new ones.

Threads: requests may run concurrently. Live edits (``add_items``, ``remove_items``) and index
searches hold one ``RLock`` (faiss must not search while its index changes); the catalogue is
an immutable ``CatalogueState`` swapped whole, read with the index under the same lock, so a
request never sees an item in one but not the other.
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

from engine import loading
from engine.artifacts import ArtifactPaths, load_catalogue, write_catalogue
from engine.catalogue import CatalogueState, new_catalogue_rows
from engine.encoding import SessionEncoder
from engine.errors import ArtifactsError, CatalogueError, SessionError
from engine.explain import because
from engine.graph import GraphExplainer
from engine.resolve import ResolvedSession, resolve_session
from engine.session import Session, parse_session
from index import CatalogueIndex
from recdata.schema import validate_catalogue
from recdata.splits import user_segment
from recdata.text import item_text
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
                 paths: ArtifactPaths | None = None) -> None:
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
        self._state = CatalogueState.from_frame(catalogue)
        self._lock = threading.RLock()
        self._tower_texts = getattr(model.item_tower, "item_texts", None)
        self.graph = GraphExplainer.from_model(model)
        if self.graph is not None:
            added = self._state.frame.loc[~self._state.frame["item_id"].isin(model.item_index)
                                          & self._state.frame["item_id"].isin(index.ids)]
            if len(added):  # live-added items: their links and the vectors the index holds
                self._graph_add(added, self.index.vectors_of(added["item_id"].tolist()))
        orphans = [i for i in index.ids if i not in self._state]
        if orphans:
            log.warning("%d indexed item(s) are not in the catalogue (e.g. %s); they are never "
                        "returned; rebuild the index", len(orphans), orphans[:3])

    @classmethod
    def from_artifacts(cls, root: str | Path, *, rerank: bool = True, use_gpu: bool | None = None,
                       policy: RerankPolicy | None = None) -> Recommender:
        """Load ``artifacts/<run>/`` once: towers, catalogue, index (refused when built from
        other towers), the reranker when present, the rerank policy from config.yaml."""
        paths = ArtifactPaths(root)
        paths.check(("towers", "catalogue", "index"))
        fingerprint = paths.check_index_matches_towers()["model_fingerprint"]
        device = loading.resolve_device(use_gpu)
        model = loading.load_model(paths, device)
        index = loading.load_index(paths, fingerprint, use_gpu)
        catalogue = load_catalogue(paths.root)
        reranker = loading.load_reranker(paths, device) if rerank else None
        policy = policy or loading.run_policy(paths)
        return cls(model, index, catalogue, reranker=reranker, policy=policy, rerank=rerank,
                   fingerprint=fingerprint, paths=paths)

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
                                    self.rerank if rerank is None else bool(rerank),
                                    user_emb[row])
                row += 1
            else:
                result = self._fallback(r, state)
            result["timings_ms"] = {**timings, "rerank": result["timings_ms"]["rerank"],
                                    "total": _ms(time.perf_counter() - start)}
            out.append(result)
        return out

    def _rank(self, r: ResolvedSession, cand_ids: np.ndarray, cand_scores: np.ndarray,
              item_vecs: dict[str, np.ndarray], event_emb: np.ndarray,
              state: CatalogueState, use_rerank: bool,
              user_emb: np.ndarray | None = None) -> dict:
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
        if self.graph is not None and user_emb is not None and top_ids:
            threshold = float(retrieval[r.k]) if len(retrieval) > r.k else float("-inf")
            session_items = [(i, t, r.titles.get(i, i)) for i, t in zip(r.hist_items,
                                                                         r.hist_types)
                             if i is not None and not i.startswith("inline:")]
            graph_reasons = self.graph.reasons(user_emb, top_ids, retrieval[order], threshold,
                                               session_items)
            reasons = [g or reason for g, reason in zip(graph_reasons, reasons)]
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

    # ---- live edits ---------------------------------------------------------------------
    def add_items(self, items: Sequence[Mapping[str, Any]] | pd.DataFrame, *,
                  upsert: bool = False) -> list[str]:
        """Add new catalogue items (catalogue fields, at least item_id and title), embedded from
        their text alone; they are searchable at once. Ids already in the catalogue raise
        CatalogueError unless ``upsert`` replaces their fields and vectors (popularity and
        segment kept). Call :meth:`save` to persist. Returns the added ids."""
        rows = new_catalogue_rows(items, source="add_items")
        ids = rows["item_id"].tolist()
        present = [i for i in ids if i in self._state]
        if present and not upsert:
            raise CatalogueError(f"{len(present)} item id(s) already in the catalogue: "
                                 f"{present[:5]}; remove them first or add with upsert=True")
        if not self.encoder.supports_text:
            raise CatalogueError("this run's item tower is ID-only (tower=id): it cannot embed "
                                 "new items from text; retrain with a text tower to add items")
        links = None
        if self.graph is not None:  # the entities their fields name, as in training
            fields = validate_catalogue(items if isinstance(items, pd.DataFrame)
                                        else pd.DataFrame([dict(i) for i in items]), "add_items")
            links = self.graph.links_for(fields)
        item_emb = self.model.item_emb_from_texts(rows["text"].tolist(), links)  # (n, dim)
        with self._lock:
            state = self._state.with_rows(rows, replace=upsert)
            self.index.add(item_emb, ids, upsert=upsert)
            self._state = state
            if self.graph is not None:
                self._graph_add(rows, item_emb, links)
        log.info("added %d item(s) (upsert=%s)", len(ids), upsert)
        return ids

    def remove_items(self, item_ids: Sequence[str]) -> int:
        """Remove items from the index and the catalogue; unknown ids raise CatalogueError and
        nothing is removed. Call :meth:`save` to persist. Returns how many were removed."""
        if isinstance(item_ids, str) or not all(isinstance(i, str) for i in item_ids):
            raise CatalogueError(f"remove: expected a list of item id strings, got {item_ids!r}")
        ids = list(dict.fromkeys(i.strip() for i in item_ids))
        with self._lock:
            unknown = [i for i in ids if i not in self._state and i not in self.index]
            if unknown:
                raise CatalogueError(f"cannot remove {len(unknown)} item id(s) that are not in "
                                     f"the catalogue: {unknown[:5]}")
            gone = self._state.frame.loc[self._state.frame["item_id"].isin(ids), "text"]
            state = self._state.without(ids)
            indexed = [i for i in ids if i in self.index]
            if indexed:
                self.index.remove(indexed)
            self._state = state
            if self.graph is not None:
                self.graph.remove(ids)
                self.encoder.unpin([item_text({"title": t}) for t in gone])
        log.info("removed %d item(s)", len(ids))
        return len(ids)

    def _graph_add(self, rows: pd.DataFrame, item_emb: np.ndarray,
                   links: list | None = None) -> None:
        """Register live-added items with the graph explainer, and pin their indexed vectors
        for sessions that name them (their text alone lacks the entity part)."""
        assert self.graph is not None
        links = links if links is not None else self.graph.links_for(rows)
        texts = rows["text"].astype(str).tolist()
        self.graph.add(rows["item_id"].astype(str).tolist(), texts, links)
        self.encoder.pin([item_text({"title": t}) for t in texts], item_emb)

    def save(self) -> None:
        """Persist the index and the catalogue into the artifacts directory, each atomically."""
        if self.paths is None:
            raise ArtifactsError("this Recommender was not loaded from an artifacts directory; "
                                 "build it with Recommender.from_artifacts to save")
        with self._lock:
            self.index.save(self.paths.index, manifest_extra={
                "model_fingerprint": self.fingerprint, "run": self.paths.run})
            write_catalogue(self.paths.catalogue, self._state.frame)
