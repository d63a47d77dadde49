"""``Recommender``: one artifacts directory loaded once; sessions in, explained items out.

Per request: resolve the session against the catalogue -> user tower (``SessionEncoder``) ->
the ranking stage (``engine.ranking``: candidate sources — the towers' FAISS index, BM25,
zero-shot text, popular and new items — merged, featurised and ordered by the run's ranker,
or by the towers' score when the run has no ranking parts) -> the rerank policy picks
candidates for the cross-encoder and blends the scores -> the top k with a reason each (the
deciding signal's phrase). A session with no usable event gets the fallback: popular items
mixed with new ones.

Timings: each result's ``timings_ms`` are that session's own. Stages run once for a whole
batch (``encode``, ``search`` = sources + merge, ``rank`` = features + scorer) are shared
equally among its sessions; ``rerank`` and the session's own work are its alone; ``total`` is
the sum; ``batch_size`` says how many shared the batch.

Threads: requests may run concurrently. Live edits and the ranking of a batch hold one
``RLock`` (faiss must not search while its index changes); the catalogue is an immutable
``CatalogueState`` swapped whole, read with the indexes under the same lock, so a request never
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
from engine.counts import InteractionCounts
from engine.encoding import SessionEncoder
from engine.errors import ArtifactsError, SessionError
from engine.explain import (
    because,
    brand_phrase,
    repeat_phrase,
    signal_of_each,
    signal_reason,
)
from engine.graph import GraphExplainer, edited_rows
from engine.ranking import TextVectors, build_pipeline, session_batch
from engine.resolve import ResolvedSession, resolve_session
from engine.session import Session, parse_session
from index import CatalogueIndex
from ranking import FEATURES, SIGNAL_OF, RankedSession
from recdata.splits import user_segment
from recdata.text import item_text
from rerank import Reranker, RerankPolicy
from towers import TwoTowerModel

log = logging.getLogger(__name__)

DEFAULT_K = 10
FALLBACK = "no events: popular and new items"
FRESH_EVERY = 3  # the fallback's every third item is a new one
SOURCES_REPORTED = ("towers", "bm25", "zero_shot", "popularity", "fresh", "session")


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _popular_reason(trained: int, item_id: str, counts: InteractionCounts | None) -> str:
    if counts is None:
        return f"popular with shoppers ({trained} interactions)"
    total, recent = counts.get(item_id)
    hours = counts.window_s // 3600
    return (f"popular with shoppers ({trained + total} interactions, {recent} in the last "
            f"{hours} h)")


class Recommender:
    """Towers + index + catalogue (+ reranker): see the module docstring.

    Build with :meth:`from_artifacts`; the constructor takes loaded parts (tests, benchmarks).
    """

    def __init__(self, model: TwoTowerModel, index: CatalogueIndex, catalogue: pd.DataFrame, *,
                 reranker: Reranker | None = None, policy: RerankPolicy | None = None,
                 rerank: bool = True, fingerprint: str | None = None,
                 paths: ArtifactPaths | None = None, ranking: Any = None,
                 scorer: str = "auto", candidates: Mapping[str, Any] | None = None,
                 generation: int = 0, stamp: Mapping[str, Any] | None = None,
                 use_gpu: bool | None = None) -> None:
        if index.dim != model.dim:
            raise ArtifactsError(f"the index holds {index.dim}-d vectors but the towers make "
                                 f"{model.dim}-d ones; rebuild the index from these towers")
        self.model = model.eval()
        self.rerank_mode: str | None = None  # an override of the policy's mode (from_artifacts)
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
        # live interaction counts (engine.counts), set by the service; the fallback uses them
        self.counts: InteractionCounts | None = None
        self._tower_texts = getattr(model.item_tower, "item_texts", None)
        self.ranking_parts, self.scorer_name = ranking, scorer
        self.candidates = candidates
        self._text_vectors = (TextVectors(ranking.encoder.encode) if ranking is not None
                              else None)
        self.pipeline = build_pipeline(index, ranking, scorer, self._text_vectors, candidates)
        self.graph = GraphExplainer.from_model(model)
        self._graph_live: dict[str, str] = {}  # live-added item id -> its pinned text
        self._graph_sync()
        orphans = [i for i in index.ids if i not in self._state]
        if orphans:
            log.warning("%d indexed item(s) are not in the catalogue (e.g. %s); they are never "
                        "returned; rebuild the index", len(orphans), orphans[:3])

    @classmethod
    def from_artifacts(cls, root: str | Path, *, rerank: bool = True, use_gpu: bool | None = None,
                       policy: RerankPolicy | None = None, scorer: str = "auto",
                       candidates: Mapping[str, Any] | None = None,
                       ranker_dir: str | Path | None = None,
                       rerank_mode: str | None = None) -> Recommender:
        """Load ``artifacts/<run>/`` once: towers, the current generation's catalogue, index and
        ranking parts (BM25, zero-shot vectors) when present, the ranker and the reranker when
        present, the rerank policy from config.yaml. Parts from another training run than the
        towers (or an index built from other towers) are refused. ``rerank_mode`` (``auto``,
        ``always``, ``never``) overrides the policy's mode (kept as ``self.rerank_mode``, so a
        reload can pass it on)."""
        from engine.state import RANKING_PARTS, check_run, load_state, run_stamp
        from pipeline.ranking_parts import load_ranking_parts

        paths = ArtifactPaths(root)
        paths.check(("towers", "catalogue", "index"))
        fingerprint = paths.check_index_matches_towers()["model_fingerprint"]
        stamp = run_stamp(paths)
        check_run(paths, ("catalogue", "index", "reranker") if rerank else ("catalogue", "index"))
        loading.check_weights(paths, rerank)
        device = loading.resolve_device(use_gpu)
        model = loading.load_model(paths, device)
        generation, parts = load_state(paths, stamp, use_gpu=use_gpu, optional=RANKING_PARTS)
        reranker = loading.load_reranker(paths, device, stamp) if rerank else None
        policy = policy or loading.run_policy(paths)
        if rerank_mode is not None:
            policy = policy.with_mode(rerank_mode)
        ranking = (load_ranking_parts(paths, model, ranker_dir=ranker_dir, bm25=parts["bm25"],
                                      zero_shot=parts["zeroshot"])
                   if parts["bm25"] is not None and parts["zeroshot"] is not None else None)
        engine = cls(model, parts["index"], parts["catalogue"], reranker=reranker,
                     policy=policy, rerank=rerank, fingerprint=fingerprint, paths=paths,
                     ranking=ranking, scorer=scorer, candidates=candidates,
                     generation=generation, stamp=stamp, use_gpu=use_gpu)
        engine.rerank_mode = rerank_mode
        return engine

    def reload_state(self) -> None:
        """Re-read the serving state of the artifacts' current generation (another writer
        committed): refused when it now belongs to another training run."""
        from engine.state import RANKING_PARTS, load_state

        if self.paths is None:
            raise ArtifactsError("this Recommender was not loaded from an artifacts directory")
        generation, parts = load_state(self.paths, self.stamp, use_gpu=self._use_gpu,
                                       optional=RANKING_PARTS)
        state = CatalogueState.from_frame(parts["catalogue"])
        with self._lock:
            self.index, self._state, self.generation = parts["index"], state, generation
            ranking = self.ranking_parts
            if ranking is not None and parts["bm25"] is not None and parts["zeroshot"]:
                ranking.bm25, ranking.zero_shot = parts["bm25"], parts["zeroshot"].index
                ranking.zero_shot_meta = dict(parts["zeroshot"].meta)
            self.pipeline = build_pipeline(self.index, ranking, self.scorer_name,
                                           self._text_vectors, self.candidates)
            self._graph_sync()

    def state_values(self) -> dict[str, Any]:
        """What a commit of this Recommender's serving state writes (engine.state parts)."""
        values: dict[str, Any] = {"catalogue": self._state.frame, "index": self.index}
        if self.ranking_parts is not None:
            values.update(self.ranking_parts.state_values())
        return values

    # ---- reading ------------------------------------------------------------------------
    @property
    def catalogue(self) -> pd.DataFrame:
        """The current catalogue (catalogue.parquet columns); do not modify it."""
        return self._state.frame

    @property
    def n_items(self) -> int:
        """Items the index can return."""
        return len(self.index)

    def popular_ids(self) -> tuple[str, ...]:
        """Items by popularity: live counts first when attached (``engine.counts``), else
        training popularity; what the fallback's "popular" slots draw from."""
        state = self._state
        return self.counts.popular_order(state) if self.counts is not None else state.popular_ids

    def info(self) -> dict[str, Any]:
        """What is loaded (for health endpoints and logs)."""
        return {"run": self.paths.run if self.paths else None, "items": self.n_items,
                "catalogue_items": len(self._state), "dim": self.model.dim,
                "index": self.index.factory_string, "fingerprint": self.fingerprint,
                "reranker": self.reranker is not None and self.rerank,
                "generation": self.generation, "run_id": self.stamp.get("run_id"),
                "scorer": getattr(self.pipeline.scorer, "name", "towers"),
                "sources": sorted(self.pipeline.sources),
                "policy": repr(self.policy), "device": str(self.model.device),
                "max_seq_len": self.encoder.max_seq_len}

    def recommend(self, session: Session | Mapping[str, Any], k: int | None = None,
                  rerank: bool | None = None, repeats: bool = False) -> dict:
        """One session (a ``Session`` or its JSON dict) -> the output JSON of DESIGN.md."""
        return self.recommend_many([session], k=k, rerank=rerank, repeats=repeats)[0]

    def resolve(self, sessions: Sequence[Session | Mapping[str, Any]], k: int | None = None
                ) -> list[ResolvedSession]:
        """Parse and check sessions against the catalogue and the towers (no model work)."""
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
        return resolved

    def rank_resolved(self, resolved: Sequence[ResolvedSession], repeats: bool = False,
                      request_ts: Sequence[float] | None = None
                      ) -> tuple[list[RankedSession], np.ndarray, CatalogueState,
                                 list[np.ndarray], dict[str, float]]:
        """The ranking stage for sessions with events: (ranked candidates per session, their
        user vectors (n, dim), the catalogue state they were ranked against, each session's
        event vectors, the batch's stage seconds). ``repeats``: history items may return;
        ``request_ts``: each session's time (default now), for item ages."""
        clock = time.perf_counter()
        user_emb, event_embs = (self.encoder.encode([r.events for r in resolved]) if resolved
                                else (np.zeros((0, self.model.dim), np.float32), []))
        stages = {"encode": time.perf_counter() - clock}
        with self._lock:  # the indexes and the catalogue state as of one moment
            state = self._state
            batch = session_batch(resolved, user_emb, state.row_of, repeats)
            now = [time.time()] * len(resolved) if request_ts is None else list(request_ts)
            ranked = self.pipeline.rank(batch, state, request_ts=now)
            stages["search"] = self.pipeline.timings.get("sources", 0.0)
            stages["rank"] = self.pipeline.timings.get("features_and_scorer", 0.0)
        return ranked, user_emb, state, event_embs, stages

    def score_all(self, resolved: Sequence[ResolvedSession], source: str = "towers",
                  user_emb: np.ndarray | None = None) -> tuple[np.ndarray, CatalogueState]:
        """One candidate source's scores of every catalogue item (n, n_rows) for sessions with
        events, and the catalogue state whose rows the columns are (full-ranking baselines)."""
        if source not in self.pipeline.sources:
            raise ArtifactsError(f"no {source!r} source in this run (sources: "
                                 f"{sorted(self.pipeline.sources)}); build the ranking parts "
                                 "with build_index.py")
        if user_emb is None:
            user_emb = self.encoder.encode([r.events for r in resolved])[0]
        with self._lock:
            state = self._state
            batch = session_batch(resolved, user_emb, state.row_of, False)
            return self.pipeline.sources[source].prepare(batch, state).score_all(), state

    def recommend_many(self, sessions: Sequence[Session | Mapping[str, Any]],
                       k: int | None = None, rerank: bool | None = None,
                       repeats: bool = False) -> list[dict]:
        """Many sessions: one batched user-tower pass and one ranking pass. ``k`` overrides
        each session's own ``k`` (default DEFAULT_K); ``rerank`` overrides the loaded setting
        for this call (False: no cross-encoder); ``repeats`` lets history items return."""
        start = time.perf_counter()
        resolved = self.resolve(sessions, k)
        active = [r for r in resolved if r.events]
        ranked, user_emb, state, event_embs, stages = self.rank_resolved(active, repeats)
        share = {name: _ms(seconds / max(1, len(resolved))) for name, seconds in stages.items()}
        resolve_ms = _ms((time.perf_counter() - start - sum(stages.values()))
                         / max(1, len(resolved)))
        out, row = [], 0
        for r in resolved:
            own = time.perf_counter()
            if r.events:
                result = self._rank(r, ranked[row], event_embs[row], state,
                                    self.rerank if rerank is None else bool(rerank),
                                    user_emb[row])
                row += 1
            else:
                result = self._fallback(r, state)
            timings = {"encode": share.get("encode", 0.0), "search": share.get("search", 0.0),
                       "rank": share.get("rank", 0.0), "rerank": result["timings_ms"]["rerank"]}
            # the shared stages' share, then the session's own time (its rerank included)
            timings["total"] = round(timings["encode"] + timings["search"] + timings["rank"]
                                     + resolve_ms + _ms(time.perf_counter() - own), 3)
            result["timings_ms"] = {**timings, "batch_size": len(resolved)}
            out.append(result)
        return out

    def rerank_candidates(self, r: ResolvedSession, ranked: RankedSession,
                          state: CatalogueState, use_rerank: bool) -> dict[str, Any]:
        """The rerank policy over one session's ranked candidates: the cross-encoder re-scores
        the ones the policy picks and its score is blended into the final one. Returns the
        candidates (``rows``, ``final``, ``features``, ``rerank_scores``, best first is NOT
        implied: sort by ``final``), ``reranked`` and ``rerank_ms``."""
        vectors = ranked.item_vectors
        keep = (~np.isnan(vectors).any(axis=1) if vectors is not None else
                np.fromiter((state.ids[j] in self.index for j in ranked.rows), bool,
                            count=len(ranked.rows)))
        rows, final = ranked.rows[keep], ranked.scores[keep].astype(np.float64)
        rerank_start = time.perf_counter()
        rerank_scores = np.full(len(rows), np.nan)  # (N,)
        reranked = False
        if use_rerank and self.reranker is not None and len(rows):
            selected = self.policy.select(r.n_item_events, state.segments[rows].tolist())
            if selected.any():
                context = self.reranker.context_text(r.hist_items, r.hist_types, r.hist_queries,
                                                     r.titles)
                rerank_scores[selected] = self.reranker.score(
                    context, state.texts[rows[selected]].tolist())
                final = self.policy.blend(final, rerank_scores, selected, r.n_item_events)
                reranked = True
        elif use_rerank and self.reranker is None:
            command = (self.paths.command_for("reranker") if self.paths
                       else "python train.py stage=reranker")
            r.warnings.append(f"no reranker in the artifacts (train one with `{command}`); "
                              "results are not reranked")
        return {"rows": rows, "final": final, "features": ranked.features[keep],
                "vectors": None if vectors is None else vectors[keep],
                "ranks": {k: v[keep] for k, v in ranked.ranks.items()},
                "rerank_scores": rerank_scores, "reranked": reranked,
                "rerank_ms": _ms(time.perf_counter() - rerank_start)}

    def _rank(self, r: ResolvedSession, ranked: RankedSession, event_emb: np.ndarray,
              state: CatalogueState, use_rerank: bool,
              user_emb: np.ndarray | None = None) -> dict:
        cand = self.rerank_candidates(r, ranked, state, use_rerank)
        rows, final, features = cand["rows"], cand["final"], cand["features"]
        rerank_scores, reranked = cand["rerank_scores"], cand["reranked"]
        retrieval = features[:, FEATURES.index("towers_score")].astype(np.float64)
        order = np.argsort(-final, kind="stable")[: r.k]
        signals = self._signals(features, order,
                                reranked and not np.isnan(rerank_scores[order]).all())
        reasons = self._reasons(r, rows[order], cand["vectors"][order], signals, event_emb,
                                state)
        if self.graph is not None and user_emb is not None and len(order):
            reasons = self._graph_reasons(r, state, rows[order], retrieval, order, user_emb,
                                          reasons)
        sources = {name: cand["ranks"][name][order] for name in SOURCES_REPORTED
                   if name in cand["ranks"]}
        items = [{"rank": rank, "item_id": str(state.ids[row]), "title": str(state.titles[row]),
                  "score": round(float(final[j]), 6),
                  "retrieval_score": (None if np.isnan(retrieval[j])
                                      else round(float(retrieval[j]), 6)),
                  "rerank_score": (None if np.isnan(rerank_scores[j])
                                   else round(float(rerank_scores[j]), 6)),
                  "item_segment": str(state.segments[row]), "because": reason,
                  "signal": signal,
                  "sources": [name for name, ranks in sources.items()
                              if not np.isnan(ranks[pos])]}
                 for pos, (rank, j, row, (signal, reason)) in enumerate(
                     zip(range(1, len(order) + 1), order, rows[order], reasons))]
        return self._result(r, user_segment(r.n_item_events), reranked, items,
                            cand["rerank_ms"])

    def _reasons(self, r: ResolvedSession, rows: np.ndarray, vectors: np.ndarray,
                 signals: list[str], event_emb: np.ndarray, state: CatalogueState
                 ) -> list[tuple[str, str]]:
        """(deciding signal, phrase) of each shown item (module docstring); ``vectors`` are
        the items' towers vectors as of the ranking."""
        if not len(rows):
            return []
        ids = [str(state.ids[j]) for j in rows]
        closest = because(vectors, event_emb, r.reasons)
        query = next((q for t, q in zip(reversed(r.hist_types), reversed(r.hist_queries))
                      if t == "search" and q), None)
        history = [(i, t) for i, t in zip(r.hist_items, r.hist_types)
                   if i is not None and i in state]
        out = []
        for row, item_id, signal, near in zip(rows, ids, signals, closest):
            brand = state.brands[row]
            brand_event = next((brand_phrase(t, str(state.titles[state.row_of[i]]))
                                for i, t in reversed(history) if isinstance(brand, str)
                                and i != item_id and state.brands[state.row_of[i]] == brand),
                               None)
            repeat = next((repeat_phrase(t) for i, t in reversed(history) if i == item_id), None)
            category = state.categories[row]
            leaf = (category.split(" > ")[-1] if isinstance(category, str) and category
                    else None)
            out.append((signal, signal_reason(
                signal, closest=near, query=query, brand_event=brand_event, category=leaf,
                popularity=int(state.popularity[row]), repeat_event=repeat)))
        return out

    def _signals(self, features: np.ndarray, shown: np.ndarray, reranked: bool) -> list[str]:
        """The deciding signal of each shown row (``shown`` indexes ``features``, all of the
        session's candidates): the ranker's largest contribution (SHAP values), the fusion's
        largest weighted z-scored term, else the towers."""
        scorer = self.pipeline.scorer
        if reranked:
            return ["cross_encoder"] * len(shown)
        if hasattr(scorer, "contributions"):
            return signal_of_each(scorer.contributions(features[shown]), FEATURES, SIGNAL_OF)
        if hasattr(scorer, "weights"):
            from ranking.scorers import COLUMN, zscore

            names = [n for n, w in scorer.weights.items() if w]
            terms = np.column_stack([scorer.weights[n] * zscore(features[:, COLUMN[n]])
                                     for n in names])
            return signal_of_each(terms[shown], names, SIGNAL_OF)
        return ["towers"] * len(shown)

    def _fallback(self, r: ResolvedSession, state: CatalogueState) -> dict:
        excluded = set(r.exclude)
        counts = self.counts
        ranked = counts.popular_order(state) if counts is not None else state.popular_ids
        popular = (i for i in ranked if i not in excluded and i in self.index)
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
            reason = (_popular_reason(int(state.popularity[row]), item_id, counts)
                      if kind == "popular" else "new in the catalogue")
            items.append({"rank": rank, "item_id": item_id, "title": str(state.titles[row]),
                          "score": round(1.0 - (rank - 1) / r.k, 6), "retrieval_score": None,
                          "rerank_score": None, "item_segment": str(state.segments[row]),
                          "because": reason, "signal": kind.replace("popular", "popularity"),
                          "sources": [kind.replace("popular", "popularity")]})
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

    def set_scorer(self, scorer: str) -> None:
        """Serve with another scorer (``engine.ranking.SCORERS``) from now on."""
        with self._lock:
            self.pipeline = build_pipeline(self.index, self.ranking_parts, scorer,
                                           self._text_vectors, self.candidates)
            self.scorer_name = scorer

    # ---- live edits (engine.edits) ------------------------------------------------------
    def edit_items(self, add: Sequence[Mapping[str, Any]] | pd.DataFrame | None = None,
                   remove: Sequence[str] = (), *, upsert: bool = False,
                   lock_timeout: float = edits.DEFAULT_LOCK_TIMEOUT_S, who: str | None = None,
                   loc: tuple[str | int, ...] = ("items",)) -> dict[str, Any]:
        """Remove ``remove``, add ``add`` (catalogue fields, validated by the item schema,
        embedded from text alone) and commit the serving state (catalogue, index, BM25,
        zero-shot vectors) as one generation, under the artifacts' writer lock, after reloading
        what other writers committed. The path of ``build_index.py add=/remove=`` and the
        service alike. Returns a summary."""
        return edits.edit_items(self, add, remove, upsert=upsert, lock_timeout=lock_timeout,
                                who=who, loc=loc)

    def add_items(self, items: Sequence[Mapping[str, Any]] | pd.DataFrame, *,
                  upsert: bool = False) -> list[str]:
        """Add new items in memory only (searchable at once; :meth:`save` persists, or use
        :meth:`edit_items`). Ids already present raise unless ``upsert``."""
        prepared = edits.prepare_rows(self, items, "add_items")
        added, _ = edits.apply_edit(self, prepared, [], upsert)
        self._rebuild_bm25(self._state)
        log.info("added %d item(s) (upsert=%s)", len(added), upsert)
        return added

    def _rebuild_bm25(self, state: CatalogueState) -> None:
        """BM25 over the catalogue after an edit (bm25s cannot update in place); requests in
        between use the previous BM25, which never returns an item the catalogue lacks."""
        parts = self.ranking_parts
        if parts is None:
            return
        from ranking import BM25Index

        bm25 = BM25Index.build(state.ids.tolist(), state.texts.tolist()) if len(state) else None
        with self._lock:
            if self._state is state and bm25 is not None:
                parts.bm25 = bm25
                self.pipeline = build_pipeline(self.index, parts, self.scorer_name,
                                               self._text_vectors, self.candidates)

    def remove_items(self, item_ids: Sequence[str]) -> int:
        """Remove items in memory only; unknown ids raise and nothing is removed."""
        _, removed = edits.apply_edit(self, None, edits.clean_ids(item_ids), False)
        self._rebuild_bm25(self._state)
        log.info("removed %d item(s)", removed)
        return removed

    # ---- the item knowledge graph (engine.graph) -----------------------------------------
    def _graph_reasons(self, r: ResolvedSession, state: CatalogueState, shown: np.ndarray,
                       retrieval: np.ndarray, order: np.ndarray, user_emb: np.ndarray,
                       reasons: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The graph's phrase for shown items the towers decided (signal ``towers``) whose
        towers score, without their entity part, falls below the (k+1)-th best towers score
        of the session's candidates; other reasons are kept."""
        assert self.graph is not None
        towers = np.where(np.isnan(retrieval), -np.inf, retrieval)  # (N,)
        ranked = np.sort(towers)[::-1]
        threshold = float(ranked[r.k]) if len(ranked) > r.k else float("-inf")
        session_items = [(i, t, r.titles.get(i, i)) for i, t in zip(r.hist_items, r.hist_types)
                         if i is not None and not i.startswith("inline:")]
        ids = [str(state.ids[j]) for j in shown]
        graph = self.graph.reasons(user_emb, ids, towers[order], threshold, session_items)
        return [(signal, g) if g and signal == "towers" and np.isfinite(towers[j])
                else (signal, reason)
                for (signal, reason), g, j in zip(reasons, graph, order)]

    def _graph_sync(self) -> None:
        """Register the state's live-added and live-upserted items (indexed; not in the towers,
        or in them with links kept in the catalogue) with the graph explainer and pin the
        vectors the index holds for them (at load and after a reload)."""
        if self.graph is None:
            return
        self.graph.reset()  # the towers' items as trained, upserted ones included
        self._graph_live = {}
        self.encoder.unpin_all()
        frame = self._state.frame
        added = frame.loc[edited_rows(self.model, frame) & frame["item_id"].isin(self.index.ids)]
        if len(added):  # their links as added (else from the fields), vectors from the index
            self._graph_add(added, self.index.vectors_of(added["item_id"].tolist()),
                            self.graph.links_of_rows(added))

    def _graph_add(self, rows: pd.DataFrame, item_emb: np.ndarray,
                   links: list | None = None) -> None:
        """Register live-added items with the graph explainer, and pin their indexed vectors
        for sessions that name them (their text alone lacks the entity part)."""
        assert self.graph is not None
        links = links if links is not None else self.graph.links_for(rows)
        ids = rows["item_id"].astype(str).tolist()
        texts = rows["text"].astype(str).tolist()
        self.graph.add(ids, texts, links)
        pinned = [item_text({"title": t}) for t in texts]
        self.encoder.pin(pinned, item_emb)
        self._graph_live.update(zip(ids, pinned))

    def _graph_drop(self, item_ids: Sequence[str], texts: Sequence[str]) -> None:
        """Items removed or replaced: out of the graph explainer, their texts unpinned."""
        if self.graph is None or not item_ids:
            return
        self.graph.remove(list(item_ids))
        self.encoder.unpin([item_text({"title": t}) for t in texts])
        for i in item_ids:
            self._graph_live.pop(i, None)

    def save(self) -> None:
        """Commit the in-memory serving state as a new generation; refused when another writer
        committed since this Recommender read the state (no silent overwrite)."""
        edits.save(self)
