"""On-disk layout of a saved CatalogueIndex: file names, manifest checks and the atomic write.

A saved index is one directory::

    items.faiss     faiss index (always the CPU version), label r = row r
    item_ids.json   list, row -> item id (null for a removed row still held as an HNSW tombstone)
    vectors.npy     float32 [num_rows, dim], the L2-normalised item vectors, row r = label r
    manifest.json   dim, metric, count, factory, kind, params, build_time_s, built_at,
                    faiss_version, save_id, + the caller's extras (e.g. model_fingerprint)

Writes are atomic at directory level through ``storage.atomic.write_dir`` (the writer every
artifact shares): a temp dir beside the target, fsynced, then swapped in; a crash at any point
leaves a complete index, old or new (see that module). One writer per directory at a time is
assumed. Readers may run concurrently: a reader that straddles a swap notices (save_id
changed) and reads again.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.errors import IndexCorruptError, IndexMismatchError, IndexNotFoundError
from storage.atomic import resolve_dir, write_dir

log = logging.getLogger(__name__)

ITEMS_FILE = "items.faiss"
IDS_FILE = "item_ids.json"
VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
SAVED_FILES = (ITEMS_FILE, IDS_FILE, VECTORS_FILE, MANIFEST_FILE)
BUILD_HINT = "run `python build_index.py` (same run/config as the towers) to build it"
REBUILD_HINT = "rebuild it with `python build_index.py`"
RESERVED_KEYS = ("save_id",)  # manifest keys write_saved sets itself
_MISSING = object()
_READ_ATTEMPTS = 3


@dataclass
class SavedIndex:
    """The four files of a saved index, read and checked against each other."""

    where: Path
    manifest: dict[str, Any]
    faiss_index: faiss.Index
    row_ids: list[str | None]  # row r = faiss label r; None = removed (HNSW tombstone)
    vectors: np.ndarray  # (num_rows, dim) float32


def write_saved(
    directory: str | Path,
    faiss_index: faiss.Index,
    row_ids: list[str | None],
    vectors: np.ndarray,
    manifest: Mapping[str, Any],
) -> Path:
    """Write the four files atomically (see the module docstring); returns ``directory``."""
    manifest = {**manifest, "save_id": uuid.uuid4().hex}  # lets readers detect a swap mid-read

    def write(temp: Path) -> None:
        faiss.write_index(faiss_index, str(temp / ITEMS_FILE))
        write_json(temp / IDS_FILE, row_ids)
        np.save(temp / VECTORS_FILE, vectors)
        write_json(temp / MANIFEST_FILE, manifest)

    return write_dir(directory, write)


def read_saved(directory: str | Path, expect: Mapping[str, Any] | None = None) -> SavedIndex:
    """Read a saved index, refusing a missing one, a manifest mismatch or inconsistent files.

    ``expect`` is checked before the large files are read. If a save swaps the directory while
    it is being read (the manifest's save_id differs afterwards), the read starts again.
    """
    for _ in range(_READ_ATTEMPTS):
        where = resolve_saved_dir(directory)
        manifest = _read_manifest(where)
        if expect:
            check_expected(manifest, expect, Path(directory))
        saved, error = None, None
        try:
            saved = SavedIndex(
                where=where,
                manifest=manifest,
                faiss_index=faiss.read_index(str(where / ITEMS_FILE)),
                row_ids=json.loads((where / IDS_FILE).read_text(encoding="utf-8")),
                vectors=np.load(where / VECTORS_FILE, allow_pickle=False),
            )
        except (OSError, RuntimeError, ValueError) as err:
            error = err
        if _current_save_id(where) != manifest.get("save_id"):
            log.info("index at %s was replaced while being read; reading it again", where)
            continue
        if saved is None:
            raise IndexCorruptError(f"saved index at {where} is unreadable ({error}); "
                                    f"{REBUILD_HINT}") from error
        _check_consistent(saved)
        return saved
    raise IndexCorruptError(f"index at {directory} was replaced {_READ_ATTEMPTS} times while "
                            f"being read; load it again once the writer is done")


def _read_manifest(where: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((where / MANIFEST_FILE).read_text(encoding="utf-8"))
    except ValueError as err:
        raise IndexCorruptError(f"{where / MANIFEST_FILE} is not valid JSON ({err}); "
                                f"{REBUILD_HINT}") from err
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"{where / MANIFEST_FILE} must hold a JSON object; {REBUILD_HINT}")
    return manifest


def _current_save_id(where: Path) -> object:
    try:
        return json.loads((where / MANIFEST_FILE).read_text(encoding="utf-8")).get("save_id")
    except (OSError, ValueError, AttributeError):
        return _MISSING


def _check_consistent(saved: SavedIndex) -> None:
    manifest, row_ids, vectors = saved.manifest, saved.row_ids, saved.vectors
    index = saved.faiss_index
    dim, kind = manifest.get("dim"), manifest.get("kind")
    live = [i for i in row_ids if i is not None]
    stored = len(row_ids) if kind == "hnsw" else len(live)  # HNSW keeps its tombstones
    checks = [
        (not all(isinstance(i, str) and i for i in live), "item ids must be non-empty strings"),
        (len(set(live)) != len(live), "item ids are duplicated"),
        (vectors.shape != (len(row_ids), dim) or vectors.dtype != np.float32,
         f"vectors are {vectors.dtype} {vectors.shape}, expected float32 ({len(row_ids)}, {dim})"),
        ((index.ntotal, index.d) != (stored, dim),
         f"faiss holds {index.ntotal} vectors of dim {index.d}, expected {stored} of dim {dim}"),
        (manifest.get("count") != len(live),
         f"manifest count {manifest.get('count')} != {len(live)} item ids"),
    ]
    problems = [message for failed, message in checks if failed]
    if problems:
        raise IndexCorruptError(f"saved index at {saved.where} is inconsistent: "
                                f"{'; '.join(problems)}; {REBUILD_HINT}")


def resolve_saved_dir(directory: str | Path) -> Path:
    """The directory to read a saved index from, or IndexNotFoundError saying how to build one.

    Falls back to ``.<name>.old-*`` when a save was interrupted between its two renames.
    """
    target = resolve_dir(directory)
    if not target.exists():
        raise IndexNotFoundError(
            f"no saved index at {target}: directory does not exist; {BUILD_HINT}"
        )
    if not target.is_dir():
        raise IndexNotFoundError(f"no saved index at {target}: it is a file, not a directory")
    missing = [name for name in SAVED_FILES if not (target / name).is_file()]
    if missing:
        raise IndexNotFoundError(
            f"saved index at {target} is incomplete: missing {', '.join(missing)}; {BUILD_HINT}"
        )
    return target


def check_expected(manifest: Mapping[str, Any], expect: Mapping[str, Any], where: Path) -> None:
    """Raise IndexMismatchError naming the first key whose manifest value differs from ``expect``.

    Values are compared after a JSON round trip, so a tuple matches the list stored on disk.
    """
    for key, wanted in expect.items():
        wanted = json.loads(json.dumps(wanted))
        found = manifest.get(key, _MISSING)
        if found is _MISSING:
            raise IndexMismatchError(
                f"index at {where} has no {key!r} in its manifest but {key}={wanted!r} was "
                f"expected; rebuild it with `python build_index.py`"
            )
        if found != wanted:
            raise IndexMismatchError(
                f"index at {where} was built with {key}={found!r} but {key}={wanted!r} was "
                f"expected (the towers or config changed since it was built); rebuild it with "
                f"`python build_index.py`"
            )


def write_json(path: Path, payload: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, sort_keys=False)
        f.write("\n")
