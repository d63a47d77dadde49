"""The event log as a training source, and its repair (``python -m recdata events ...``).

``load_dataset(..., event_log=PATH)`` (``data.options.event_log=artifacts/demo/events`` on any
Hydra command) appends the log's events to any source without a fixed split, so the next
training run includes what the service recorded. The log's users are keyed pseudonyms: they
never collide with the source's users and are new users to the split. Search events lose their
text at the edge (privacy), so they cannot be trained on and are dropped here, counted in the
dataset's report like events on items the catalogue does not hold.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path

import pandas as pd

from recdata.eventlog import LOCK_FILE, LOG_FILE, EventLogError, decode_line, read_events
from recdata.schema import EVENTS_OPTIONAL, EVENTS_REQUIRED, DataError, Dataset, validate_events
from storage import write_bytes


def resolve_log(path: str | os.PathLike[str]) -> Path:
    """A log file, or a folder holding ``events.log`` (the artifacts' ``events/`` or a run's
    artifacts directory)."""
    path = Path(path)
    for candidate in (path, path / LOG_FILE, path / "events" / LOG_FILE):
        if candidate.is_file():
            return candidate
    raise DataError(f"event_log={path}: no event log there; expected {LOG_FILE}, a folder "
                    f"holding it, or a run's artifacts directory (its events/{LOG_FILE})")


def with_event_log(dataset: Dataset, path: str | os.PathLike[str],
                   since_seq: int = 0) -> Dataset:
    """``dataset`` plus the log's events with ``seq > since_seq`` (validated against its
    catalogue; searches, which have no stored text, and unknown items are counted and
    dropped)."""
    if dataset.predefined is not None:
        raise DataError(f"event_log= cannot be added to {dataset.name}: its split is fixed by "
                        "the source files; use data=files or data=synthetic")
    source = resolve_log(path)
    logged = read_events(source)
    logged = logged.loc[pd.to_numeric(logged["seq"]) > since_seq]
    searches = logged["event"] == "search"
    logged = logged.loc[~searches]
    events, report = validate_events(logged[list(EVENTS_REQUIRED) + list(EVENTS_OPTIONAL)],
                                     str(source), dataset.catalogue["item_id"])
    merged = pd.concat([dataset.events, events], ignore_index=True)
    merged = merged.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    new_report = {**dataset.report, "event_log_events": int(report["events_out"]),
                  "event_log_searches_dropped": int(searches.sum()),
                  "event_log_unknown_items_dropped": int(report["unknown_item_events_dropped"])}
    return dataclasses.replace(dataset, events=merged, report=new_report)


def repair(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Keep only the verified records (atomic rewrite, under the writer's lock); returns
    (records kept, bad lines dropped)."""
    path = resolve_log(path)
    lock_fd = os.open(path.parent / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EventLogError(f"{path} is being written (the service is running); stop it "
                                "before a repair") from None
        lines = path.read_bytes().split(b"\n")
        good = [line + b"\n" for line in lines if decode_line(line) is not None]
        dropped = sum(1 for line in lines if line and decode_line(line) is None)
        write_bytes(path, b"".join(good))  # temp, fsync, rename, fsync the folder
        return len(good), dropped
    finally:
        os.close(lock_fd)
