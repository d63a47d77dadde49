"""The serving state of a run: its registered parts, its run identity, and the commits that
write it (``storage.generations`` does the atomic part).

``STATE_PARTS`` is the registry: the catalogue, the towers' index, and the ranking stage's BM25
index and zero-shot vectors. Each part is saved, loaded and stamped by its own functions; a
commit writes the changed parts into a new generation and carries the others over. To add a
part (live counts, ...) append one ``StatePart``, as ``bm25`` is::

    StatePart("bm25", "bm25", save=_save_bm25, load=_load_bm25, read_stamp=read_stamp)

where ``_save_bm25(value, path, stamp)`` writes a directory at ``path`` and calls
``storage.write_stamp(path, stamp)`` in it (``storage.read_stamp`` reads it back), and
``_load_bm25(path)`` returns the loaded object. Then ``writer.commit({"bm25": value}, ...)``
writes it, every later commit carries it, :func:`load_state` loads it from the same generation
as the others, and :func:`check_same_run` refuses it when it comes from another run.

Run identity: every part records the stamp of the towers it was made with (:func:`run_stamp`:
the run name, ``run_id``, ``split_fingerprint`` and the item tower's fingerprint); loading
refuses parts whose ``run_id`` or ``split_fingerprint`` differ from the towers', in one line
naming the parts and the command that remakes them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.artifacts import (
    CATALOGUE_FILE,
    ArtifactPaths,
    catalogue_stamp,
    read_catalogue,
    write_catalogue,
)
from engine.errors import ArtifactsError
from storage import Generation, StateError, StatePart, StateStore, read_stamp, write_stamp
from storage.stamp import IDENTITY_KEYS, mismatches, short

if TYPE_CHECKING:
    import pandas as pd

    from index import CatalogueIndex
    from ranking.bm25 import BM25Index

log = logging.getLogger(__name__)

INDEX_MANIFEST = "manifest.json"
STAMP_KEYS: tuple[str, ...] = ("run", "run_id", "split_fingerprint", "model_fingerprint")


def new_run_id() -> str:
    """A fresh run id: UTC time (readable, sortable) + random suffix (unique)."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


# ---- the parts ----------------------------------------------------------------------------------
def _save_catalogue(frame: pd.DataFrame, path: Path, stamp: Mapping[str, Any]) -> None:
    write_catalogue(path, frame, stamp)


def _save_index(index: CatalogueIndex, path: Path, stamp: Mapping[str, Any]) -> None:
    index.save(path, manifest_extra={k: stamp.get(k) for k in STAMP_KEYS})


def _load_index(path: Path, use_gpu: bool | None = None) -> CatalogueIndex:
    from index import CatalogueIndex

    return CatalogueIndex.load(path, use_gpu=use_gpu)


