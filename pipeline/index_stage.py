"""Build the serving index of a run: every catalogue item encoded by the run's towers into a
FAISS ``CatalogueIndex`` (``index/``), and the ranking stage's candidate sources beside it
(``bm25/``, ``zeroshot/``). ``build_index.py`` is the CLI over :func:`build`; the ranker stage
and the benchmark call :func:`ensure_index`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from engine.artifacts import ArtifactPaths
from engine.errors import ArtifactsError

log = logging.getLogger(__name__)


def build(paths: ArtifactPaths, index_kwargs: dict[str, Any], batch_size: int = 256,
          progress: bool = True, ranking: bool = True, zero_shot_model: str | None = None
          ) -> dict[str, Any]:
    """Encode the whole catalogue and save a fresh index (and, with ``ranking``, the BM25
    index and zero-shot vectors of the ranking stage); returns a summary."""
    from engine.artifacts import load_catalogue
    from engine.encoding import encode_catalogue
    from engine.loading import load_model, resolve_device
    from index import CatalogueIndex

    paths.check(("towers", "catalogue"))
    start = time.perf_counter()
    model = load_model(paths, resolve_device(index_kwargs.get("use_gpu")))
    catalogue = load_catalogue(paths.root)
    item_ids = catalogue["item_id"].tolist()
    item_emb = encode_catalogue(model, item_ids, catalogue["text"].tolist(), batch_size,
                                progress)  # (n_items, dim)
    has_vector = np.abs(item_emb).sum(axis=1) > 0
    if not has_vector.all():  # an ID-only tower has no vector for items it never trained on
        log.warning("%d of %d items have no vector from these towers (ID-only towers cannot "
                    "embed items without training interactions); they are not indexed",
                    int((~has_vector).sum()), len(item_ids))
    index = CatalogueIndex.build(item_emb[has_vector],
                                 [i for i, keep in zip(item_ids, has_vector) if keep],
                                 **index_kwargs)
    fingerprint = paths.towers_meta()["fingerprint"]
    index.save(paths.index, manifest_extra={"model_fingerprint": fingerprint, "run": paths.run})
    summary = {"index": index.factory_string, "items": len(index), "dim": index.dim,
               "path": str(paths.index)}
    if ranking:  # the ranking stage's candidate sources: BM25 and zero-shot vectors
        from pipeline.ranking_parts import build_ranking_parts

        summary.update(build_ranking_parts(paths, model, item_ids, catalogue["text"].tolist(),
                                           {"model_fingerprint": fingerprint, "run": paths.run},
                                           zero_shot_model))
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def ensure_index(paths: ArtifactPaths, ranking: bool = True) -> dict[str, Any] | None:
    """Build a flat index (and the ranking parts) when the run has none, or one built from
    other towers (the engine refuses a stale index), or lacks the ranking parts; returns
    build's summary, or None when everything there already matches the towers."""
    from pipeline.ranking_parts import BM25_DIR, ZERO_SHOT_DIR

    if paths.index.exists():
        try:
            paths.check_index_matches_towers()
            parts = [paths.root / BM25_DIR, paths.root / ZERO_SHOT_DIR]
            if not ranking or all(p.is_dir() for p in parts):
                return None
            log.info("%s lacks the ranking parts: building them", paths.root)
        except ArtifactsError as err:
            log.warning("%s: rebuilding it", err)
    else:
        log.info("no index in %s: building a flat one", paths.root)
    return build(paths, {"kind": "flat", "use_gpu": None}, progress=False, ranking=ranking)
