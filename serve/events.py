"""``POST /events`` and ``DELETE /users/{user_id}``: shop events into the durable event log,
fresh interaction counts out (``engine.counts``), and a user's events deleted on request.

Body of ``POST /events``: one event or ``{"events": [...]}`` (at most ``max_events``), each in
the events contract of the README: ``user_id`` (str), ``event`` (view, click, cart, purchase,
rate, review, search), ``item_id`` (a catalogue id; none for a search), ``query`` (searches
only), optional ``ts`` (int unix seconds; default: now) and ``weight`` (number >= 0). Every
event is checked before anything is written: one bad event answers 422 naming it and its field
(``["body", "events", 3, "item_id"]``) and nothing is logged. The raw user id is replaced by its
keyed pseudonym and a search's text is dropped before the record is built; the record is
fsync'd before the 200, then counted.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from engine.counts import DEFAULT_WINDOW_S, InteractionCounts
from recdata.eventlog import LOG_FILE, EventLog
from recdata.schema import EVENT_TYPES
from serve.models import read_json, unprocessable
from serve.privacy import USER_KEY_ENV, Pseudonymizer

log = logging.getLogger(__name__)

DEFAULT_MAX_EVENTS = 1000  # events per POST /events
EVENT_FIELDS: tuple[str, ...] = ("user_id", "event", "item_id", "query", "ts", "weight")
MAX_ID_CHARS = 256
NOT_UNDONE: tuple[str, ...] = (
    "models trained or refreshed before this deletion (towers, reranker, ranker) keep what "
    "they learned from these events until they are retrained from scratch (python train.py "
    "with data.options.event_log=...); an incremental refresh starts from them and does not "
    "remove it",
    "catalogue popularity figures computed by the last training run",
    "copies of the event log made outside this service (exports, backups, training files)",
    "other replicas' event logs: send the same DELETE to each replica",
)


def require_json(request: Request) -> None:
    """415 unless the body is declared ``application/json``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, f"expected Content-Type: application/json, got "
                                 f"{kind or 'none'!r}; send the body as JSON")


def _check_event(raw: Any, loc: list[str | int], known_item: Any) -> dict[str, Any]:
    """One event object -> the fields to log (raw user id still in); 422 naming the field."""
    if not isinstance(raw, dict):
        raise unprocessable(loc, 'each event must be an object like {"user_id": "u1", '
                            '"event": "click", "item_id": "I00042"}')
    unknown = sorted(set(raw) - set(EVENT_FIELDS))
    if unknown:
        hint = ' (the event type is named "event")' if "type" in unknown else ""
        raise unprocessable([*loc, unknown[0]], f"unknown key(s) {unknown}{hint}; allowed keys "
                            f"are {list(EVENT_FIELDS)}")
    user_id = raw.get("user_id")
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > MAX_ID_CHARS:
        raise unprocessable([*loc, "user_id"], f"expected a non-empty string of at most "
                            f"{MAX_ID_CHARS} characters")
    kind = raw.get("event")
    if not isinstance(kind, str) or kind.strip().lower() not in EVENT_TYPES:
        raise unprocessable([*loc, "event"], f"expected one of {list(EVENT_TYPES)}")
    kind = kind.strip().lower()
    item_id, query = raw.get("item_id"), raw.get("query")
    if kind == "search":
        if not isinstance(query, str) or not query.strip():
            raise unprocessable([*loc, "query"], 'a "search" event needs a non-empty string '
                                '"query"')
        if item_id is not None:
            raise unprocessable([*loc, "item_id"], 'a "search" event names no item; drop '
                                '"item_id"')
    else:
        if query is not None:
            raise unprocessable([*loc, "query"], f'only "search" events carry a query, not '
                                f'{kind!r}')
        if not isinstance(item_id, str) or not item_id.strip():
            raise unprocessable([*loc, "item_id"], f'a {kind!r} event needs "item_id", a '
                                'catalogue item id string (quote numeric ids: "123")')
        item_id = item_id.strip()
        if not known_item(item_id):
            raise unprocessable([*loc, "item_id"], f"{item_id[:60]!r} is not in the catalogue;"
                                " add the item first (POST /items)")
    ts = raw.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts < 0):
        raise unprocessable([*loc, "ts"], "expected an integer >= 0 (unix seconds), or leave "
                            "it out for the time of receipt")
    weight = raw.get("weight", 1.0)
    if (isinstance(weight, bool) or not isinstance(weight, (int, float))
            or not math.isfinite(weight) or weight < 0):
        raise unprocessable([*loc, "weight"], "expected a finite number >= 0")
    return {"user_id": user_id, "event": kind, "item_id": item_id if kind != "search" else None,
            "ts": ts, "weight": float(weight)}


