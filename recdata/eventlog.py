"""The durable, append-only event log (docs/architecture.md "Artifacts").

File format (``<artifacts>/events/events.log``), one *record* per line, one record per append
(one ``POST /events`` call, one event or a batch)::

    {"crc":"89abcdef","r":{"events":[{...}, ...],"seq":42,"v":1}}\\n

``r`` is the record as canonical JSON (sorted keys, no spaces, ASCII) and ``crc`` the CRC-32 of
exactly those bytes, so a reader verifies a line byte for byte and a batch is all-or-nothing:
either its whole line verifies or it is not there. Each event carries ``seq`` (a number that
only grows, across deletions too), ``ts`` (unix seconds), ``received`` (server time),
``user_id`` (the keyed pseudonym from the edge, never a raw id), ``event``, ``item_id`` (null for
a search) and ``weight``. Search strings are never written: a search event is kept without its
text (and so is dropped when the log is read for training, counted in the report).

Durability: an append is one ``write`` of the whole line followed by ``fsync`` before it
returns, so an acknowledged event survives a crash. A crash mid-append can leave only a torn
*last* line; the writer's recovery scan (``EventLog.open``) truncates it. A damaged line before
the end is not a crash artefact: reading refuses it (``EventLogCorrupt``) rather than guess.
One writer per log (an exclusive ``flock`` on ``events.lock`` for the writer's lifetime);
readers take no lock and stop at the last complete, verified record.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recdata.schema import DataError
from storage import write_bytes

log = logging.getLogger(__name__)

LOG_DIR = "events"
LOG_FILE = "events.log"
LOCK_FILE = "events.lock"
FORMAT_VERSION = 1
_HEAD = b'{"crc":"'
_MID = b'","r":'
_CRC_CHARS = 8
_PAYLOAD_AT = len(_HEAD) + _CRC_CHARS + len(_MID)


class EventLogError(DataError):
    """The event log cannot be used (locked by another writer, unwritable, bad path)."""


class EventLogCorrupt(EventLogError):
    """A record before the end of the log fails its checksum: damage, not a crash."""


def log_path(artifacts: str | os.PathLike[str]) -> Path:
    """``<artifacts>/events/events.log``."""
    return Path(artifacts) / LOG_DIR / LOG_FILE


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def encode_record(events: Sequence[dict[str, Any]], seq: int) -> bytes:
    """One log line: the events (already given their ``seq``) and the record's last seq."""
    payload = _canonical({"events": list(events), "seq": int(seq), "v": FORMAT_VERSION})
    crc = f"{zlib.crc32(payload):08x}".encode("ascii")
    return _HEAD + crc + _MID + payload + b"}\n"


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The record of one line (without its newline), or None when it does not verify."""
    if not line.startswith(_HEAD) or not line.endswith(b"}") or len(line) <= _PAYLOAD_AT:
        return None
    crc, mid = line[len(_HEAD):len(_HEAD) + _CRC_CHARS], line[len(_HEAD) + _CRC_CHARS:_PAYLOAD_AT]
    payload = line[_PAYLOAD_AT:-1]
    try:
        if mid != _MID or int(crc, 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("events"), list):
        return None
    return record


@dataclass(frozen=True)
class Scan:
    """What a log holds: its verified records, the bytes they span, and a torn tail's size."""

    records: list[dict[str, Any]]
    valid_bytes: int
    torn_bytes: int

    @property
    def last_seq(self) -> int:
        return int(self.records[-1]["seq"]) if self.records else 0

    def events(self) -> Iterator[dict[str, Any]]:
        for record in self.records:
            yield from record["events"]


