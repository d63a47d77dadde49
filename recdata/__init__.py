"""recdata: the data layer — schema, loaders, validation, splits and segment labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recdata.schema import (
    EVENT_TYPES,
    TARGET_SEGMENTS,
    USER_SEGMENTS,
    DataError,
    Dataset,
    SplitData,
)
from recdata.splits import split_dataset, truncate_history, user_segment
from recdata.text import catalogue_texts, item_text

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("synthetic", "amazon_unisrec", "movielens", "files")

__all__ = [
    "EVENT_TYPES", "TARGET_SEGMENTS", "USER_SEGMENTS", "DataError", "Dataset", "SplitData",
    "SOURCES", "catalogue_texts", "item_text", "load_dataset", "resolve_path", "split_dataset",
    "truncate_history", "user_segment",
]


def resolve_path(path: str | Path) -> Path:
    """A relative path is taken from the working directory, else from the project root, so
    the default ``../shared/datasets`` works from the checkout and from tests alike."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    candidate = PROJECT_ROOT / path
    return candidate if candidate.exists() else path


def load_dataset(source: str, **options: Any) -> Dataset:
    """Load one source by name; ``options`` are that loader's keyword arguments.

    synthetic: n_items, n_users, seed, ...; amazon_unisrec: root, name; movielens: root,
    min_rating; files: catalogue, events, name, tags, relations (both optional). Any source
    without a fixed split also takes ``event_log`` (a service's event log,
    ``artifacts/<run>/events``): its events are added.
    """
    event_log = options.pop("event_log", None)
    dataset = _load_source(source, **options)
    if event_log:
        from recdata.eventlog_source import with_event_log

        dataset = with_event_log(dataset, resolve_path(event_log))
    return dataset


def _load_source(source: str, **options: Any) -> Dataset:
    if source == "synthetic":
        from recdata.synthetic import generate_synthetic

        return generate_synthetic(**options)
    from recdata import loaders

    if source == "amazon_unisrec":
        return loaders.load_amazon_unisrec(resolve_path(options.pop("root")), **options)
    if source == "movielens":
        return loaders.load_movielens(resolve_path(options.pop("root")), **options)
    if source == "files":
        tags, relations = options.pop("tags", None), options.pop("relations", None)
        return loaders.load_files(resolve_path(options.pop("catalogue")),
                                  resolve_path(options.pop("events")),
                                  tags=resolve_path(tags) if tags else None,
                                  relations=resolve_path(relations) if relations else None,
                                  **options)
    raise DataError(f"data.source must be one of {list(SOURCES)}, got {source!r}")
