"""engine: ``Recommender`` loads one artifacts directory once and turns sessions into explained,
ranked items (user tower -> index search -> rerank policy -> cross-encoder -> JSON with reasons).

The one path that ``query.py``, ``serve/`` and the benchmarks call. Names are imported lazily, so
``from engine import parse_session`` validates input without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "EngineError": "engine.errors",
    "SessionError": "engine.errors",
    "ArtifactsError": "engine.errors",
    "CatalogueError": "engine.errors",
    "Event": "engine.session",
    "Session": "engine.session",
    "parse_session": "engine.session",
    "parse_sessions_text": "engine.session",
    "ArtifactPaths": "engine.artifacts",
    "CATALOGUE_COLUMNS": "engine.artifacts",
    "save_catalogue": "engine.artifacts",
    "load_catalogue": "engine.artifacts",
    "save_json": "engine.artifacts",
    "item_segments": "engine.artifacts",
    "CatalogueState": "engine.catalogue",
    "new_catalogue_rows": "engine.catalogue",
    "read_item_file": "engine.items",
    "parse_item": "engine.items",
    "state_store": "engine.state",
    "run_stamp": "engine.state",
    "SessionEncoder": "engine.encoding",
    "encode_catalogue": "engine.encoding",
    "Recommender": "engine.recommender",
    "DEFAULT_K": "engine.recommender",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