def _index_stamp(path: Path) -> dict[str, Any]:
    import json

    from storage import resolve_dir

    try:
        manifest = json.loads((resolve_dir(path) / INDEX_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ArtifactsError(f"{path / INDEX_MANIFEST} is unreadable ({err})") from None
    return {k: manifest.get(k) for k in STAMP_KEYS} if isinstance(manifest, dict) else {}


def _save_bm25(bm25: BM25Index, path: Path, stamp: Mapping[str, Any]) -> None:
    bm25.save(path)
    write_stamp(path, stamp)


def _load_bm25(path: Path) -> BM25Index:
    from ranking.bm25 import BM25Index

    return BM25Index.load(path)


@dataclass
class ZeroShotVectors:
    """The ``zeroshot`` part: a flat index over the untrained encoder's item vectors, and what
    its manifest says about that encoder (``encoder``, ``encoder_fingerprint``)."""

    index: CatalogueIndex
    meta: dict[str, Any] = field(default_factory=dict)


ZERO_SHOT_META: tuple[str, ...] = ("encoder", "encoder_fingerprint")


def _save_zero_shot(value: ZeroShotVectors, path: Path, stamp: Mapping[str, Any]) -> None:
    meta = {k: value.meta.get(k) for k in ZERO_SHOT_META}
    value.index.save(path, manifest_extra={**meta, **{k: stamp.get(k) for k in STAMP_KEYS}})


def _load_zero_shot(path: Path) -> ZeroShotVectors:
    import json

    from index import CatalogueIndex

    index = CatalogueIndex.load(path, use_gpu=False)
    manifest = json.loads((path / INDEX_MANIFEST).read_text(encoding="utf-8"))
    return ZeroShotVectors(index, {k: manifest.get(k) for k in ZERO_SHOT_META})


STATE_PARTS: tuple[StatePart, ...] = (
    StatePart("catalogue", CATALOGUE_FILE, save=_save_catalogue, load=read_catalogue,
              read_stamp=catalogue_stamp, command="train"),
    StatePart("index", "index", save=_save_index, load=_load_index, read_stamp=_index_stamp),
    StatePart("bm25", "bm25", save=_save_bm25, load=_load_bm25, read_stamp=read_stamp),
    StatePart("zeroshot", "zeroshot", save=_save_zero_shot, load=_load_zero_shot,
              read_stamp=_index_stamp),
)
RANKING_PARTS: tuple[str, ...] = ("bm25", "zeroshot")  # optional: a run may serve without


def state_store(root: str | Path) -> StateStore:
    """The generations of ``root``'s serving state, over ``STATE_PARTS``."""
    return StateStore(root, STATE_PARTS)


# ---- run identity -------------------------------------------------------------------------------
def run_stamp(paths: ArtifactPaths) -> dict[str, Any]:
    """The stamp every part of this run records: from ``towers/towers.json``."""
    meta = paths.towers_meta()
    return {"run": paths.run, "run_id": meta.get("run_id"),
            "split_fingerprint": meta.get("split_fingerprint"),
            "model_fingerprint": meta.get("fingerprint")}


def _fix(paths: ArtifactPaths, part: str) -> str:
    if part in ("catalogue", "towers"):
        return paths.command_for("towers")
    if part in ("reranker", "ranker"):
        return paths.command_for(part)
    return paths.command_for("index")


def check_same_run(paths: ArtifactPaths, stamps: Mapping[str, Mapping[str, Any] | None],
                   reference: Mapping[str, Any] | None = None) -> None:
    """Refuse parts (name -> stamp) made in another run than the towers, in one line. Towers
    trained before run ids existed (no ``run_id``) have nothing to compare: not checked."""
    reference = reference if reference is not None else run_stamp(paths)
    if reference.get("run_id") is None:
        return
    bad = mismatches(reference, stamps)
    if not bad:
        return
    keys = [k for k in IDENTITY_KEYS if any(
        (stamps[name] or {}).get(k) != reference.get(k) for name in bad)]
    shown = ", ".join(f"{name} {_describe(stamps[name], keys)}" for name in bad)
    fixes = list(dict.fromkeys(_fix(paths, name) for name in bad))
    if "catalogue" in bad and paths.command_for("index") not in fixes:
        fixes.append(paths.command_for("index"))
    raise ArtifactsError(
        f"{paths.root} mixes parts of different training runs: towers {_describe(reference, keys)}"
        f", but {shown}; remake the odd part(s) with `" + "` then `".join(fixes) + "`")


def _describe(stamp: Mapping[str, Any] | None, keys: Iterable[str]) -> str:
    stamp = stamp or {}
    return " ".join(f"{key.replace('_', ' ')} {short(stamp.get(key))}" for key in keys)


def state_stamps(paths: ArtifactPaths, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The recorded stamps of the current generation's parts ``names`` (cheap reads)."""
    store = state_store(paths.root)
    gen = store.current()
    out = {}
    for name in names:
        part = store.part(name)
        if gen is not None and gen.has(part):
            out[name] = dict(part.read_stamp(gen.path(part)))
    return out


def reranker_stamp(paths: ArtifactPaths) -> dict[str, Any]:
    try:
        return read_stamp(paths.reranker)
    except ValueError as err:
        raise ArtifactsError(f"{err}; retrain the reranker with "
                             f"`{paths.command_for('reranker')}`") from None


def check_run(paths: ArtifactPaths, parts: Iterable[str] = ("catalogue", "index")) -> None:
    """The cheap whole-run check for CLIs: ``parts`` (state parts, and ``reranker``) against
    the towers' run identity."""
    names = list(parts)
    stamps: dict[str, Any] = state_stamps(paths, [n for n in names if n != "reranker"])
    if "reranker" in names and paths.reranker.exists():
        stamps["reranker"] = reranker_stamp(paths)
    check_same_run(paths, stamps)


# ---- commits ------------------------------------------------------------------------------------
def commit_catalogue(paths: ArtifactPaths, frame: pd.DataFrame) -> Path:
    """Training's commit: a fresh state holding only this catalogue (the index and any other
    part belong to the previous towers and are dropped)."""
    stamp = run_stamp(paths) if (paths.towers / "towers.json").exists() else {"run": paths.run}
    store = state_store(paths.root)
    with store.writer(who=f"train.py run_name={paths.run}") as writer:
        others = [name for name in store.parts if name != "catalogue"]
        gen = writer.commit({"catalogue": frame}, expected=None, stamp=stamp, drop=others,
                            note="train: new catalogue")
    return gen.path(store.part("catalogue"))


def load_state(paths: ArtifactPaths, stamp: Mapping[str, Any], *, use_gpu: bool | None = None,
               names: Iterable[str] = ("catalogue", "index"), optional: Iterable[str] = ()
               ) -> tuple[int, dict[str, Any]]:
    """Load parts of the current generation -- ``names``, and ``optional`` ones where the
    generation has them (else None) -- after checking that they come from the towers' run
    (``stamp``, see :func:`run_stamp`) and that the index was built by those towers.
    Returns (generation number, part name -> loaded value)."""
    from index import IndexCorruptError, IndexNotFoundError
    from ranking.bm25 import BM25Error

    store = state_store(paths.root)
    required, optional = list(names), list(optional)
    names = required + optional
    present: list[str] = []

    def check(gen: Generation) -> None:
        stamps = {}
        present.clear()
        for name in names:
            part = store.part(name)
            if not gen.has(part):
                if name in optional:
                    continue
                paths.check((name,))  # raises, naming the command that makes it
            present.append(name)
            stamps[name] = dict(part.read_stamp(gen.path(part)))
        check_same_run(paths, stamps, stamp)
        built = (stamps.get("index") or {}).get("model_fingerprint")
        if "index" in stamps and built != stamp.get("model_fingerprint"):
            raise ArtifactsError(
                f"{gen.path(store.part('index'))} was built from other towers than "
                f"{paths.towers} (model_fingerprint {str(built)[:12]}... != towers "
                f"{str(stamp.get('model_fingerprint'))[:12]}...); rebuild it with "
                f"`{paths.command_for('index')}`")

    try:
        gen, parts = store.load(lambda: present, check=check,
                                options={"index": {"use_gpu": use_gpu},
                                         "catalogue": {"fix": paths.command_for("towers")}})
    except (IndexNotFoundError, IndexCorruptError, BM25Error) as err:
        raise ArtifactsError(f"{err}; rebuild the index with "
                             f"`{paths.command_for('index')}`") from None
    except StateError as err:
        raise ArtifactsError(str(err)) from None
    return gen.number, {name: parts.get(name) for name in names}
