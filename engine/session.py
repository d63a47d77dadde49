"""Session JSON (README "Contracts") -> validated ``Session``; no torch, no model.

```json
{"user_id": "optional", "k": 10,
 "events": [{"type": "search", "query": "usb microscope"},
            {"type": "click", "item_id": "I00042"},
            {"type": "click", "item": {"title": "New item", "category": "Lab"}}],
 "exclude": ["I00007"]}
```

Structural mistakes (unknown keys or event types, wrong JSON types, ``k <= 0``, an inline item
without a title, a ``ts`` that is not unix seconds, text that is not Unicode or too long, JSON
nested too deeply) raise ``SessionError`` with one line: where, what was expected, what arrived,
how to fix; JSONL input prefixes ``line N:``. Inline items follow the one item schema
(``engine.items.parse_item``); the field rules are ``engine.inputs``'. Unknown item ids are not
structural: the ``Recommender`` warns about them and ignores them, since only it knows the
catalogue. The service (``serve``) and ``query.py`` both parse with :func:`parse_session`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import SessionError
from engine.inputs import MAX_ID_CHARS, check_id, check_text, check_ts, loads
from engine.inputs import kind as _kind
from engine.inputs import show as _show
from engine.items import ITEM_KEYS, parse_item
from recdata.schema import EVENT_TYPES, Event, example_events

SESSION_KEYS: tuple[str, ...] = ("user_id", "k", "events", "exclude")
EVENT_KEYS: tuple[str, ...] = ("type", "item_id", "item", "query", "ts")
INLINE_ITEM_KEYS: tuple[str, ...] = ITEM_KEYS
ITEM_EVENT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t != "search")
MAX_EVENTS = 10_000  # events per session (the user tower reads the last max_seq_len of them)
MAX_EXCLUDE = 10_000  # ids per session's "exclude"
DEFAULT_EXAMPLE_K = 10  # k of sessions built from evaluation examples (callers rank further)


@dataclass
class Session:
    """A validated session. ``warnings`` collects what was accepted but changed (e.g. cut)."""

    events: list[Event]
    user_id: str | None = None
    k: int | None = None
    exclude: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    line: int | None = None  # 1-based line of a JSONL input, for error messages

    @property
    def n_item_events(self) -> int:
        """Events naming an item (catalogue or inline): what makes a user cold or warm."""
        return sum(not e.is_search for e in self.events)

    def where(self) -> str:
        """Message prefix: ``"line N: "`` for JSONL input, else ``""``."""
        return f"line {self.line}: " if self.line is not None else ""


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _fail(where: str) -> Any:
    return lambda message: SessionError(f"{where}: {message}" if where else message)


def _parse_inline_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise SessionError(f"{where}: \"item\" must be an object with at least a \"title\", "
                           f"e.g. {{\"title\": \"Acme USB microscope\"}}; got {_kind(item)} "
                           f"{_show(item)}")
    return parse_item(item, f"{where}: inline item", inline=True, error=SessionError)


def _parse_event(raw: Any, where: str) -> Event:
    if not isinstance(raw, Mapping):
        raise SessionError(f"{where}: expected an event object like {{\"type\": \"click\", "
                           f"\"item_id\": \"...\"}}; got {_kind(raw)} {_show(raw)}")
    unknown = sorted(set(raw) - set(EVENT_KEYS))
    if unknown:
        raise SessionError(f"{where}: unknown key(s) {unknown}; an event has \"type\" and one of "
                           "\"item_id\", \"item\" (inline new item) or \"query\" (search)")
    kind = raw.get("type")
    if not isinstance(kind, str) or kind.strip().lower() not in EVENT_TYPES:
        raise SessionError(f"{where}: \"type\" must be one of {list(EVENT_TYPES)}; got "
                           f"{_show(kind)}")
    kind = kind.strip().lower()
    ts = check_ts(raw.get("ts"), "ts", _fail(where))
    given = [key for key in ("item_id", "item", "query") if raw.get(key) is not None]
    if kind == "search":
        if given != ["query"] or not _nonempty_str(raw["query"]):
            raise SessionError(f"{where}: a \"search\" event needs a non-empty string \"query\" "
                               f"(and no item); got {_show(dict(raw))}")
        query = check_text(raw["query"], "query", _fail(where), required=True)
        return Event(kind, query=" ".join(query.split()), ts=ts)
    if len(given) != 1 or given == ["query"]:
        raise SessionError(f"{where}: a {kind!r} event needs exactly one of \"item_id\" (a "
                           "catalogue id) or \"item\" (an inline new item with a \"title\"); got "
                           f"{_show(dict(raw))}")
    if given == ["item"]:
        return Event(kind, item=_parse_inline_item(raw["item"], where), ts=ts)
    return Event(kind, item_id=check_id(raw["item_id"], "item_id", _fail(where)), ts=ts)


def parse_session(obj: Any, *, max_events: int | None = None, line: int | None = None) -> Session:
    """Validate one session object; keep only the last ``max_events`` events (with a warning).

    Raises SessionError (one line, prefixed ``line N:`` when ``line`` is given).
    """
    prefix = f"line {line}: " if line is not None else ""
    if not isinstance(obj, Mapping):
        raise SessionError(f"{prefix}expected a session object {{\"events\": [...]}}; got "
                           f"{_kind(obj)} {_show(obj)}")
    unknown = sorted(set(obj) - set(SESSION_KEYS))
    if unknown:
        raise SessionError(f"{prefix}unknown session key(s) {unknown}; allowed keys are "
                           f"{list(SESSION_KEYS)}")
    if "events" not in obj or not isinstance(obj["events"], list):
        raise SessionError(f"{prefix}a session needs \"events\": a list of events (it may be "
                           f"empty); got {_kind(obj.get('events'))}")
    fail = _fail(prefix.rstrip(": "))
    user_id = obj.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise SessionError(f"{prefix}\"user_id\" must be a string; got {_kind(user_id)} "
                           f"{_show(user_id)}")
    user_id = check_text(user_id, "user_id", fail, max_chars=MAX_ID_CHARS)
    k = obj.get("k")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise SessionError(f"{prefix}\"k\" must be an integer >= 1 (how many items to return); "
                           f"got {_show(k)}")
    exclude = obj.get("exclude", [])
    if exclude is None:
        exclude = []
    if not isinstance(exclude, list) or not all(_nonempty_str(i) for i in exclude) or len(
            exclude) > MAX_EXCLUDE:
        raise SessionError(f"{prefix}\"exclude\" must be a list of at most {MAX_EXCLUDE} item "
                           f"id strings; got {_show(exclude)}")
    exclude = [check_id(i, "exclude", fail) for i in exclude]
    if len(obj["events"]) > MAX_EVENTS:
        raise SessionError(f"{prefix}\"events\" holds {len(obj['events'])} events; at most "
                           f"{MAX_EVENTS} are read (the user tower keeps only the most recent)")
    events = [_parse_event(raw, f"{prefix}event {n}") for n, raw in enumerate(obj["events"])]
    session = Session(events=events, user_id=user_id, k=k, exclude=exclude, line=line)
    if max_events is not None:
        cut_events(session, max_events)
    return session


def cut_warning(n_events: int, max_events: int) -> str:
    """The warning for a session cut to its last ``max_events`` events."""
    return (f"the session has {n_events} usable events but the user tower reads at most "
            f"{max_events}; kept the most recent {max_events}")


def cut_events(session: Session, max_events: int) -> None:
    """Keep the session's last ``max_events`` events, noting the cut in ``session.warnings``."""
    n = len(session.events)
    if n > max_events:
        session.events = session.events[-max_events:]
        session.warnings.append(cut_warning(n, max_events))


