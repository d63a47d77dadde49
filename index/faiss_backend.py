"""The faiss side of CatalogueIndex: factory strings, training, search parameters, GPU moves."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from index.errors import IndexInputError

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")
PQ_CENTROIDS = 256  # PQ{m}x8 trains 256 centroids per sub-quantizer


def factory_string(kind: str, params: Mapping[str, Any]) -> str:
    """The faiss.index_factory string, e.g. "HNSW32,Flat" or "IVF1024,PQ64x8"."""
    nlist = params["nlist"] or "<auto>"  # IVF lists are chosen when the index trains
    return {
        "flat": "Flat",
        "hnsw": f"HNSW{params['hnsw_m']},Flat",
        "ivf_flat": f"IVF{nlist},Flat",
        "ivf_pq": f"IVF{nlist},PQ{params['pq_m']}x8",
    }[kind]


def default_nlist(n_items: int) -> int:
    """About 4*sqrt(n) lists, capped so each list gets >= 39 training points (faiss's minimum)."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // 39))


def default_pq_m(dim: int) -> int:
    """Largest divisor of dim <= min(dim // 8, 64): >= 8 dims per code byte, <= 64 bytes a vector.

    Sub-vectors under 8 dims train 10-40x slower in faiss (measured: PQ64 on 384-d 64 s vs PQ48
    1.4 s on 20k vectors, one thread); with exact re-scoring (refine_factor) the coarser code
    costs little recall.
    """
    cap = max(1, min(dim // 8, 64))
    return max(m for m in range(1, cap + 1) if dim % m == 0)


def resolve_nlist(kind: str, nlist: int | None, n_train: int) -> int:
    """nlist for an IVF kind about to train on n_train vectors; refuses too few to train."""
    nlist = nlist or default_nlist(n_train)
    needed = max(nlist, PQ_CENTROIDS if kind == "ivf_pq" else 1)
    if n_train < needed:
        raise IndexInputError(
            f"kind={kind!r} with nlist={nlist} needs at least {needed} vectors to train, got "
            f"{n_train}; use kind='flat' or 'hnsw' for a catalogue this small"
        )
    return nlist


def new_faiss_index(
    dim: int, kind: str, params: Mapping[str, Any], train_emb: np.ndarray | None = None
) -> faiss.Index:
    """An empty inner-product index taking caller-chosen int64 labels, trained for IVF kinds.

    Flat and HNSW are wrapped in IndexIDMap2. IVF kinds are not: they store labels natively and
    their own ``remove_ids`` is correct, while IDMap's remove assumes the wrapped index renumbers
    like IndexFlat does and would scramble IVF labels. For IVF kinds ``params["nlist"]`` must be
    resolved already (``resolve_nlist``).
    """
    factory = factory_string(kind, params)
    wrapper = "" if kind.startswith("ivf") else "IDMap2,"
    index = faiss.index_factory(dim, wrapper + factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = params["ef_construction"]
    if kind.startswith("ivf"):
        assert train_emb is not None, "IVF kinds train on the first vectors added"
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.min_points_per_centroid = 1  # small catalogues: no faiss warning per k-means run
        # k-means on at most 64 points a list (faiss default 256; its wiki asks for 30-256):
        # 4x less coarse training at 1M items, where 256 a list did not finish on 2 cores
        ivf.cp.max_points_per_centroid = 64
        if kind == "ivf_pq":
            ivf.pq.cp.min_points_per_centroid = 1
            ivf.do_polysemous_training = False  # unused here, and ~50x the training time
        start = time.perf_counter()
        index.train(train_emb)
        log.info("trained %s on %d vectors in %.2fs", factory, len(train_emb),
                 time.perf_counter() - start)
    apply_search_params(index, kind, params)
    return index


def apply_search_params(
    index: faiss.Index, kind: str, params: Mapping[str, Any], *, gpu: bool = False
) -> None:
    """Set efSearch (HNSW) or nprobe (IVF) through faiss's ParameterSpace (sees through IDMap2)."""
    space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
    if kind == "hnsw":
        space.set_index_parameter(index, "efSearch", params["ef_search"])
    elif kind.startswith("ivf"):
        space.set_index_parameter(index, "nprobe", params["nprobe"])


def gpu_available() -> bool:
    return (
        hasattr(faiss, "get_num_gpus")
        and hasattr(faiss, "index_cpu_to_all_gpus")
        and faiss.get_num_gpus() > 0
    )


def resolve_use_gpu(use_gpu: bool | None, kind: str) -> bool:
    """None means "when faiss sees a GPU"; True without one is an error. HNSW stays on the CPU."""
    available = gpu_available()
    if use_gpu and not available:
        raise IndexInputError(
            "use_gpu=True but faiss sees no GPU; install the GPU build "
            "(pip install 'firstclick[gpu]') or pass use_gpu=None/False"
        )
    if kind == "hnsw" and available and use_gpu is not False:
        log.info("faiss has no GPU HNSW; the hnsw index stays on the CPU")
        return False
    return bool(available if use_gpu is None else use_gpu)


def to_gpu(index: faiss.Index, kind: str, params: Mapping[str, Any]) -> faiss.Index | None:
    """A clone of the CPU index on all GPUs (replicated), or None when faiss cannot move it."""
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index)
        apply_search_params(gpu_index, kind, params, gpu=True)
        return gpu_index
    except (RuntimeError, AttributeError) as err:
        log.warning("%s cannot run on the GPU (%s); searching on the CPU",
                    factory_string(kind, params), err)
        return None
