"""CatalogueIndex: FAISS top-k search over the catalogue's item vectors, keyed by str item ids.

Interface after TFRS ``factorized_top_k``: build from ``(vectors, ids)``, then
``search(queries [num_queries, dim], k) -> (scores [num_queries, k], ids [num_queries, k])``.

- Metric: inner product on L2-normalised vectors, i.e. cosine. The index normalises *copies* of
  whatever it is given (items and queries); callers' arrays are never modified.
- A float32 copy of every stored item vector is kept beside faiss (``vectors_of``) for "because"
  explanations, exact re-scoring of IVF-PQ candidates (``refine_factor``) and rebuilds.
- faiss label r is row r of that copy (IndexIDMap2 for flat/HNSW, native labels for IVF).
  Removal: flat/IVF delete from faiss at once; HNSW graphs cannot delete, so removed HNSW rows
  are *tombstones* dropped at search time (over-fetching so rows stay full). When removed rows
  exceed ``COMPACT_FRACTION`` of all rows the index is rebuilt from the kept vectors
  (``compact``), which frees rows and tombstones (IVF keeps its trained quantizer).
- GPU: ``use_gpu=None`` uses one when faiss sees it. The CPU index stays the source of truth (it is
  what ``save`` writes and what add/remove change); the GPU copy is re-cloned on the first search
  after a change, so batch live updates. HNSW has no faiss GPU form and stays on the CPU.
- Threads: concurrent ``search`` calls are safe on the CPU; ``add``/``remove``/``compact`` must
  not run while another thread searches (a server should hold a lock around them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import faiss_backend as backend
from index import manifest as disk
from index.errors import IndexCorruptError, IndexInputError
from index.faiss_backend import KINDS
from index.inputs import (
    as_exclude,
    as_id_list,
    as_item_ids,
    as_k,
    as_vectors,
    check_positive,
    preview,
)

log = logging.getLogger(__name__)

__all__ = ["KINDS", "CatalogueIndex"]

COMPACT_FRACTION = 0.25  # rebuild once removed rows exceed this share of all rows
GPU_MAX_K = 2048  # faiss GPU top-k limit; larger over-fetches use the CPU index
_QUERY_CHUNK = 512  # queries re-scored at once by refine (bounds the (chunk, fetch, dim) gather)


class CatalogueIndex:
    """Nearest-neighbour index over item vectors with string ids, add/remove and atomic save/load.

    kind: "flat" (exact), "hnsw" (graph, ``hnsw_m`` links, ``ef_search``/``ef_construction``),
    "ivf_pq" (``nlist`` lists, ``pq_m`` bytes per vector, ``nprobe`` lists searched, optionally
    ``refine_factor`` x k candidates re-scored exactly) or "ivf_flat". IVF kinds train on the
    first vectors added (``build`` passes the whole catalogue); ``nlist=None`` picks
    min(4*sqrt(n), n/39) then.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 200,
        nlist: int | None = None,
        pq_m: int | None = None,
        nprobe: int = 64,
        refine_factor: int = 4,
        use_gpu: bool | None = None,
    ) -> None:
        check_positive(dim=dim, hnsw_m=hnsw_m, ef_search=ef_search, ef_construction=ef_construction,
                       nprobe=nprobe, refine_factor=refine_factor)
        if kind not in KINDS:
            raise IndexInputError(f"kind= must be one of {list(KINDS)}, got {kind!r}")
        if nlist is not None:
            check_positive(nlist=nlist)
        pq_m = backend.default_pq_m(dim) if pq_m is None else pq_m
        check_positive(pq_m=pq_m)
        if kind == "ivf_pq" and dim % pq_m:
            divisors = [m for m in range(1, dim + 1) if dim % m == 0]
            raise IndexInputError(f"pq_m={pq_m} must divide dim={dim}; choose from {divisors}")
        self._dim, self._kind = int(dim), kind
        self._params: dict[str, Any] = {
            "hnsw_m": hnsw_m, "ef_search": ef_search, "ef_construction": ef_construction,
            "nlist": nlist, "pq_m": pq_m, "nprobe": nprobe, "refine_factor": refine_factor,
        }
        self._use_gpu = backend.resolve_use_gpu(use_gpu, kind)
        self._index: faiss.Index | None = None  # CPU index; None until an IVF kind trains
        self._gpu_index: faiss.Index | None = None  # stale (None) after every change
        self._vectors = np.zeros((0, dim), np.float32)  # (capacity, dim); row r = faiss label r
        self._row_ids = np.full(1, "", dtype=object)  # (capacity + 1,); "" = removed or unused
        self._n_rows = 0
        self._row_of: dict[str, int] = {}  # live item id -> row
        self._n_tombstones = 0  # removed rows still inside the faiss index (HNSW only)
        self.build_time_s = 0.0
        self.built_at: str | None = None
        if kind in ("flat", "hnsw"):
            self._index = backend.new_faiss_index(self._dim, kind, self._params)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def build(
        cls, vectors: np.ndarray, ids: Sequence[str], kind: str = "flat", **kwargs: Any
    ) -> CatalogueIndex:
        """Index ``vectors`` [num_items, dim] under ``ids``; trains IVF kinds on them."""
        shape = getattr(vectors, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] == 0:
            raise IndexInputError(
                f"item_emb must be 2-D float32 (n_items, dim) with n_items >= 1; got shape "
                f"{shape}, dtype {getattr(vectors, 'dtype', type(vectors).__name__)}"
            )
        start = time.perf_counter()
        index = cls(int(shape[1]), kind, **kwargs)
        index.add(vectors, ids)
        index.build_time_s = time.perf_counter() - start
        index.built_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        log.info("built %s index over %d items in %.2fs", index.factory_string, len(index),
                 index.build_time_s)
        return index

    # --------------------------------------------------------------------------------- queries
    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per query: (scores [num_queries, k] float32, ids [num_queries, k] object).

        ``exclude[i]`` lists item ids never returned for query i; the index over-fetches so each
        row still holds k items where the catalogue allows. Rows are padded with "" / -inf.
        """
        query_emb = as_vectors(queries, self._dim, "queries", allow_zero=True)  # (Q, dim)
        k = as_k(k)
        excluded = as_exclude(exclude, len(query_emb))
        scores = np.full((len(query_emb), k), -np.inf, np.float32)  # (Q, k)
        item_ids = np.full((len(query_emb), k), "", dtype=object)  # (Q, k)
        if self._row_of and len(query_emb):
            self._search_into(query_emb, k, excluded, scores, item_ids)
        return scores, item_ids

    def _search_into(self, query_emb: np.ndarray, k: int, excluded: list[frozenset[str]] | None,
                     scores: np.ndarray, item_ids: np.ndarray) -> None:
        n_stored = self._index.ntotal
        n_excluded = max((len(s & self._row_of.keys()) for s in excluded or ()), default=0)
        fetch = min(n_stored, k + n_excluded + min(self._n_tombstones, k))
        pending = np.arange(len(query_emb))
        while len(pending):
            found_scores, found_ids, exhausted = self._fetch(query_emb[pending], fetch)  # (P, F)
            keep = found_ids != ""  # drops padding and tombstones
            if excluded is not None:
                for row, query in enumerate(pending):
                    if excluded[query]:
                        keep[row] &= np.fromiter((i not in excluded[query] for i in found_ids[row]),
                                                 bool, count=found_ids.shape[1])
            done = (keep.sum(axis=1) >= k) | exhausted | (fetch >= n_stored)
            keep, found_ids, found_scores = keep[done], found_ids[done], found_scores[done]
            first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept hits in rank order
            kept = np.take_along_axis(keep, first, axis=1)  # (D, <=k)
            rows, width = pending[done], first.shape[1]
            item_ids[rows, :width] = np.where(kept, np.take_along_axis(found_ids, first, 1), "")
            best = np.take_along_axis(found_scores, first, 1)
            scores[rows, :width] = np.where(kept, best, -np.inf)
            pending, fetch = pending[~done], min(n_stored, fetch * 2)

    def _fetch(
        self, query_emb: np.ndarray, fetch: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw top-``fetch`` (scores, ids, exhausted) with IVF-PQ candidates re-scored exactly."""
        refine = self._params["refine_factor"] if self._kind == "ivf_pq" else 1
        n_raw = min(self._index.ntotal, fetch * refine)
        found_scores, labels = self._faiss_search(query_emb, n_raw)  # (P, n_raw)
        exhausted = (labels < 0).any(axis=1)  # the probed lists held fewer than n_raw items
        if refine > 1:
            for lo in range(0, len(labels), _QUERY_CHUNK):
                chunk = labels[lo:lo + _QUERY_CHUNK]
                cand_emb = self._vectors[np.maximum(chunk, 0)]  # (C, n_raw, dim)
                exact = np.einsum("cd,cfd->cf", query_emb[lo:lo + _QUERY_CHUNK], cand_emb)
                found_scores[lo:lo + _QUERY_CHUNK] = np.where(chunk >= 0, exact, -np.inf)
            order = np.argsort(-found_scores, axis=1, kind="stable")[:, :fetch]
            found_scores = np.take_along_axis(found_scores, order, 1)
            labels = np.take_along_axis(labels, order, 1)
        return found_scores, self._row_ids[labels], exhausted  # label -1 -> sentinel ""

    def _faiss_search(self, query_emb: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._index
        if self._use_gpu and n <= GPU_MAX_K:
            if self._gpu_index is None:
                self._gpu_index = backend.to_gpu(self._index, self._kind, self._params)
                self._use_gpu = self._gpu_index is not None  # faiss refused: CPU from now on
            index = self._gpu_index or self._index
        return index.search(query_emb, n)

    # ----------------------------------------------------------------------------- live edits
    def add(self, vectors: np.ndarray, ids: Sequence[str], *, upsert: bool = False) -> None:
        """Add new items [n, dim]; ids already present raise unless ``upsert`` replaces them."""
        item_emb = as_vectors(vectors, self._dim, "item_emb")  # (n, dim)
        item_ids = as_item_ids(ids, len(item_emb))
        present = [i for i in item_ids if i in self._row_of]
        if present and not upsert:
            raise IndexInputError(
                f"{len(present)} item id(s) already in the index: {preview(present)}; remove "
                f"them first or pass upsert=True to replace their vectors"
            )
        if not item_ids:
            return
        if self._index is None:  # IVF kinds train on the first vectors added
            self._params["nlist"] = backend.resolve_nlist(self._kind, self._params["nlist"],
                                                          len(item_emb))
            self._index = backend.new_faiss_index(self._dim, self._kind, self._params, item_emb)
        if present:
            self._remove_rows(present)
        rows = self._append_rows(item_emb, item_ids)
        self._index.add_with_ids(item_emb, rows)
        self._gpu_index = None

    def remove(self, ids: Sequence[str]) -> int:
        """Remove items by id; returns how many. Unknown ids raise and nothing is removed."""
        unique = list(dict.fromkeys(as_id_list(ids)))
        unknown = [i for i in unique if i not in self._row_of]
        if unknown:
            raise IndexInputError(
                f"cannot remove {len(unknown)} item id(s) not in the index: {preview(unknown)}"
            )
        return self._remove_rows(unique)

    def compact(self) -> None:
        """Rebuild from the kept vectors of live items: frees removed rows and HNSW tombstones."""
        start = time.perf_counter()
        live = np.flatnonzero(self._row_ids[: self._n_rows] != "")
        item_emb, item_ids = self._vectors[live], self._row_ids[live]
        self._vectors = np.zeros((0, self._dim), np.float32)
        self._row_ids, self._n_rows, self._row_of = np.full(1, "", dtype=object), 0, {}
        self._index.reset()  # IVF keeps its trained quantizer; HNSW and flat start empty
        self._n_tombstones = 0
        self._index.add_with_ids(item_emb, self._append_rows(item_emb, list(item_ids)))
        self._gpu_index = None
        log.info("compacted %s index to %d items in %.2fs", self._kind, len(live),
                 time.perf_counter() - start)

    def _remove_rows(self, item_ids: list[str]) -> int:
        rows = np.array([self._row_of.pop(i) for i in item_ids], dtype=np.int64)
        self._row_ids[rows] = ""
        if self._kind == "hnsw":
            self._n_tombstones += len(rows)  # faiss HNSW has no remove_ids
        else:
            removed = self._index.remove_ids(rows)
            assert removed == len(rows), (removed, len(rows))
        self._gpu_index = None
        if self._n_rows - len(self._row_of) > COMPACT_FRACTION * self._n_rows:
            self.compact()
        return len(rows)

    def _append_rows(self, item_emb: np.ndarray, item_ids: list[str]) -> np.ndarray:
        n_new, start = len(item_emb), self._n_rows
        if start + n_new > len(self._vectors):  # grow geometrically so live adds stay cheap
            capacity = max(start + n_new, 2 * len(self._vectors))
            vectors = np.zeros((capacity, self._dim), np.float32)
            vectors[:start] = self._vectors[:start]
            row_ids = np.full(capacity + 1, "", dtype=object)  # last slot answers label -1
            row_ids[:start] = self._row_ids[:start]
            self._vectors, self._row_ids = vectors, row_ids
        rows = np.arange(start, start + n_new, dtype=np.int64)
        self._vectors[rows] = item_emb
        self._row_ids[rows] = item_ids
        self._row_of.update(zip(item_ids, rows.tolist()))
        self._n_rows += n_new
        return rows

    # ------------------------------------------------------------------------------- accessors
    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        """Stored (L2-normalised) vectors [len(ids), dim] float32, a copy; unknown ids raise."""
        item_ids = as_id_list(ids)
        unknown = [i for i in item_ids if i not in self._row_of]
        if unknown:
            raise IndexInputError(f"{len(unknown)} item id(s) not in the index: {preview(unknown)}")
        return self._vectors[[self._row_of[i] for i in item_ids]].reshape(-1, self._dim)

    reconstruct = vectors_of

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None,
                          refine_factor: int | None = None) -> None:
        """Retune the speed/recall trade-off without rebuilding (saved with the index)."""
        for name, value in (("ef_search", ef_search), ("nprobe", nprobe),
                            ("refine_factor", refine_factor)):
            if value is not None:
                check_positive(**{name: value})
                self._params[name] = int(value)
        if self._index is not None:
            backend.apply_search_params(self._index, self._kind, self._params)
        self._gpu_index = None

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of

    def __repr__(self) -> str:
        return f"CatalogueIndex({self.factory_string!r}, dim={self._dim}, items={len(self)})"

    @property
    def ids(self) -> list[str]:
        """Live item ids in insertion order (an upserted item moves to the end)."""
        return [i for i in self._row_ids[: self._n_rows].tolist() if i]

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The CPU faiss index (labels are rows, not item ids); for inspection and sharding."""
        return self._index

    @property
    def factory_string(self) -> str:
        """faiss.index_factory string, e.g. "HNSW32,Flat" (IVF: nlist fixed at training)."""
        return backend.factory_string(self._kind, self._params)

    # ------------------------------------------------------------------------------- save/load
    def save(self, directory: str | Path, manifest_extra: Mapping[str, Any] | None = None) -> Path:
        """Write the index atomically to ``directory`` (layout in ``index.manifest``)."""
        if self._index is None:
            raise IndexInputError(f"cannot save an empty {self._kind} index: add items first")
        row_ids = [i or None for i in self._row_ids[: self._n_rows].tolist()]
        return disk.write_saved(directory, self._index, row_ids, self._vectors[: self._n_rows],
                                self.manifest(manifest_extra))

    def manifest(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What ``save`` writes to manifest.json: the core keys plus ``extra``."""
        core = {
            "format_version": 1, "dim": self._dim, "metric": "inner_product",
            "normalized": True, "count": len(self), "rows": self._n_rows,
            "tombstones": self._n_tombstones, "factory": self.factory_string, "kind": self._kind,
            "params": dict(self._params), "build_time_s": round(self.build_time_s, 3),
            "built_at": self.built_at,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "faiss_version": faiss.__version__,
        }
        clash = sorted(set(extra or {}) & (set(core) | set(disk.RESERVED_KEYS)))
        if clash:
            raise IndexInputError(f"manifest_extra keys {clash} would overwrite core manifest keys")
        merged = {**core, **(extra or {})}
        try:
            json.dumps(merged)
        except TypeError as err:
            raise IndexInputError(f"manifest_extra must be JSON-serialisable: {err}") from None
        return merged

    @classmethod
    def load(cls, directory: str | Path, expect: Mapping[str, Any] | None = None,
             use_gpu: bool | None = None) -> CatalogueIndex:
        """Load a saved index; each ``expect`` key must equal the manifest's (else mismatch)."""
        saved = disk.read_saved(directory, expect)
        try:
            index = cls(saved.manifest["dim"], saved.manifest["kind"], use_gpu=use_gpu,
                        **saved.manifest["params"])
        except (KeyError, TypeError, IndexInputError) as err:
            raise IndexCorruptError(f"manifest at {saved.where} is unusable ({err}); "
                                    f"{disk.REBUILD_HINT}") from err
        index._index = saved.faiss_index
        index._vectors = np.ascontiguousarray(saved.vectors)
        index._row_ids = np.full(len(saved.row_ids) + 1, "", dtype=object)
        index._row_ids[: len(saved.row_ids)] = [i or "" for i in saved.row_ids]
        index._n_rows = len(saved.row_ids)
        index._row_of = {item_id: row for row, item_id in enumerate(saved.row_ids) if item_id}
        index._n_tombstones = index._n_rows - len(index._row_of) if index.kind == "hnsw" else 0
        index.build_time_s = float(saved.manifest.get("build_time_s") or 0.0)
        index.built_at = saved.manifest.get("built_at")
        backend.apply_search_params(index._index, index.kind, index._params)
        return index
