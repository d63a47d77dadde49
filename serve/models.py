"""Request and response shapes of the HTTP API; reading request bodies (content type, size
limit, JSON) and mapping the engine's validation errors to FastAPI-style 422 bodies.

One schema per input, shared with the CLIs: sessions are parsed with ``engine.parse_session``
(what ``query.py`` uses), items with ``engine.items.parse_items`` (what ``build_index.py add=``
uses); their errors become ``{"detail": [{"loc", "msg", "type"}]}`` with ``loc`` naming the
field. The pydantic models here document the same rules for the OpenAPI schema and generated
clients (types, bounds, unknown keys forbidden); a test checks that they accept and refuse what
the engine's validators do. Responses are the engine's dicts as they are (what ``query.py``
prints); the models describe them.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from engine.errors import CatalogueError, SessionError
from engine.inputs import (
    MAX_ATTRIBUTES,
    MAX_DESCRIPTION_CHARS,
    MAX_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_TS,
    loads,
)
from engine.items import ITEM_KEYS as ITEM_KEYS  # re-exported: what POST /items accepts
from engine.items import parse_items
from engine.session import MAX_EVENTS, MAX_EXCLUDE, parse_session
from engine.session import Session as ParsedSession

JSON_TYPES: tuple[str, ...] = ("application/json",)  # and application/<anything>+json

EventType = Literal["view", "click", "cart", "purchase", "rate", "review", "search"]
UserSegment = Literal["new_user", "cold_user", "warm_user"]
ItemSegment = Literal["head", "long_tail", "new"]


Id = Field(min_length=1, max_length=MAX_ID_CHARS, examples=["I00042"])
Timestamp = Field(None, ge=0, le=MAX_TS, description="unix time in seconds")
Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
Attributes = dict[StrictStr, Scalar | list[Scalar]]


class InlineItem(BaseModel):
    """An item not (yet) in the catalogue, described by its catalogue fields (the item schema
    of ``POST /items`` with ``item_id`` optional)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    title: str = Field(min_length=1, max_length=MAX_TEXT_CHARS,
                       examples=["Acme USB microscope, 1000x"])
    item_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    category: str | list[str] | None = Field(None, max_length=MAX_TEXT_CHARS,
                                             examples=["Lab > Microscopes"])
    brand: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    attributes: Attributes | None = Field(None, max_length=MAX_ATTRIBUTES)
    created_ts: int | None = Timestamp


class Event(BaseModel):
    """A session event: a search (``query``), a catalogue item (``item_id``) or an inline item
    (``item``) — exactly one of the three."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: EventType
    item_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                                examples=["I00042"])
    item: InlineItem | None = None
    query: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS,
                              examples=["usb microscope"])
    ts: int | None = Timestamp


class Session(BaseModel):
    """A shopper's session (README "Contracts"); ``events`` may be empty (fallback:
    popular and new items)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "user_id": "new-shopper-1", "k": 10,
        "events": [{"type": "search", "query": "usb microscope"},
                   {"type": "click", "item_id": "I00042"}],
        "exclude": ["I00007"]}]})
    user_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    k: int | None = Field(None, ge=1, description="items to return (default 10; at most the "
                                                  "catalogue, and max_results per request)")
    events: list[Event] = Field(max_length=MAX_EVENTS)
    exclude: list[str] = Field(default_factory=list, max_length=MAX_EXCLUDE)


