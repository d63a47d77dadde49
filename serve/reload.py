"""Hot reload: when another process (``python -m pipeline.refresh``) commits new towers, index
and catalogue into the artifacts, the service loads them beside the ones it serves and swaps
the reference, with no restart and no failed request.

A background task reads a cheap token of the artifacts' state every ``every_s`` seconds (json
reads only). When it changes, the whole ``Recommender`` is loaded again in a worker thread
(seconds: the towers, the index, the reranker) while the old one keeps answering; then
``ServeState.recommender`` is replaced in one assignment. A request holds the engine it
started with, so in-flight requests finish on the old one. A state that cannot be loaded (a
half-written run, mismatched parts) is logged and retried at the next tick; the old engine stays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_RELOAD_EVERY_S = 5.0


class StateWatcher:
    """Polls ``token()``; on a change, ``load()`` a new engine and hand it to ``swap``."""

    def __init__(self, token: Callable[[], Hashable], load: Callable[[], Any],
                 swap: Callable[[Any], None], every_s: float = DEFAULT_RELOAD_EVERY_S,
                 guard: contextlib.AbstractContextManager | None = None) -> None:
        if every_s <= 0:
            raise ValueError(f"reload every_s must be > 0 seconds, got {every_s!r}")
        self.token, self.load, self.swap, self.every_s = token, load, swap, float(every_s)
        # held while loading and swapping: the app's edit lock, so no live item edit lands on
        # the old engine after the new one was read from disk
        self.guard = guard or contextlib.nullcontext()
        self.current: Hashable | None = None
        self.reloads = 0

    def prime(self) -> None:
        """Remember the token of the state the first engine was loaded from."""
        self.current = self._read()

    def _read(self) -> Hashable | None:
        try:
            return self.token()
        except (OSError, ValueError) as err:
            log.warning("reload: cannot read the artifacts' state (%s); retrying", err)
            return None

    def check(self) -> bool:
        """One poll (blocking): reload and swap when the state changed; True when swapped."""
        token = self._read()
        if token is None or token == self.current:
            return False
        with self.guard:
            try:
                engine = self.load()
            except (OSError, ValueError) as err:  # ArtifactsError and the other engine errors
                log.warning("reload: the new state does not load yet (%s); still serving the "
                            "old one, retrying", err)
                return False
            self.swap(engine)
        self.current = token
        self.reloads += 1
        log.info("reload: now serving %s", getattr(engine, "info", dict)())
        return True

    def start(self) -> None:
        """Poll in a daemon thread until :meth:`stop`."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="state-watcher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception:  # never let the watcher die silently
                log.exception("reload: unexpected error; still serving the old state")

    def stop(self) -> None:
        if getattr(self, "_thread", None) is not None:
            self._stop.set()
            self._thread.join(timeout=30)


def reload_watcher(state: Any, events: Any, every_s: float | None) -> StateWatcher | None:
    """The watcher of a ``serve.app.ServeState``: reloads ``state.recommender`` from its
    artifacts with the same rerank setting, hands it the live counts, swaps it under the app's
    edit lock. None when ``every_s`` is falsy or the engine has no artifacts directory."""
    engine = state.recommender
    if not every_s or engine is None or engine.paths is None:
        return None
    root = engine.paths.root

    def load() -> Any:
        from engine.recommender import Recommender

        return Recommender.from_artifacts(root, rerank=state.recommender.rerank,
                                          rerank_mode=state.recommender.rerank_mode)

    def swap(new: Any) -> None:
        new.counts = events.counts
        state.recommender = new

    watcher = StateWatcher(lambda: towers_token(root), load, swap, every_s,
                           guard=state.write_lock)
    watcher.prime()
    return watcher


def towers_token(root: str | Path) -> Hashable:
    """What changes when new towers are committed: their fingerprint and run id (towers.json).
    Live item edits do not change it (they keep the towers; the engine applies them itself)."""
    meta = json.loads((Path(root) / "towers" / "towers.json").read_text(encoding="utf-8"))
    return (meta.get("fingerprint"), meta.get("run_id"), meta.get("refresh"))
