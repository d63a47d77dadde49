"""Errors raised by the engine at its boundaries; all are ValueErrors, so CLIs catch them alike."""

from __future__ import annotations


class EngineError(ValueError):
    """Bad input to the engine: the message says what was expected, what arrived, and the fix.

    ``loc``: where in the input the problem is (e.g. ``("items", 2, "created_ts")``), when the
    raiser knows; the service turns it into its 422 ``loc``."""

    loc: tuple[str | int, ...] = ()


class SessionError(EngineError):
    """A session (query JSON) not in the README's session shape, or asking the impossible."""


class ArtifactsError(EngineError):
    """An artifacts directory that is missing a part or whose parts disagree (says what to run)."""


class CatalogueError(EngineError):
    """Bad items to add or ids to remove (live catalogue edits, ``build_index.py add=/remove=``)."""


class DuplicateItemError(CatalogueError):
    """Items to add whose ids are already in the catalogue (and no upsert)."""


class UnknownItemError(CatalogueError):
    """Ids to remove that are not in the catalogue."""


class WriterBusyError(ArtifactsError):
    """Another process holds the artifacts' writer lock past the wait (retry later)."""
