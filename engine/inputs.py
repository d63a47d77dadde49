"""The field rules every input shares (sessions, items; the CLIs and the HTTP service alike):
JSON text with a bounded depth, text without lone surrogates and of bounded length, unix
timestamps in range, finite numbers. Torch-free and pandas-free.

Each check raises the caller's error class with one line: where, what was expected, what came.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

MAX_JSON_DEPTH = 32  # sessions are 4 levels deep, items 3; anything deeper is refused unparsed
MAX_ID_CHARS = 256  # item and user ids
MAX_TEXT_CHARS = 10_000  # titles, queries, brands, categories, attribute names and values
MAX_DESCRIPTION_CHARS = 100_000  # descriptions (the item text keeps their first 40 words)
MAX_TS = 253_402_300_799  # 9999-12-31T23:59:59Z: unix seconds past it are not a time
MAX_ATTRIBUTES = 200  # attribute entries per item
MAX_FILE_BYTES = 256 << 20  # 256 MiB: a session or item file read by a CLI
_SHOW = 60  # characters of an offending value quoted in a message

Fail = Callable[[str], Exception]  # message -> the error to raise (SessionError, ...)


def show(value: Any) -> str:
    """A value quoted for a message, cut to a few dozen characters."""
    if isinstance(value, str) and len(value) > 4 * _SHOW:
        value = value[: 4 * _SHOW]
    try:
        text = json.dumps(value, ensure_ascii=True, default=str)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


def kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def depth_exceeds(obj: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when parsed JSON nests lists/objects deeper than ``limit`` (iterative: no
    recursion however deep the input)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children
                         if isinstance(child, (dict, list)))
    return False


def loads(text: str | bytes, fail: Fail, where: str) -> Any:
    """``json.loads`` that refuses, with one line naming ``where``, nesting deeper than
    MAX_JSON_DEPTH (however deep: the parser's RecursionError is caught) and NaN / Infinity
    (not JSON numbers). A JSONDecodeError propagates for the caller to word."""

    def no_constant(name: str) -> Any:
        raise fail(f"{where}: {name} is not a JSON number; send a number or null")

    try:
        obj = json.loads(text, parse_constant=no_constant)
    except RecursionError:
        obj = None
        deep = True
    else:
        deep = depth_exceeds(obj)
    if deep:
        raise fail(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; a session or an "
                   "item is only a few levels deep")
    return obj


def check_text(value: Any, field: str, fail: Fail, *, max_chars: int = MAX_TEXT_CHARS,
               required: bool = False, hint: str = "") -> str | None:
    """A string (stripped) within ``max_chars`` and encodable as UTF-8 (no lone surrogates),
    or None when absent and not ``required``."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise fail(f"\"{field}\" must be a {'non-empty ' if required else ''}string; got "
                   f"{kind(value)} {show(value)}{hint}")
    if len(value) > max_chars:
        raise fail(f"\"{field}\" is {len(value):,} characters long; at most {max_chars:,} are "
                   "accepted")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = value[err.start]
        raise fail(f"\"{field}\" holds a lone UTF-16 surrogate (\\u{ord(bad):04x} at character "
                   f"{err.start}), which is not Unicode text; send valid UTF-8") from None
    value = value.strip()
    if required and not value:
        raise fail(f"\"{field}\" must be a non-empty string; got {show(value)}{hint}")
    return value or None


def check_id(value: Any, field: str, fail: Fail, *, required: bool = True) -> str | None:
    """An id: a non-empty string without control characters, at most MAX_ID_CHARS."""
    text = check_text(value, field, fail, max_chars=MAX_ID_CHARS, required=required,
                      hint=" (quote numeric ids: \"123\")")
    if text is not None and any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise fail(f"\"{field}\" must not contain control characters; got {show(text)}")
    return text


def check_ts(value: Any, field: str, fail: Fail) -> int | None:
    """Unix seconds: an integer from 0 to MAX_TS (a number with no fraction is accepted), or
    None when absent."""
    if value is None:
        return None
    ok = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if not ok or not 0 <= value <= MAX_TS:
        raise fail(f"\"{field}\" must be an integer unix time in seconds, 0 to {MAX_TS} (year "
                   f"9999); got {kind(value)} {show(value)}")
    return int(value)


def check_scalar(value: Any, field: str, fail: Fail) -> Any:
    """An attribute value: a string, a finite number, a boolean, null, or a list of those."""
    if isinstance(value, list):
        return [check_scalar(v, field, fail) for v in value if not isinstance(v, list)] if all(
            not isinstance(v, (list, dict)) for v in value) else _nested(field, fail)
    if isinstance(value, str):
        return check_text(value, field, fail)
    if isinstance(value, float) and not math.isfinite(value):
        raise fail(f"\"{field}\" must be a finite number; got {value}")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _nested(field, fail)


def _nested(field: str, fail: Fail) -> Any:
    raise fail(f"\"{field}\" must be a string, a number, a boolean or a list of those; nested "
               "objects are not item attributes")