def parse_sessions_text(
    text: str, *, jsonl: bool | None = None, max_events: int | None = None, source: str = "input"
) -> tuple[list[Session], bool]:
    """Parse a session file's text: one JSON object, a JSON list of sessions, or JSONL (one
    session per line, blank lines skipped). ``jsonl=None`` guesses from the text.

    Returns (sessions, many): ``many`` is True for a list or JSONL (answer one JSON per line).
    """
    if jsonl is None:
        try:
            obj = loads(text, SessionError, source)
            jsonl = False
        except json.JSONDecodeError as err:
            jsonl = err.msg == "Extra data"  # a second JSON value follows the first: JSONL
    if not jsonl:
        try:
            obj = loads(text, SessionError, source)
        except json.JSONDecodeError as err:
            raise SessionError(f"{source}: not valid JSON ({err.msg} at line {err.lineno} column "
                               f"{err.colno}); expected one session object, a list of them, or "
                               "JSONL with one session per line") from None
        if isinstance(obj, list):
            sessions = []
            for number, item in enumerate(obj):
                try:
                    sessions.append(parse_session(item, max_events=max_events))
                except SessionError as err:
                    raise SessionError(f"session {number} of the list: {err}") from None
            if not sessions:
                raise SessionError(f"{source}: the list holds no session")
            return sessions, True
        return [parse_session(obj, max_events=max_events)], False
    sessions = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        if not raw_line.strip():
            continue
        try:
            obj = loads(raw_line, SessionError, f"line {number}")
        except json.JSONDecodeError as err:
            raise SessionError(f"line {number}: not valid JSON ({err.msg} at column {err.colno}); "
                               "JSONL needs one complete session object per line") from None
        sessions.append(parse_session(obj, max_events=max_events, line=number))
    if not sessions:
        raise SessionError(f"{source}: holds no session; expected one JSON object per line")
    return sessions, True


def sessions_from_examples(hist_items: Sequence[Sequence[str | None]],
                           hist_types: Sequence[Sequence[str]],
                           hist_queries: Sequence[Sequence[str | None]],
                           k: int = DEFAULT_EXAMPLE_K) -> list[Session]:
    """Evaluation example rows (``recdata`` split columns) as sessions: the benchmark and the
    ranker's training stage send them through the very path a served session takes."""
    return [Session(events=events, k=k)
            for events in example_events(hist_items, hist_types, hist_queries)]
