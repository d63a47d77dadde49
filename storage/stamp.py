"""Run stamps: which training run (and which data split) an artifact part was made from.

A stamp is a small JSON object, at least ``run_id`` (minted when the towers are trained, kept
in ``towers/towers.json``) and ``split_fingerprint`` (the data config, seed and held-out item
set the towers were trained on). Directory parts (the reranker, BM25, a ranker, ...) keep it in
``run.json``; the catalogue keeps it in its Parquet metadata, the index in its manifest.
:func:`mismatches` compares the stamps of the parts being loaded with the towers' stamp.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
IDENTITY_KEYS: tuple[str, ...] = ("run_id", "split_fingerprint")


def write_stamp(directory: str | Path, stamp: Mapping[str, Any]) -> Path:
    """Write ``stamp`` as ``<directory>/run.json`` (inside a directory being written atomically,
    so it needs no atomic write of its own)."""
    path = Path(directory) / RUN_FILE
    path.write_text(json.dumps(dict(stamp), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_stamp(directory: str | Path) -> dict[str, Any]:
    """``<directory>/run.json`` as a dict; ``{}`` when the part has none (made before stamps
    existed). A damaged file raises ValueError naming it."""
    path = Path(directory) / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def identity(stamp: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """The keys that must agree between parts of one run."""
    stamp = stamp or {}
    return tuple(stamp.get(key) for key in IDENTITY_KEYS)


def short(value: Any) -> str:
    """A run id or fingerprint shortened for a one-line message."""
    if value is None:
        return "none (made before run ids)"
    text = str(value)
    return text if len(text) <= 24 else text[:20] + "..."


def mismatches(reference: Mapping[str, Any], parts: Mapping[str, Mapping[str, Any] | None]
               ) -> list[str]:
    """Names of the parts whose run identity differs from ``reference`` (the towers')."""
    want = identity(reference)
    return [name for name, stamp in parts.items() if identity(stamp) != want]
