"""Session JSON (DESIGN.md "Data contracts") -> validated ``Session``; no torch, no model.

```json
{"user_id": "optional", "k": 10,
 "events": [{"type": "search", "query": "usb microscope"},
            {"type": "click", "item_id": "I00042"},
            {"type": "click", "item": {"title": "New item", "category": "Lab"}}],
 "exclude": ["I00007"]}
```

Structural mistakes (unknown keys or event types, wrong JSON types, ``k <= 0``, an inline item
without a title) raise ``SessionError`` with one line: where, what was expected, what arrived,
how to fix; JSONL input prefixes ``line N:``. Unknown item ids are not structural: the
``Recommender`` warns about them and ignores them, since only it knows the catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import SessionError
from recdata.schema import CATALOGUE_OPTIONAL, EVENT_TYPES

SESSION_KEYS: tuple[str, ...] = ("user_id", "k", "events", "exclude")
EVENT_KEYS: tuple[str, ...] = ("type", "item_id", "item", "query", "ts")
INLINE_ITEM_KEYS: tuple[str, ...] = ("item_id", "title", *CATALOGUE_OPTIONAL)
ITEM_EVENT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t != "search")
_SHOW = 60  # characters of an offending value quoted in a message
DEFAULT_EXAMPLE_K = 10  # k of sessions built from evaluation examples (callers rank further)


@dataclass(frozen=True)
class Event:
    """One session event: a search (``query``), a catalogue item (``item_id``) or an inline new
    item (``item``: catalogue fields, at least a non-empty ``title``)."""

    type: str
    item_id: str | None = None
    query: str | None = None
    item: Mapping[str, Any] | None = None

    @property
    def is_search(self) -> bool:
        return self.type == "search"


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


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _parse_inline_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise SessionError(f"{where}: \"item\" must be an object with at least a \"title\", "
                           f"e.g. {{\"title\": \"Acme USB microscope\"}}; got {_kind(item)} "
                           f"{_show(item)}")
    unknown = sorted(set(item) - set(INLINE_ITEM_KEYS))
    if unknown:
        raise SessionError(f"{where}: inline item has unknown key(s) {unknown}; allowed keys are "
                           f"{list(INLINE_ITEM_KEYS)}")
    if not _nonempty_str(item.get("title")):
        raise SessionError(f"{where}: an inline item needs a non-empty string \"title\"; got "
                           f"{_show(item.get('title'))}")
    category = item.get("category")
    if category is not None and not (
            isinstance(category, str)
            or (isinstance(category, list) and all(isinstance(c, str) for c in category))):
        raise SessionError(f"{where}: inline item \"category\" must be a string (\"A > B\") or a "
                           f"list of strings; got {_kind(category)} {_show(category)}")
    for key in ("brand", "description", "item_id"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise SessionError(f"{where}: inline item \"{key}\" must be a string; got "
                               f"{_kind(item[key])} {_show(item[key])}")
    if item.get("attributes") is not None and not isinstance(item["attributes"], Mapping):
        raise SessionError(f"{where}: inline item \"attributes\" must be an object of "
                           f"name: value; got {_kind(item['attributes'])}")
    return dict(item)


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
    given = [key for key in ("item_id", "item", "query") if raw.get(key) is not None]
    if kind == "search":
        if given != ["query"] or not _nonempty_str(raw["query"]):
            raise SessionError(f"{where}: a \"search\" event needs a non-empty string \"query\" "
                               f"(and no item); got {_show(dict(raw))}")
        return Event(kind, query=" ".join(raw["query"].split()))
    if len(given) != 1 or given == ["query"]:
        raise SessionError(f"{where}: a {kind!r} event needs exactly one of \"item_id\" (a "
                           "catalogue id) or \"item\" (an inline new item with a \"title\"); got "
                           f"{_show(dict(raw))}")
    if given == ["item"]:
        return Event(kind, item=_parse_inline_item(raw["item"], where))
    item_id = raw["item_id"]
    if not _nonempty_str(item_id):
        raise SessionError(f"{where}: \"item_id\" must be a non-empty string; got "
                           f"{_kind(item_id)} {_show(item_id)} (quote numeric ids: \"123\")")
    return Event(kind, item_id=item_id.strip())


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
    user_id = obj.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise SessionError(f"{prefix}\"user_id\" must be a string; got {_kind(user_id)} "
                           f"{_show(user_id)}")
    k = obj.get("k")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise SessionError(f"{prefix}\"k\" must be an integer >= 1 (how many items to return); "
                           f"got {_show(k)}")
    exclude = obj.get("exclude", [])
    if exclude is None:
        exclude = []
    if not isinstance(exclude, list) or not all(_nonempty_str(i) for i in exclude):
        raise SessionError(f"{prefix}\"exclude\" must be a list of item id strings; got "
                           f"{_show(exclude)}")
    events = [_parse_event(raw, f"{prefix}event {n}") for n, raw in enumerate(obj["events"])]
    session = Session(events=events, user_id=user_id, k=k,
                      exclude=[i.strip() for i in exclude], line=line)
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
            json.loads(text)
            jsonl = False
        except json.JSONDecodeError as err:
            jsonl = err.msg == "Extra data"  # a second JSON value follows the first: JSONL
    if not jsonl:
        try:
            obj = json.loads(text)
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
            obj = json.loads(raw_line)
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
    sessions = []
    for items, types, queries in zip(hist_items, hist_types, hist_queries):
        events = [Event(type="search", query=q) if t == "search" else Event(type=t, item_id=i)
                  for i, t, q in zip(items, types, queries)
                  if (t == "search" and q) or (t != "search" and i is not None)]
        sessions.append(Session(events=events, k=k))
    return sessions
