"""Serving state committed as whole generations: a crash leaves the old state or the new one.

The parts that live edits change together (the catalogue, the index, and later BM25, zero-shot
vectors, ...) are each a :class:`StatePart`: a name, a path inside a generation, and a
``save(value, path, stamp)`` / ``load(path)`` / ``read_stamp(path)`` triple. Adding a part is
one more ``StatePart`` in the registry its owner passes to :class:`StateStore`.

Layout under a run's artifacts directory::

    state/CURRENT             {"generation": 7}: the one pointer readers follow
    state/g000007/            the current generation: generation.json + every part's path
    state/g000006/            the previous one, kept for readers still loading it
    state/.tmp-g000008-*      a commit in progress (or killed; removed by the next writer)

A commit (:meth:`StateWriter.commit`, under the directory's lock) writes the changed parts
into a fresh temp directory, hard-links the unchanged ones from the current generation, writes
``generation.json``, fsyncs all of it, renames it to ``gNNNNNN``, then swaps ``CURRENT`` with
one atomic ``os.replace``. Before that swap readers see the old generation whole, after it the
new one whole. A writer states the generation it read (``expected``); if another writer
committed since, the commit is refused (:class:`StaleGenerationError`) instead of overwriting.
Writers, when they take the lock, remove temp and abandoned generation directories.

Before generations existed, a run kept its parts at the top of the directory
(``catalogue.parquet``, ``index/``): that layout reads as generation 0, and the first commit
moves it into ``state/`` (the old files are removed once the new generation is current).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from storage.atomic import fsync_dir, fsync_tree, link_tree, write_json
from storage.faults import checkpoint
from storage.lock import DEFAULT_TIMEOUT_S, DirLock, LockTimeout

log = logging.getLogger(__name__)

STATE_DIR = "state"
POINTER = "CURRENT"
MANIFEST = "generation.json"
_GEN_RE = re.compile(r"^g(\d{6,})$")
_READ_ATTEMPTS = 3


class StateError(ValueError):
    """The serving state cannot be read or written as asked (the message says what to run)."""


class StaleGenerationError(StateError):
    """Another writer committed a generation after this writer read the state."""


@dataclass(frozen=True)
class StatePart:
    """One registered part of the serving state.

    ``save(value, path, stamp)`` writes ``value`` to ``path`` (a file or a directory that does
    not exist yet) and records ``stamp`` (the run identity) in it; ``load(path)`` reads it back;
    ``read_stamp(path)`` returns the recorded stamp cheaply (``{}`` when there is none).
    """

    name: str
    path: str  # relative to a generation directory, e.g. "catalogue.parquet" or "index"
    save: Callable[[Any, Path, Mapping[str, Any]], None]
    load: Callable[[Path], Any]
    read_stamp: Callable[[Path], Mapping[str, Any]]
    command: str = "build_index"  # what rebuilds it: "train" or "build_index" (for messages)


@dataclass(frozen=True)
class Generation:
    """One committed generation (``number`` 0: the pre-generation layout at the top level)."""

    number: int
    directory: Path
    manifest: Mapping[str, Any] = field(default_factory=dict)

    def path(self, part: StatePart) -> Path:
        return self.directory / part.path

    def has(self, part: StatePart) -> bool:
        return self.path(part).exists()


def gen_name(number: int) -> str:
    return f"g{number:06d}"


class StateStore:
    """The generations of one artifacts directory, for the parts in ``parts``."""

    def __init__(self, root: str | Path, parts: Sequence[StatePart]) -> None:
        self.root = Path(root)
        self.parts = {part.name: part for part in parts}
        if len(self.parts) != len(parts):
            raise ValueError(f"state part names must be unique, got {[p.name for p in parts]}")

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def part(self, name: str) -> StatePart:
        try:
            return self.parts[name]
        except KeyError:
            raise ValueError(f"no state part {name!r}; registered: {sorted(self.parts)}") from None

    # ---- reading (no lock) ------------------------------------------------------------------
    def current(self) -> Generation | None:
        """The committed generation readers should use; None when there is no state at all."""
        pointer = self.state_dir / POINTER
        try:
            data = json.loads(pointer.read_text(encoding="utf-8"))
            number = int(data["generation"])
        except FileNotFoundError:
            if any((self.root / p.path).exists() for p in self.parts.values()):
                return Generation(0, self.root, {"legacy": True})
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StateError(f"{pointer} is damaged ({err}); restore it, or rebuild the state "
                             "with `python build_index.py` for this run") from None
        directory = self.state_dir / gen_name(number)
        try:
            manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StateError(f"{pointer} names generation {number} but {directory} is "
                             "missing; rebuild the state with `python build_index.py` for this "
                             "run") from None
        except (OSError, ValueError) as err:
            raise StateError(f"{directory / MANIFEST} is damaged ({err}); rebuild the state "
                             "with `python build_index.py` for this run") from None
        return Generation(number, directory, manifest)

    def number(self) -> int:
        """The current generation's number; 0 before the first commit."""
        gen = self.current()
        return gen.number if gen is not None else 0

    def load(self, names: Iterable[str] | Callable[[], Iterable[str]], *,
             check: Callable[[Generation], None] | None = None,
             options: Mapping[str, Mapping[str, Any]] | None = None
             ) -> tuple[Generation, dict[str, Any]]:
        """Load parts of the current generation (``options[name]``: keyword arguments of that
        part's ``load``), after ``check(generation)``; ``names`` may be a callable, asked after
        the check (which may decide what is there to load). A commit may delete a generation
        two steps old while it is being read: then the read starts again on the new one."""
        options = options or {}
        for attempt in range(_READ_ATTEMPTS):
            gen = self.current()
            if gen is None:
                raise StateError(f"{self.root} holds no serving state")
            try:
                if check is not None:
                    check(gen)
                wanted = list(names() if callable(names) else names)
                return gen, {name: self.part(name).load(gen.path(self.part(name)),
                                                        **options.get(name, {}))
                             for name in wanted}
            except FileNotFoundError:
                if attempt == _READ_ATTEMPTS - 1 or self.number() == gen.number:
                    raise
                log.info("generation %d was replaced while being read; reading again",
                         gen.number)
        raise AssertionError("unreachable")

    # ---- writing (under the lock) -----------------------------------------------------------
    @contextmanager
    def writer(self, timeout: float = DEFAULT_TIMEOUT_S, who: str | None = None
               ) -> Iterator[StateWriter]:
        """Hold the directory's lock, clean what a killed writer left, yield a writer."""
        with DirLock(self.root, timeout=timeout, who=who):
            self._clean()
            yield StateWriter(self)

    def tidy(self) -> bool:
        """Clean what killed writers left, if no writer holds the lock right now (never waits);
        for a process starting on the artifacts (the service). True when it cleaned."""
        if not self.state_dir.is_dir():
            return False
        try:
            with DirLock(self.root, timeout=0, who="tidy at start"):
                self._clean()
        except (LockTimeout, OSError) as err:  # busy, or a read-only directory: leave it
            log.info("not tidying %s now: %s", self.state_dir, err)
            return False
        return True

    def _generation_dirs(self) -> dict[int, Path]:
        if not self.state_dir.is_dir():
            return {}
        found = {}
        for path in self.state_dir.iterdir():
            match = _GEN_RE.match(path.name)
            if match and path.is_dir():
                found[int(match.group(1))] = path
        return found

    def _clean(self) -> None:
        """Remove temp directories, generations never made current (a commit killed before its
        pointer swap) or older than the previous one, and a migrated pre-generation layout."""
        if not self.state_dir.is_dir():
            return
        for temp in self.state_dir.glob(".tmp-*"):
            log.warning("removing %s left by an interrupted commit", temp)
            shutil.rmtree(temp, ignore_errors=True)
        for temp in self.state_dir.glob(f".{POINTER}.*"):
            temp.unlink(missing_ok=True)
        gen = self.current()
        current = gen.number if gen is not None else 0
        for number, path in self._generation_dirs().items():
            if number > current or number < current - 1:
                log.info("removing generation directory %s (current is %d)", path, current)
                shutil.rmtree(path, ignore_errors=True)
        if current > 0:
            self._remove_legacy()

    def _remove_legacy(self) -> None:
        for part in self.parts.values():
            old = self.root / part.path
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            elif old.exists():
                old.unlink()
            for leftover in self.root.glob(f".{Path(part.path).name}.*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)


class StateWriter:
    """Commits generations; obtained from :meth:`StateStore.writer` (the lock is held)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def current(self) -> Generation | None:
        return self.store.current()

    def commit(self, changes: Mapping[str, Any], *, expected: int | None,
               stamp: Mapping[str, Any], drop: Iterable[str] = (), note: str = ""
               ) -> Generation:
        """A new generation: ``changes`` (part name -> value) written with their ``save``, the
        parts in ``drop`` left out, every other part of the current generation carried over.

        ``expected``: the generation this writer read (0 for none); another number on disk
        raises StaleGenerationError and nothing is written. None skips the check (a writer
        that replaces the whole state, e.g. training).
        """
        store = self.store
        drop = set(drop)
        unknown = sorted((set(changes) | drop) - set(store.parts))
        if unknown:
            raise ValueError(f"unknown state part(s) {unknown}; registered: {sorted(store.parts)}")
        current = store.current()
        on_disk = current.number if current is not None else 0
        if expected is not None and expected != on_disk:
            raise StaleGenerationError(
                f"{store.root} changed since it was read (generation {on_disk} on disk, "
                f"{expected} read): another writer committed in between; reload and retry")
        number = max([on_disk, *store._generation_dirs()]) + 1
        store.state_dir.mkdir(parents=True, exist_ok=True)
        temp = store.state_dir / f".tmp-{gen_name(number)}-{os.getpid()}-{time.time_ns()}"
        temp.mkdir()
        try:
            parts_meta = self._fill(temp, current, changes, drop, stamp, number)
            manifest = {"generation": number, "created_at": _now(), "note": note,
                        "pid": os.getpid(), "stamp": dict(stamp), "parts": parts_meta}
            (temp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
            checkpoint("gen.manifest")
            fsync_tree(temp)
            checkpoint("gen.synced")
            final = store.state_dir / gen_name(number)
            os.rename(temp, final)
            fsync_dir(store.state_dir)
            checkpoint("gen.renamed")
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        write_json(store.state_dir / POINTER, {"generation": number}, indent=None)
        checkpoint("gen.published")
        store._clean()
        checkpoint("gen.cleaned")
        log.info("committed generation %d of %s (%s)", number, store.root, note or "edit")
        return Generation(number, final, manifest)

    def _fill(self, temp: Path, current: Generation | None, changes: Mapping[str, Any],
              drop: set[str], stamp: Mapping[str, Any], number: int) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for name, part in self.store.parts.items():
            target = temp / part.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in changes:
                part.save(changes[name], target, stamp)
                meta[name] = {"path": part.path, "written_in": number}
                checkpoint(f"gen.saved:{name}")
            elif name not in drop and current is not None and current.has(part):
                link_tree(current.path(part), target)
                previous = current.manifest.get("parts", {}).get(name, {})
                meta[name] = {"path": part.path,
                              "written_in": previous.get("written_in", current.number)}
                checkpoint(f"gen.carried:{name}")
        return meta


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