def scan(path: str | os.PathLike[str]) -> Scan:
    """Read and verify a log. A failed or unterminated *last* line is a torn tail (reported in
    ``torn_bytes``, not returned); a failed line before it raises ``EventLogCorrupt``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Scan([], 0, 0)
    except OSError as err:
        raise EventLogError(f"cannot read the event log {path}: {err.strerror}") from None
    records, offset = [], 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        line = data[offset:] if end < 0 else data[offset:end]
        record = decode_line(line) if end >= 0 else None
        if record is None:
            if end < 0 or end + 1 == len(data):  # the last line: a crash's torn append
                return Scan(records, offset, len(data) - offset)
            raise EventLogCorrupt(
                f"{path}: the record at byte {offset} fails its checksum and more records follow "
                "(damage, not a crash); keep the verified records with `python -m "
                f"recdata events repair {path}` or restore the file from a backup")
        records.append(record)
        offset = end + 1
    return Scan(records, offset, 0)


def read_events(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The log's events in the events contract (``user_id, item_id, ts, event, query,
    weight``) plus ``seq``; searches have no query (never stored). A missing log is empty."""
    rows = list(scan(path).events())
    columns = ["user_id", "item_id", "ts", "event", "query", "weight", "seq"]
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame.columns:
            frame[column] = None
    frame["weight"] = frame["weight"].fillna(1.0)
    return frame[columns]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """The single writer of one log file: ``append`` (fsync'd), ``remove_user`` (atomic
    rewrite). Thread-safe; open with :meth:`open`, release with :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.last_seq = 0
        self.recovered_bytes = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> EventLog:
        """Lock the log for writing, truncate a torn tail left by a crash, and open it."""
        log_file = cls(path)
        log_file._open()
        return log_file

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path.parent / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise EventLogError(f"cannot create the event log in {self.path.parent}: "
                                f"{err.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise EventLogError(f"another process is writing {self.path} (it holds "
                                f"{self.path.parent / LOCK_FILE}); stop it first: a log has "
                                "one writer") from None
        found = scan(self.path)
        if found.torn_bytes:
            with open(self.path, "r+b") as handle:
                handle.truncate(found.valid_bytes)
                handle.flush()
                os.fsync(handle.fileno())
            log.warning("event log %s: dropped a torn last record (%d bytes) left by a crash "
                        "before it was acknowledged", self.path, found.torn_bytes)
        self.recovered_bytes = found.torn_bytes
        self.last_seq = found.last_seq
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _fsync_dir(self.path.parent)

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None, "the event log is closed"
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as err:
            os.ftruncate(self._fd, size)  # never leave a partial record behind
            raise EventLogError(f"cannot append to the event log {self.path}: "
                                f"{err.strerror}") from None

    def append(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append events as one record and fsync; returns them with ``seq``, ``received`` (and
        ``ts`` where missing) set to now. When this returns the events are on disk."""
        if not events:
            return []
        with self._lock:
            now = int(time.time())
            stamped = [{**event, "seq": self.last_seq + n, "received": now,
                        "ts": now if event.get("ts") is None else int(event["ts"])}
                       for n, event in enumerate(events, start=1)]
            self._write_all(encode_record(stamped, stamped[-1]["seq"]))
            self.last_seq = stamped[-1]["seq"]
        return stamped

    def records(self) -> list[dict[str, Any]]:
        """Every verified record (a consistent read under the writer's lock)."""
        with self._lock:
            return scan(self.path).records

    def remove_user(self, user_id: str) -> int:
        """Rewrite the log without ``user_id``'s events (temp file, fsync, rename, fsync the
        folder): a crash leaves the old log or the new one. The last record is kept, emptied if
        need be, so ``seq`` never goes back. Returns the number of events removed."""
        with self._lock:
            records = scan(self.path).records
            removed, kept = 0, []
            for n, record in enumerate(records):
                events = [e for e in record["events"] if e.get("user_id") != user_id]
                removed += len(record["events"]) - len(events)
                if events or n == len(records) - 1:
                    kept.append(encode_record(events, record["seq"]))
            if not removed:
                return 0
            write_bytes(self.path, b"".join(kept))  # temp, fsync, rename, fsync the folder
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            return removed
