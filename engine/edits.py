"""Live catalogue edits of a ``Recommender``: in memory, and persisted as one generation.

:func:`edit_items` is the one persisted edit path: ``build_index.py add=/remove=`` and the
service's ``POST /items`` / ``DELETE /items/{id}`` both call it (through
``Recommender.edit_items``). It

1. validates the new items (``engine.items``) and embeds them from their text, outside every
   lock (the model pass is the slow part);
2. takes the artifacts' writer lock (``storage.lock``; waits at most ``lock_timeout`` seconds,
   then raises ``WriterBusyError``);
3. if another writer committed since this Recommender read the state (another process, e.g.
   ``build_index.py add=`` beside a running service), reloads the catalogue and index from disk
   first -- so its edit applies on top of theirs, never over them;
4. checks the ids (unknown removals, existing adds without upsert) against that state, applies
   the edit in memory (catalogue, towers' index, zero-shot vectors; BM25 rebuilt), and commits
   every part of the serving state as one new generation (``storage.generations``): a crash at
   any instant leaves the old state or the new one. If the commit fails, memory is reloaded
   from disk, so it never disagrees with what is saved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.artifacts import links_json
from engine.catalogue import catalogue_rows_of, new_item_fields
from engine.errors import (
    ArtifactsError,
    CatalogueError,
    DuplicateItemError,
    UnknownItemError,
    WriterBusyError,
)
from storage import LockTimeout, StaleGenerationError
from storage.lock import DEFAULT_TIMEOUT_S

if TYPE_CHECKING:
    from engine.recommender import Recommender

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = DEFAULT_TIMEOUT_S  # 60 s, as every CLI writer


def clean_ids(item_ids: Sequence[str]) -> list[str]:
    if isinstance(item_ids, str) or not all(isinstance(i, str) for i in item_ids):
        raise CatalogueError(f"remove: expected a list of item id strings, got {item_ids!r}")
    return list(dict.fromkeys(i.strip() for i in item_ids))


@dataclass
class NewItems:
    """Validated new items and their vectors, computed before any lock is taken."""

    rows: pd.DataFrame  # catalogue.parquet rows
    item_emb: np.ndarray  # (n, dim) towers' vectors (text, + the entity part with a graph)
    zero_shot_emb: np.ndarray | None  # (n, d_text) zero-shot vectors, when the run has them
    links: list | None = None  # per item its (relation, entity) links, with a graph tower


def prepare_rows(rec: Recommender, items: Sequence[Mapping[str, Any]] | pd.DataFrame | None,
                 source: str, loc: tuple[str | int, ...] = ("items",)) -> NewItems | None:
    """Validate new items (the item schema) and embed them from their text (with a graph
    tower, plus the entity part of the known entities their fields name, as in training)."""
    if items is None:
        return None
    fields = new_item_fields(items, source=source, loc=loc)
    rows = catalogue_rows_of(fields)
    if not rec.encoder.supports_text:
        raise CatalogueError("this run's item tower is ID-only (tower=id): it cannot embed "
                             "new items from text; retrain with a text tower to add items")
    texts = rows["text"].tolist()
    parts = getattr(rec, "ranking_parts", None)
    zero_shot_emb = (parts.encoder.item_vectors(rows["item_id"].tolist(), texts)
                     if parts is not None else None)
    graph = getattr(rec, "graph", None)
    if graph is None:
        return NewItems(rows, rec.encoder.item_emb(texts), zero_shot_emb)
    links = graph.links_for(fields)
    # kept in the catalogue part: a reload (or an index rebuild) reads these links back, as the
    # fields they come from (attributes, a category given as a list) are not all kept there
    rows["links"] = [links_json(item_links) for item_links in links]
    return NewItems(rows, rec.encoder.item_emb(texts, links), zero_shot_emb, links)


def apply_edit(rec: Recommender, new: NewItems | None, remove: list[str], upsert: bool
               ) -> tuple[list[str], int]:
    """Remove, then add, in memory under the recommender's lock (catalogue, towers' index,
    zero-shot vectors; BM25 is rebuilt after); every check first, so a refused edit changes
    nothing. Returns (added ids, removed count)."""
    rows = new.rows if new is not None else None
    parts = getattr(rec, "ranking_parts", None)
    with rec._lock:
        state = rec._state
        unknown = [i for i in remove if i not in state and i not in rec.index]
        if unknown:
            error = UnknownItemError(f"cannot remove {len(unknown)} item id(s) that are not in "
                                     f"the catalogue: {unknown[:5]}")
            error.loc = ("item_id",)
            raise error
        ids = rows["item_id"].tolist() if rows is not None else []
        present = [i for i in ids if i in state and i not in remove]
        if present and not upsert:
            raise DuplicateItemError(f"{len(present)} item id(s) already in the catalogue: "
                                     f"{present[:5]}; remove them first, or add with upsert "
                                     "(?upsert=true, upsert=true) to replace their fields")
        # texts of items whose vectors change: pinned session vectors of the old ones go
        replaced = [i for i in [*remove, *ids] if i in state]
        old_texts = state.texts[state.rows(replaced)].tolist() if replaced else []
        if remove:
            state = state.without(remove)
            indexed = [i for i in remove if i in rec.index]
            if indexed:
                rec.index.remove(indexed)
            if parts is not None:
                in_zero_shot = [i for i in remove if i in parts.zero_shot]
                if in_zero_shot:
                    parts.zero_shot.remove(in_zero_shot)
        if new is not None:
            state = state.with_rows(rows, replace=upsert)
            rec.index.add(new.item_emb, ids, upsert=upsert)
            if parts is not None and new.zero_shot_emb is not None:
                parts.zero_shot.add(new.zero_shot_emb, ids, upsert=upsert)
        rec._state = state
        if getattr(rec, "graph", None) is not None:
            rec._graph_drop(replaced, old_texts)
            if new is not None:
                rec._graph_add(rows, new.item_emb, new.links)
    return ids, len(remove)


def edit_items(rec: Recommender, add: Sequence[Mapping[str, Any]] | pd.DataFrame | None = None,
               remove: Sequence[str] = (), *, upsert: bool = False,
               lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S, who: str | None = None,
               loc: tuple[str | int, ...] = ("items",)) -> dict[str, Any]:
    """The persisted edit (see the module docstring); returns
    ``{"added": [...], "removed": n, "items": n_items, "generation": n}``."""
    from engine.state import state_store

    if rec.paths is None:
        raise ArtifactsError("this Recommender was not loaded from an artifacts directory; "
                             "build it with Recommender.from_artifacts to edit and save")
    remove_ids = clean_ids(remove)
    if add is not None and not upsert and not isinstance(add, pd.DataFrame):
        known = [i["item_id"] for i in add if isinstance(i, Mapping)
                 and isinstance(i.get("item_id"), str) and i["item_id"] in rec._state
                 and i["item_id"] not in remove_ids]
        if known:  # early, before the model pass; the check under the lock is the one that counts
            raise DuplicateItemError(f"{len(known)} item id(s) already in the catalogue: "
                                     f"{known[:5]}; remove them first, or add with upsert "
                                     "(?upsert=true, upsert=true) to replace their fields")
    new = prepare_rows(rec, add, "add_items", loc)
    if new is None and not remove_ids:
        raise CatalogueError("nothing to edit: pass items to add or ids to remove")
    store = state_store(rec.paths.root)
    try:
        with store.writer(timeout=lock_timeout, who=who) as writer:
            on_disk = writer.current()
            if (on_disk.number if on_disk is not None else 0) != rec.generation:
                log.info("%s changed on disk (generation %s, loaded %s): reloading before the "
                         "edit", rec.paths.root, on_disk and on_disk.number, rec.generation)
                rec.reload_state()
            added, removed = apply_edit(rec, new, remove_ids, upsert)
            try:
                if getattr(rec, "ranking_parts", None) is not None:
                    rec._rebuild_bm25(rec._state)  # bm25s cannot edit in place
                gen = writer.commit(rec.state_values(), expected=rec.generation,
                                    stamp=rec.stamp, note=f"edit: +{len(added)} -{removed}")
            except BaseException:
                rec.reload_state()  # memory must not hold what the disk does not
                raise
            rec.generation = gen.number
    except LockTimeout as err:
        raise WriterBusyError(str(err)) from None
    log.info("edit committed as generation %d: +%d -%d items", gen.number, len(added), removed)
    return {"added": added, "removed": removed, "items": rec.n_items,
            "generation": gen.number}


def save(rec: Recommender, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> int:
    """Commit the in-memory catalogue and index as a new generation, refusing (instead of
    overwriting) when another writer committed since this Recommender read the state."""
    from engine.state import state_store

    if rec.paths is None:
        raise ArtifactsError("this Recommender was not loaded from an artifacts directory; "
                             "build it with Recommender.from_artifacts to save")
    try:
        with state_store(rec.paths.root).writer(timeout=lock_timeout) as writer:
            with rec._lock:
                values = rec.state_values()
            gen = writer.commit(values, expected=rec.generation, stamp=rec.stamp, note="save")
    except StaleGenerationError as err:
        raise ArtifactsError(f"{err}: this Recommender's unsaved edits would overwrite them; "
                             "reload it (Recommender.from_artifacts) and edit with "
                             "edit_items, which reloads first") from None
    except LockTimeout as err:
        raise WriterBusyError(str(err)) from None
    rec.generation = gen.number
    return gen.number