def parse_events(body: Any, known_item: Any, max_events: int = DEFAULT_MAX_EVENTS
                 ) -> list[dict[str, Any]]:
    """One event or ``{"events": [...]}`` -> checked events; 422 (HTTPException) otherwise."""
    if isinstance(body, dict) and "events" in body:
        if set(body) != {"events"} or not isinstance(body["events"], list):
            raise unprocessable(["body", "events"], 'expected {"events": [event, ...]} or one '
                                "event object")
        raw, base = body["events"], ["body", "events"]
    elif isinstance(body, dict):
        raw, base = [body], ["body"]
    else:
        raise unprocessable(["body"], 'expected an event object or {"events": [...]}')
    if not 1 <= len(raw) <= max_events:
        raise unprocessable(base, f"expected 1 to {max_events} events, got {len(raw)}; split "
                            "the batch")
    return [_check_event(obj, [*base, n] if len(base) == 2 else base, known_item)
            for n, obj in enumerate(raw)]


@dataclass
class EventsService:
    """The event log, its counts and the pseudonymizer of one app (all optional: without a
    log the routes answer 503; without a key, 503 too, since raw ids must not be stored)."""

    log_dir: Path | None = None  # or pass an opened ``log``
    pseudonymizer: Pseudonymizer | None = None
    window_s: int = DEFAULT_WINDOW_S
    max_events: int = DEFAULT_MAX_EVENTS
    log: EventLog | None = None
    counts: InteractionCounts | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> InteractionCounts | None:
        """Open the log (recovering a torn tail) and rebuild the counts from it."""
        if self.log is None and self.log_dir is None:
            return None
        if self.log is None:
            self.log = EventLog.open(self.log_dir / LOG_FILE)
        self.counts = InteractionCounts.from_events(
            (e for r in self.log.records() for e in r["events"]), self.window_s)
        log.info("event log %s: %d events up to seq %d, %d items with interactions",
                 self.log.path, sum(len(r["events"]) for r in self.log.records()),
                 self.log.last_seq, len(self.counts))
        return self.counts

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def ready(self) -> tuple[EventLog, Pseudonymizer]:
        if self.log is None:
            raise HTTPException(503, "this service runs without an event log; start it with "
                                     "--event-log DIR (python -m serve does by default)")
        if self.pseudonymizer is None:
            raise HTTPException(503, "events need a user-id key so that no raw user id is "
                                     f"stored: set {USER_KEY_ENV} or --user-key-file")
        return self.log, self.pseudonymizer

    def record(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Pseudonymise, append (fsync'd), count. Runs in a worker thread."""
        event_log, pseudonymizer = self.ready()
        for event in events:
            event["user_id"] = pseudonymizer.user(event["user_id"])
        with self.lock:  # a deletion rebuilding the counts never misses this append
            stamped = event_log.append(events)
            if self.counts is not None:
                self.counts.observe(stamped)
        return {"accepted": len(stamped), "last_seq": event_log.last_seq}

    def forget_user(self, raw_user_id: str) -> tuple[int, InteractionCounts]:
        """Remove the user's events from the log; rebuild the counts without them."""
        event_log, pseudonymizer = self.ready()
        with self.lock:
            removed = event_log.remove_user(pseudonymizer.user(raw_user_id))
            counts = InteractionCounts.from_events(
                (e for r in event_log.records() for e in r["events"]), self.window_s)
            self.counts = counts
        return removed, counts


def add_event_routes(app: FastAPI, service: EventsService, engine: Any, max_body_bytes: int
                     ) -> None:
    """Register the routes; ``engine()`` returns the loaded Recommender (503 while loading)."""

    @app.post("/events", summary="Record shop events (durable before the answer)",
              responses={415: {"description": "body not declared application/json"},
                         503: {"description": "no event log or no user-id key configured"}})
    async def post_events(request: Request) -> Response:
        require_json(request)
        recommender = engine()
        body = await read_json(request, max_body_bytes)
        events = parse_events(body, recommender.index.__contains__, service.max_events)
        result = await anyio.to_thread.run_sync(service.record, events)
        return JSONResponse(result)

    @app.delete("/users/{user_id}", summary="Delete a user's events from the event log")
    async def delete_user(user_id: str) -> Response:
        recommender = engine()
        if not user_id.strip() or len(user_id) > MAX_ID_CHARS:
            raise unprocessable(["path", "user_id"], f"expected a non-empty user id of at most "
                                f"{MAX_ID_CHARS} characters")
        removed, counts = await anyio.to_thread.run_sync(service.forget_user, user_id)
        recommender.counts = counts
        return JSONResponse({"deleted_events": removed,
                             "undone": ["the user's events in this service's event log",
                                        "their share of the live interaction counts"],
                             "not_undone": list(NOT_UNDONE)})
