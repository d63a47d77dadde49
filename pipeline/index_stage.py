"""Build the serving index of a run: every catalogue item encoded by the run's towers into a
FAISS ``CatalogueIndex`` (``index``), and the ranking stage's candidate sources beside it
(``bm25``, ``zeroshot``), committed together as one generation of the serving state
(``engine.state``). ``build_index.py`` is the CLI over :func:`build`; the ranker stage
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
    """Encode the whole catalogue and commit a fresh index (and, with ``ranking``, the BM25
    index and zero-shot vectors of the ranking stage) as one new generation of the serving
    state; returns a summary. Built without the writer lock (minutes, for a large catalogue)
    and committed only if no other writer changed the state meanwhile (else
    ``storage.StaleGenerationError``, one line: run it again)."""
    from engine.loading import load_model, resolve_device
    from engine.state import load_state, run_stamp, state_store
    from index import CatalogueIndex
    from pipeline.finetune import catalogue_vectors

    paths.check(("towers", "catalogue"))
    start = time.perf_counter()
    stamp = run_stamp(paths)
    generation, parts = load_state(paths, stamp, names=("catalogue",))
    catalogue = parts["catalogue"]
    model = load_model(paths, resolve_device(index_kwargs.get("use_gpu")))
    item_ids = catalogue["item_id"].tolist()
    # trained items from the towers' table; added or upserted ones from their text (+ links)
    item_emb, _ = catalogue_vectors(model, item_ids, catalogue["text"].tolist(), catalogue,
                                    batch_size, progress)  # (n_items, dim)
    has_vector = np.abs(item_emb).sum(axis=1) > 0
    if not has_vector.all():  # an ID-only tower has no vector for items it never trained on
        log.warning("%d of %d items have no vector from these towers (ID-only towers cannot "
                    "embed items without training interactions); they are not indexed",
                    int((~has_vector).sum()), len(item_ids))
    index = CatalogueIndex.build(item_emb[has_vector],
                                 [i for i, keep in zip(item_ids, has_vector) if keep],
                                 **index_kwargs)
    changes: dict[str, Any] = {"index": index}
    summary: dict[str, Any] = {"index": index.factory_string, "items": len(index),
                               "dim": index.dim}
    if ranking:  # the ranking stage's candidate sources: BM25 and zero-shot vectors
        from pipeline.ranking_parts import build_ranking_parts

        values, more = build_ranking_parts(paths, model, item_ids, catalogue["text"].tolist(),
                                           zero_shot_model)
        changes.update(values)
        summary.update(more)
    with state_store(paths.root).writer(who=f"build_index.py run_name={paths.run}") as writer:
        gen = writer.commit(changes, expected=generation, stamp=stamp,
                            note=f"build_index: {index.factory_string}")
    summary.update(path=str(paths.index), generation=gen.number,
                   seconds=round(time.perf_counter() - start, 2))
    return summary


def ensure_index(paths: ArtifactPaths, ranking: bool = True) -> dict[str, Any] | None:
    """Build a flat index (and the ranking parts) when the run has none, or one built from
    other towers (the engine refuses a stale index), or lacks the ranking parts; returns
    build's summary, or None when everything there already matches the towers."""
    from engine.state import RANKING_PARTS, state_store

    if paths.index.exists():
        try:
            paths.check_index_matches_towers()
            store = state_store(paths.root)
            gen = store.current()
            if not ranking or (gen is not None and all(gen.has(store.part(name))
                                                       for name in RANKING_PARTS)):
                return None
            log.info("%s lacks the ranking parts: building them", paths.root)
        except ArtifactsError as err:
            log.warning("%s: rebuilding it", err)
    else:
        log.info("no index in %s: building a flat one", paths.root)
    return build(paths, {"kind": "flat", "use_gpu": None}, progress=False, ranking=ranking)