class Recommendation(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float
    retrieval_score: float | None = Field(description="two-tower score; null in the fallback")
    rerank_score: float | None = Field(description="cross-encoder score; null when not reranked")
    item_segment: ItemSegment
    because: str
    signal: str | None = Field(None, description="the signal that decided the item: towers, "
                                                 "bm25, zero_shot, search, brand, category, "
                                                 "popularity, fresh, session, cross_encoder")
    sources: list[str] = Field(default_factory=list, description="candidate sources that "
                                                                 "returned the item")


class Timings(BaseModel):
    """Milliseconds per engine stage, this session's own: stages run once for a batch (encode,
    search, rank) are shared equally among its ``batch_size`` sessions."""

    encode: float
    search: float = Field(description="candidate sources and their merge")
    rank: float = Field(0.0, description="features and the ranker (or the fusion / towers' order)")
    rerank: float
    total: float
    batch_size: int = 1


class RecommendResponse(BaseModel):
    user_id: str | None
    segment: UserSegment
    reranked: bool
    items: list[Recommendation]
    timings_ms: Timings
    warnings: list[str] = Field(description="what was accepted but changed: cut sessions, "
                                            "unknown item ids ignored, ...")
    fallback: str | None = Field(None, description="present only when the session had no "
                                                   "usable event")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sessions: list[Session] = Field(min_length=1)


class BatchResponse(BaseModel):
    results: list[RecommendResponse]


class ItemIn(BaseModel):
    """A catalogue item to add live (embedded from its text by the item tower); the schema of
    ``build_index.py add=`` files too (``engine.items``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    item_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, examples=["NEW-1"])
    title: str = Field(min_length=1, max_length=MAX_TEXT_CHARS,
                       examples=["Acme pro USB microscope lamp"])
    category: str | list[str] | None = Field(None, max_length=MAX_TEXT_CHARS)
    brand: str | None = Field(None, max_length=MAX_TEXT_CHARS)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION_CHARS)
    attributes: Attributes | None = Field(None, max_length=MAX_ATTRIBUTES)
    created_ts: int | None = Timestamp


class ItemsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1)


class ItemsAdded(BaseModel):
    added: list[str]
    items: int = Field(description="items in the index after the change")


class ItemRemoved(BaseModel):
    removed: str
    items: int = Field(description="items in the index after the change")


class HealthResponse(BaseModel):
    status: Literal["ok", "loading"]
    loaded: bool
    items: int = Field(description="items the index can return")
    run: str | None = None
    reranker: bool = False


class ErrorResponse(BaseModel):
    detail: str
    request_id: str | None = None


REQUEST_MODELS: tuple[type[BaseModel], ...] = (Session, BatchRequest, ItemIn, ItemsIn)


def json_body(*models: str) -> dict[str, Any]:
    """OpenAPI ``openapi_extra`` for a route whose JSON body is one of ``models``."""
    refs = [{"$ref": f"#/components/schemas/{m}"} for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


# ---- engine errors -> 422 bodies ----------------------------------------------------------------
_EVENT_PREFIX = re.compile(r"^event (\d+): ")
_FIELD_RULES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"^(?:an? )?inline item\b.*?(?:\['([^']+)'|\"(\w+)\")"), ("item",)),
    (re.compile(r"^a \"search\" event"), ("query",)),
    (re.compile(r"^\"(\w+)\""), ()),
    (re.compile(r"^unknown (?:session )?key\(s\) \['([^']+)'"), ()),
    (re.compile(r"^a session needs \"(events)\""), ()),
    (re.compile(r"^k=\d+ is (?:larger)"), ("k",)),
)


def error_loc(message: str, base: tuple[str | int, ...] = ("body",)) -> list[str | int]:
    """Where a ``SessionError`` message points: ``["body", "events", 2, "type"]`` for
    ``event 2: "type" must be one of ...``; the base alone when the message names no field."""
    loc: list[str | int] = list(base)
    match = _EVENT_PREFIX.match(message)
    rest = message
    if match:
        loc += ["events", int(match.group(1))]
        rest = message[match.end():]
    for pattern, prefix in _FIELD_RULES:
        found = pattern.match(rest)
        if found:
            loc += [*prefix, *(g for g in found.groups() if g)]
            break
    return loc


def validation_body(loc: list[str | int], msg: str, kind: str = "value_error") -> dict:
    """FastAPI's 422 shape: ``{"detail": [{"loc", "msg", "type"}]}``."""
    return {"detail": [{"loc": loc, "msg": msg, "type": kind}]}


# ---- request bodies -----------------------------------------------------------------------------
def unprocessable(loc: list[str | int], msg: str, kind: str = "value_error") -> HTTPException:
    return HTTPException(422, validation_body(loc, msg, kind)["detail"])


def check_json_content_type(request: Request) -> None:
    """415 unless the body is declared JSON: a browser page can send ``text/plain`` (or a
    form) to any origin without asking first, but ``application/json`` only after a CORS
    preflight this service never grants -- so no web page can post to it behind the user."""
    declared = request.headers.get("content-type", "")
    media = declared.split(";")[0].strip().lower()
    if media not in JSON_TYPES and not (media.startswith("application/")
                                        and media.endswith("+json")):
        raise HTTPException(415, f"Content-Type must be application/json; got "
                                 f"{declared or 'none'!r}")


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request's JSON body: 415 unless declared JSON, 413 past ``max_bytes``, 422 when
    empty, malformed, nested too deeply or holding NaN / Infinity."""
    check_json_content_type(request)
    too_big = (f"request body is larger than {max_bytes} bytes; send fewer sessions or items "
               "per request")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise HTTPException(413, too_big)
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, too_big)
        body += chunk
    if not body.strip():
        raise unprocessable(["body"], "the request has no body; expected a JSON object",
                            "missing")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise unprocessable(["body"], "the body is not UTF-8 text; send JSON", "json_invalid"
                            ) from None
    try:
        return loads(text, SessionError, "the body")
    except SessionError as err:
        raise unprocessable(["body"], str(err), "json_invalid") from None
    except json.JSONDecodeError as err:
        raise unprocessable(["body", err.pos], f"not valid JSON ({err.msg} at line {err.lineno} "
                            f"column {err.colno})", "json_invalid") from None


def parse_one(obj: Any, base: tuple[str | int, ...]) -> ParsedSession:
    try:
        return parse_session(obj)
    except SessionError as err:
        raise unprocessable(error_loc(str(err), base), str(err)) from None


def items_of(body: Any, max_items: int) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """One item object or ``{"items": [...]}`` -> (validated items, loc base); 422 on a wrong
    shape or an item the item schema (``engine.items``, as ``build_index.py add=``) refuses."""
    if isinstance(body, dict) and "items" in body:
        if set(body) != {"items"} or not isinstance(body["items"], list):
            raise unprocessable(["body", "items"], 'expected {"items": [item, ...]} or one '
                                'item object {"item_id": ..., "title": ...}')
        items, base = body["items"], ("body", "items")
    elif isinstance(body, dict):
        items, base = [body], ("body",)
    else:
        raise unprocessable(["body"], 'expected an item object {"item_id": ..., "title": ...} '
                            'or {"items": [...]}')
    if not 1 <= len(items) <= max_items:
        raise unprocessable(list(base), f"expected 1 to {max_items} items, got {len(items)}")
    try:
        parsed = parse_items(items, "POST /items", loc=base[1:])
    except CatalogueError as err:
        loc = list(err.loc)
        if base == ("body",) and loc and loc[0] == 0:
            loc = loc[1:]  # one item object: its fields are at the body's top level
        raise unprocessable(["body", *loc], str(err)) from None
    return parsed, base

